"""The processes of a patch-parallel decode: the render process is rank 0 and starts one
helper process per other device; all of them join one torch.distributed group (NCCL
between GPUs, gloo on the CPU) and decode every frame or latent frame together
(`decode`), rank 0 handing each one out and getting the whole image back.

Rank 0 drives: for each decode it broadcasts a small header (what to do, the latent's
shape, whether a clip starts) and the latent, then decodes its own band; the helpers
wait for headers in `serve` and do the same with theirs, until the header says stop.
The helpers load the model from the same folder, in the same dtype, and say so in the
group's store before the group forms, so a helper that cannot load it (or dies) is
reported at once instead of leaving rank 0 waiting in a collective.

NCCL_NVLS_ENABLE=0 is set in every process here, before NCCL starts: the machines
this runs on require it (a program using NVLink multicast can take the host's GPUs
out of service), and spawned processes get it from their parent's environment.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipeline.decode.patches.decode import BandClip, BandFrame, band_decoder
from pipeline.decode.patches.rows import RowSplit
from pipeline.models.dtypes import DTYPES
from pipeline.models.vae import VaeInfo, import_model_classes, inspect_vae, load_vae

STOP, FRAME, CLIP_STEP, CLIP_FINISH, PEAKS = 0, 1, 2, 3, 4
HEADER = 8                    # op, first, ndim, up to 5 dimensions
START_TIMEOUT_S = 600.0       # helpers loading the model
COLLECTIVE_TIMEOUT = timedelta(minutes=10)   # a helper that stops mid-decode fails the run after this


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _header(op: int, shape: tuple[int, ...] = (), first: bool = False, device: torch.device | None = None
            ) -> torch.Tensor:
    values = [op, int(first), len(shape), *shape]
    return torch.tensor(values + [0] * (HEADER - len(values)), dtype=torch.int64, device=device)


def _load(model: str, dtype: str, device: torch.device) -> Any:
    info = inspect_vae(Path(model))
    import_model_classes(info.class_name)
    return load_vae(info, dtype, device, tiling=False)


def serve(rank: int, world: int, port: int, model: str, dtype: str, device: str) -> None:
    """A helper process: load the model, join the group, decode bands until told to stop."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"   # the machines require it (see above); set before NCCL starts
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    here = torch.device(device)
    if here.type == "cuda":
        torch.cuda.set_device(here)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=START_TIMEOUT_S))
    try:
        decoder = band_decoder(_load(model, dtype, here), RowSplit(rank, world))
    except BaseException as err:
        store.set(f"failed/{rank}", f"{type(err).__name__}: {err}")
        raise
    store.set(f"ready/{rank}", "1")
    dist.init_process_group(backend_for(here), store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                            device_id=here if here.type == "cuda" else None)
    try:
        with torch.no_grad():
            while _serve_one(decoder, here, DTYPES[dtype]):
                pass
    finally:
        dist.destroy_process_group()


def _serve_one(decoder: BandFrame | BandClip, device: torch.device, dtype: torch.dtype) -> bool:
    header = _header(STOP, device=device)
    dist.broadcast(header, src=0)
    op, first, ndim, *dims = header.tolist()
    if op == STOP:
        return False
    if op == CLIP_FINISH:
        assert isinstance(decoder, BandClip)
        decoder.finish()
        return True
    if op == PEAKS:
        _gather_peak(device)
        return True
    latents = torch.empty(dims[:ndim], dtype=dtype, device=device)
    dist.broadcast(latents, src=0)
    if op == FRAME:
        assert isinstance(decoder, BandFrame)
        decoder(latents)
    else:
        assert isinstance(decoder, BandClip)
        decoder.step(latents, bool(first))
    return True


def _gather_peak(device: torch.device) -> list[int] | None:
    """Each rank's peak device memory since the last call (0 on the CPU), on rank 0."""
    peak = 0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    mine = torch.tensor([peak], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather(mine, every, dst=0)
    return None if every is None else [int(p.item()) for p in every]


class DecodeGroup:
    """Rank 0 of a patch-parallel decode: `devices[0]` is this process's; one helper
    process is started for each other one. `close` stops the helpers (always call it;
    it is safe twice). FrameGroup and ClipGroup add the decode strategies' interfaces
    (`pipeline.decode.strategy`); `decode_group` picks the one for the model."""

    def __init__(self, info: VaeInfo, dtype: str, devices: list[torch.device]) -> None:
        self.info, self.device, self.dtype = info, devices[0], DTYPES[dtype]
        self.world = len(devices)
        self.decodes = 0
        self.closed = False
        self.failed = False   # a decode raised: the helpers may be inside a collective, not at a header
        # the machines require it (NVLink multicast can take the host's GPUs out of service);
        # the helpers inherit it, and NCCL reads it when this process's group starts
        os.environ["NCCL_NVLS_ENABLE"] = "0"
        store = dist.TCPStore("127.0.0.1", 0, self.world, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=START_TIMEOUT_S))
        context = multiprocessing.get_context("spawn")
        self.helpers = [context.Process(target=serve, name=f"framefarm-decode-rank{rank}", daemon=True,
                                        args=(rank, self.world, store.port, str(info.path), dtype, str(device)))
                        for rank, device in enumerate(devices) if rank > 0]
        for helper in self.helpers:
            helper.start()
        try:
            self.band = band_decoder(load_vae(info, dtype, self.device, tiling=False), RowSplit(0, self.world))
            self._wait_for_helpers(store)
            dist.init_process_group(backend_for(self.device), store=store, rank=0, world_size=self.world,
                                    timeout=COLLECTIVE_TIMEOUT,
                                    device_id=self.device if self.device.type == "cuda" else None)
        except BaseException:
            self._stop_helpers(wait_s=0)
            raise

    def _wait_for_helpers(self, store: Any) -> None:
        waiting = set(range(1, self.world))
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting:
            for rank in sorted(waiting):
                if store.check([f"failed/{rank}"]):
                    raise RuntimeError(f"decode rank {rank} could not start: {store.get(f'failed/{rank}').decode()}")
                if store.check([f"ready/{rank}"]):
                    waiting.discard(rank)
                elif self.helpers[rank - 1].exitcode is not None:
                    raise RuntimeError(f"decode rank {rank} exited with status {self.helpers[rank - 1].exitcode} "
                                       "while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"decode ranks {sorted(waiting)} did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _send(self, op: int, latents: torch.Tensor | None = None, first: bool = False) -> None:
        shape = tuple(latents.shape) if latents is not None else ()
        dist.broadcast(_header(op, shape, first, self.device), src=0)
        if latents is not None:
            dist.broadcast(latents.to(self.device, self.dtype).contiguous(), src=0)

    def _together(self, op: int, latents: torch.Tensor, first: bool,
                  decode: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
        if self.closed or self.failed:
            raise RuntimeError("the decode group has stopped")
        try:
            self._send(op, latents, first)
            out = decode(latents.to(self.device, self.dtype))
        except BaseException:
            self.failed = True
            raise
        self.decodes += 1
        assert out is not None   # rank 0 gets the whole image
        return out

    def peak_memory(self) -> list[int]:
        """Every rank's peak device memory in bytes since the last call (benchmarks)."""
        self._send(PEAKS)
        peaks = _gather_peak(self.device)
        assert peaks is not None
        return peaks

    def statistics(self) -> dict[str, int]:
        return {"decode_ranks": self.world, "band_decodes": self.decodes}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not dist.is_initialized():
            self._stop_helpers(wait_s=0)
            return
        try:
            if not self.failed:
                self._send(STOP)
        finally:
            # after a failure the helpers may wait in a collective: they are stopped, not asked
            self._stop_helpers(wait_s=0 if self.failed else 60)
            dist.destroy_process_group()

    def _stop_helpers(self, wait_s: float) -> None:
        for helper in self.helpers:
            helper.join(timeout=wait_s)
            if helper.is_alive():
                helper.kill()
                helper.join()


class FrameGroup(DecodeGroup):
    """An image VAE's frames, decoded across the group."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, h, w) latents, scaled for the VAE -> (3, H, W) image in [-1, 1]."""
        band = self.band
        assert isinstance(band, BandFrame)
        return self._together(FRAME, latents, False, lambda x: band(x))


class ClipGroup(DecodeGroup):
    """A video VAE's clip, decoded across the group latent frame by latent frame."""

    def step(self, latent_frame: torch.Tensor, first: bool) -> torch.Tensor:
        """(1, C, 1, h, w) denormalised latents -> (1, 3, t, H, W) frames in [-1, 1]."""
        band = self.band
        assert isinstance(band, BandClip)
        return self._together(CLIP_STEP, latent_frame, first, lambda x: band.step(x, first))

    def finish(self) -> None:
        assert isinstance(self.band, BandClip)
        if not (self.closed or self.failed):
            self._send(CLIP_FINISH)
        self.band.finish()


def decode_group(info: VaeInfo, dtype: str, devices: list[torch.device]) -> FrameGroup | ClipGroup:
    return ClipGroup(info, dtype, devices) if info.is_video else FrameGroup(info, dtype, devices)
