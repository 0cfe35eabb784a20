"""framefarm core: a job file becomes frames, a video and a manifest.

Rooms, each a folder with one responsibility; imports run one way, from the top of
this list down (tests/test_architecture.py enforces it):

    cli.py       the `render` command line (a front end: only it and workers/ may use the farm)
    run.py       wires the stages into one trio nursery and reports the run
    summary.py   the closing summary a person reads
    stages/      one module per stage: source, generate, decode, watermark, transfer, write
    flow/        what travels between stages, the loop every stage runs, stage statistics
    plan.py      a job becomes a plan: every check that needs the model, the latents or the disk
    decode/      how a VAE turns latents into pixels: whole, tiled micro-tasks, clips
    models/      loading VAEs and generation pipelines; dtypes; CUDA graphs for denoisers
    kernels/     the same maths as diffusers' slow steps, faster (a reader may skip it)
    gpu/         device, streams and events, the pinned host ring, busy clock, GPU turns
    files/       files on disk: latent inputs, PNG/EXR/MP4, atomic publish, the manifest
    watermark/   the invisible mark: pattern, embed, detect
    config/      the job file, presets and tuning, name patterns, seeds (no torch, no FFmpeg)
    errors.py    every error a user can meet, worded for the person who must act
"""

__version__ = "0.1.0"
