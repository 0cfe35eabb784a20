"""How a VAE turns latents into pixels on the device: the tile grid and its memory
budget, the micro-task (tiled) decode with frame-wide GroupNorm statistics, the
AutoencoderKL decoder cut into a whole-frame head and a tiled tail, and `video/` for
clips decoded chunk by chunk. `strategy.choose` picks one for a model and a plan."""
