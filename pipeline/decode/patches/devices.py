"""Which devices decode a job's frames together (`tuning.decode_gpus`), checked when the
job is planned: one clear error naming the field for anything that cannot run."""

from __future__ import annotations

import os

import torch

from pipeline.config.tuning import ALL_GPUS, Tuning
from pipeline.errors import JobError
from pipeline.models.vae import VaeInfo

SUPPORTED = ("AutoencoderKL", "AutoencoderKLWan")   # what patches.layers knows how to split
CPU_RANKS_ENV = "FRAMEFARM_DECODE_RANKS_ON_CPU"     # "1": decode_gpus = N runs N CPU processes (tests, debugging)
CPU_ALL = 2                                         # "all" under that setting


def decode_devices(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], device: torch.device,
                   generates: bool) -> tuple[torch.device, ...]:
    """The devices of a patch-parallel decode, the run's own first; () for the ordinary
    decode on `device` (decode_gpus = 1, or "all" where one GPU is visible)."""
    wanted = tuning.decode_gpus
    if wanted == 1:
        return ()
    field, shown = "tuning.decode_gpus", "all" if wanted == ALL_GPUS else wanted
    if device.type == "cpu":
        if os.environ.get(CPU_RANKS_ENV) != "1":
            raise JobError(field, shown, f"decoding across devices needs GPUs and this run is on the CPU; "
                           f"use 1 (or set {CPU_RANKS_ENV}=1 to run the ranks as CPU processes, for tests "
                           "and debugging)")
        devices = [device] * (CPU_ALL if wanted == ALL_GPUS else wanted)
    else:
        visible = torch.cuda.device_count()
        count = visible if wanted == ALL_GPUS else wanted
        if count > visible:
            raise JobError(field, shown, f"expected 1 to {visible} or \"all\": this machine shows {visible} GPU(s)")
        own = device.index or 0
        devices = [torch.device("cuda", own), *(torch.device("cuda", i) for i in range(visible) if i != own)][:count]
    if len(devices) == 1:
        return ()
    if vae.class_name not in SUPPORTED:
        raise JobError(field, shown, f"a {vae.class_name} decodes on one device; across devices: "
                       + ", ".join(SUPPORTED))
    if generates:
        raise JobError(field, shown, 'a job that generates its latents (source.kind = "diffusers") decodes on '
                       "one GPU; use 1")
    if latent_shape[1] < len(devices):
        raise JobError(field, shown, f"the frame's {latent_shape[1]} latent rows cannot be split across "
                       f"{len(devices)} devices")
    return tuple(devices)
