"""A video VAE's chunk step replayed from one CUDA graph.

Each chunk of the Wan decoder is a few thousand small kernels queued from Python; its
low-resolution blocks finish them faster than the host queues them, so wherever the
host is slowed (the writers' threads beside it) the GPU waits: in the pipeline those
blocks took up to 14 % longer than alone on one H100 machine (benchmarks/RESULTS.md).
From the third chunk on, every causal cache entry is a tensor of a fixed shape, so the
step (post-quant conv, decoder, clamp) is one graph: it reads the latent frame and the
cache from fixed buffers, and its last kernels copy the new cache back into them. One
launch a chunk, the same kernels on the same values.

The graph lives with the model (`vae`), one per clip shape, so a farm worker's clips of
one size capture once; capturing synchronises the device and empties PyTorch's cache,
about one eager step's time. Its buffers serve one clip at a time: a second clip
decoding with the same model meanwhile runs eagerly. A step that cannot be captured
(a host sync inside, an unexpected cache entry) runs eagerly from then on, logged once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

STEADY_FROM = 2        # chunks 0 and 1 fill the cache ("Rep" markers, one-frame entries)
_ATTRIBUTE = "_framefarm_chunk_graphs"
_lock = threading.Lock()


@dataclass(eq=False)
class ChunkGraph:
    graph: torch.cuda.CUDAGraph
    latent: torch.Tensor           # the buffer the graph reads the latent frame from
    cache: list[torch.Tensor]      # ... and the cache from; it writes the new cache back
    out: torch.Tensor              # where it leaves the chunk's frames
    owner: weakref.ref | None = field(default=None)   # the clip using it: a clip that died
                                                      # without `release` frees it too

    def free_for(self, owner: Any) -> bool:
        holder = self.owner() if self.owner is not None else None
        return holder is None or holder is owner


def _key(latent: torch.Tensor, cache: list) -> tuple | None:
    if not all(isinstance(c, torch.Tensor) for c in cache):
        return None
    return (tuple(latent.shape), latent.dtype, latent.device, tuple(tuple(c.shape) for c in cache))


def graphs_of(vae: torch.nn.Module) -> dict[tuple, ChunkGraph | None]:
    graphs = getattr(vae, _ATTRIBUTE, None)
    if graphs is None:
        graphs = {}
        setattr(vae, _ATTRIBUTE, graphs)
    return graphs


def claim(vae: torch.nn.Module, owner: Any, step: Any, latent: torch.Tensor, cache: list) -> ChunkGraph | None:
    """The model's graph for this clip's shapes, captured now if there is none, and
    held for `owner` until `release`; None when another clip holds it or the step
    cannot be captured. `step(latent, cache)` is the eager step to capture."""
    key = _key(latent, cache)
    if key is None:
        return None
    with _lock:
        graphs = graphs_of(vae)
        if key in graphs and (graphs[key] is None or not graphs[key].free_for(owner)):
            return None
        if key not in graphs:
            graphs.clear()   # one clip shape kept: each graph holds a chunk's activations
            graphs[key] = capture(step, latent, cache)
        found = graphs[key]
        if found is not None:
            found.owner = weakref.ref(owner)
        return found


def release(vae: torch.nn.Module, owner: Any) -> None:
    with _lock:
        for found in graphs_of(vae).values():
            if found is not None and found.owner is not None and found.owner() is owner:
                found.owner = None


def capture(step: Any, latent: torch.Tensor, cache: list) -> ChunkGraph | None:
    buffers = [c.clone() for c in cache]
    static_latent = latent.clone()
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()   # a warm-up off the capture: lazy handles and workspaces
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(static_latent, list(buffers))   # on a copy of the cache list: buffers unchanged
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            working = list(buffers)
            out = step(static_latent, working)
            for buffer, new in zip(buffers, working, strict=True):
                buffer.copy_(new)
    except Exception as err:  # capture errors come as RuntimeError or from inside the model
        log.warning("a video VAE's chunk step could not be captured in a CUDA graph; decoding eagerly: %s",
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        torch.cuda.empty_cache()
        return None
    return ChunkGraph(graph, static_latent, buffers, out)


def replay(found: ChunkGraph, latent: torch.Tensor, cache: list | None) -> torch.Tensor:
    """The chunk's frames (a copy: the next replay overwrites the graph's); `cache`, the
    clip's cache up to now, is copied in when given (its first replay)."""
    found.latent.copy_(latent)
    if cache is not None:
        for buffer, current in zip(found.cache, cache, strict=True):
            buffer.copy_(current)
    found.graph.replay()
    return found.out.clone()
