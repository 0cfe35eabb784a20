"""Generation: a local diffusers pipeline makes each frame's latents.

The pipeline is called with `output_type="latent"`, so it returns latents as its own
VAE call would receive them: scaled (SD, SDXL) and shifted (SD3, Flux) for the VAE,
packed in 2x2 patches (Flux: unpacked here), or normalised with latents_mean/std (Wan);
the decode stage decodes them with the pipeline's own VAE, the same way it decodes
latent files. Each image frame has its own generator seeded with `frame_seed(job seed,
frame)`, so a frame rendered alone, in another batch or on another worker gets the
same noise; a text-to-video clip is one call, seeded from its first frame.

`inspect_pipeline` reads the JSON files and only the first and last MiB of each weight
file (its fingerprint), for planning and for the errors a user must see before
anything loads; `load_pipeline` loads the weights from safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch

from pipeline.config.job import Generation
from pipeline.errors import JobError
from pipeline.models.dtypes import DTYPES

# A loaded diffusers pipeline (a DiffusionPipeline, not a torch Module).
Pipeline: TypeAlias = Any

# Text-to-image pipelines whose `output_type="latent"` result is (B, C, h, w) latents
# scaled (and for SD3 shifted) for their VAE, as diffusers' own decode step expects
# them: StableDiffusion and StableDiffusionXL with 4 latent channels, StableDiffusion3
# with 16.
# Text-to-video: one call makes the shot's clip, (1, C, T, h, w) latents normalised
# with its VAE's latents_mean/std, decoded chunk by chunk like a "clip" source.
VIDEO_PIPELINES = ("WanPipeline",)
# Flux returns its latents packed in 2x2 patches, (B, h*w/4, 4C): unpacked with the
# pipeline's own _unpack_latents (tests/test_generate.py fails if diffusers renames it).
PACKED_PIPELINES = ("FluxPipeline",)
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                       *PACKED_PIPELINES, *VIDEO_PIPELINES)


@dataclass(frozen=True)
class PipelineInfo:
    path: Path
    class_name: str
    components: tuple[str, ...]        # the folders model_index.json names
    absent: tuple[str, ...]            # components it lists as null (saved without them)
    fingerprint: str                   # configs, file names and sizes: what decides the latents

    @property
    def is_video(self) -> bool:
        return self.class_name in VIDEO_PIPELINES


def inspect_pipeline(path: Path) -> PipelineInfo:
    field = "source.path"
    if not path.is_dir():
        raise JobError(field, str(path), "no such folder; expected a local diffusers pipeline folder "
                       "(model_index.json and one folder per component, as save_pretrained writes)")
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(field, str(path), "has no model_index.json; expected a folder written by a "
                       "pipeline's save_pretrained()") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise JobError(field, str(path), f"model_index.json is not valid JSON ({err})") from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name not in SUPPORTED_PIPELINES:
        raise JobError(field, str(path), f"holds a {class_name or 'pipeline of unknown class'}; supported: "
                       + ", ".join(SUPPORTED_PIPELINES))
    components = tuple(sorted(name for name, value in index.items()
                              if not name.startswith("_") and isinstance(value, list) and value[0] is not None))
    absent = tuple(sorted(name for name, value in index.items()
                          if not name.startswith("_") and isinstance(value, list) and value[0] is None))
    for name in components:
        if not (path / name).is_dir():
            raise JobError(field, str(path), f"lacks the {name!r} component model_index.json names "
                           f"({index[name][1]}); re-save the whole pipeline")
    for name in components:
        if name in ("tokenizer", "tokenizer_2", "scheduler"):
            continue
        if (path / name / "config.json").is_file() and not list((path / name).glob("*.safetensors")):
            raise JobError(field, str(path / name), "has no .safetensors weights (pickled .bin checkpoints "
                           "are refused: they can run code); re-save with safe_serialization=True")
    return PipelineInfo(path=path, class_name=class_name, components=components, absent=absent,
                        fingerprint=_fingerprint(path, components))


def size_multiple(info: PipelineInfo, vae_scale: int) -> int:
    """The multiple of frame sizes the pipeline's check_inputs() accepts."""
    if info.class_name == "StableDiffusion3Pipeline":  # the VAE's factor times the transformer's patch
        config = json.loads((info.path / "transformer" / "config.json").read_text(encoding="utf-8"))
        return vae_scale * int(config.get("patch_size", 2))
    if info.class_name in PACKED_PIPELINES:  # whole 2x2 patches of latent cells
        return vae_scale * 2
    return 16 if info.class_name == "WanPipeline" else 8


def _fingerprint(path: Path, components: Sequence[str]) -> str:
    """The JSON files whole, each weight file by name, size and first and last MiB: cheap
    for pipelines of many GB, and any re-save or fine-tune changes it."""
    digest = hashlib.sha256()
    for file in sorted(p for name in ("model_index.json", *components)
                       for p in ([path / name] if name.endswith(".json") else sorted((path / name).rglob("*")))
                       if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        size = file.stat().st_size
        digest.update(str(size).encode())
        with file.open("rb") as handle:
            if file.suffix == ".json" or size <= 2 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


COMMON_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
                     "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")


def check_scheduler(name: str | None) -> None:
    if name is None:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and name.endswith("Scheduler") and hasattr(cls, "from_config")):
        raise JobError("source.scheduler", name, "not a diffusers scheduler class; for example: "
                       + ", ".join(COMMON_SCHEDULERS))


def load_pipeline(info: PipelineInfo, dtype: str, device: torch.device, scheduler: str | None,
                  graphs: bool = False) -> Pipeline:
    import diffusers
    import transformers

    from pipeline.kernels.install import use_fast_paths
    from pipeline.models.cuda_graphs import use_cuda_graphs

    for library in (diffusers, transformers):  # progress bars and notices are not the run's output
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    cls = getattr(diffusers, info.class_name)
    with warnings.catch_warnings():  # newer diffusers renames torch_dtype; older ones know no other
        warnings.simplefilter("ignore", FutureWarning)
        pipe = cls.from_pretrained(str(info.path), torch_dtype=DTYPES[dtype], use_safetensors=True,
                                   **{name: None for name in info.absent})  # as it was saved
    if scheduler is not None:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    use_fast_paths(pipe.vae, device)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if graphs and denoiser is not None:
        use_cuda_graphs(denoiser)   # CUDA only; a no-op elsewhere
    return pipe


# A pipeline call keeps state in the pipeline (its scheduler's timesteps and step
# index), so two calls on one loaded pipeline (a farm worker's two tasks in flight)
# must take turns; they share the GPU's compute stream anyway.
_turns: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_turns_guard = threading.Lock()


def _turn(pipe: object) -> threading.Lock:
    with _turns_guard:
        return _turns.setdefault(pipe, threading.Lock())


def generate_latents(pipe: Pipeline, generation: Generation, frames: Sequence[int], seeds: Sequence[int],
                     width: int, height: int) -> torch.Tensor:
    """(B, C, h, w) latents for `frames`, which share one prompt and negative prompt."""
    prompt, negative = generation.prompts_for(frames[0])
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]  # same noise on any device
    packed = type(pipe).__name__ in PACKED_PIPELINES
    with _turn(pipe):
        result = pipe(prompt=[prompt] * len(frames),
                      negative_prompt=[negative] * len(frames) if generation.guidance_scale > 1 and not packed
                      else None,
                      num_inference_steps=generation.steps, guidance_scale=generation.guidance_scale,
                      width=width, height=height, generator=generators, output_type="latent")
    if packed:
        return pipe._unpack_latents(result.images, height, width, pipe.vae_scale_factor)
    return result.images


def generate_clip(pipe: Pipeline, generation: Generation, frame_count: int, seed: int,
                  width: int, height: int) -> torch.Tensor:
    """(C, T, h, w) normalised latents of a whole clip of `frame_count` frames."""
    with _turn(pipe):
        result = pipe(prompt=generation.prompt,
                      negative_prompt=generation.negative_prompt if generation.guidance_scale > 1 else None,
                      num_inference_steps=generation.steps, guidance_scale=generation.guidance_scale,
                      width=width, height=height, num_frames=frame_count,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    return result.frames[0]


def batches(generation: Generation, frames: Sequence[int]) -> list[list[int]]:
    """Frames in order, in batches of at most `batch_size` that share a prompt."""
    out: list[list[int]] = []
    for frame in frames:
        if out and len(out[-1]) < generation.batch_size and \
                generation.prompts_for(out[-1][0]) == generation.prompts_for(frame):
            out[-1].append(frame)
        else:
            out.append([frame])
    return out
