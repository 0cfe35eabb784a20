"""One frame's decode as a CUDA graph: a single launch instead of hundreds.

A VAE decode queues hundreds of kernels. When the host is busy (writer threads
encoding on every core), queueing them falls behind the GPU and it idles between
kernels; a graph replays the whole decode with one launch, so the GPU keeps its
pace whatever the host does. The graph is captured for one latent shape on the
compute stream, after one eager decode has warmed it up (cuDNN picks its kernels;
no decode is wasted). Its input and output are fixed buffers: each call copies the
latents in and clones the pixels out, both in stream order, so the next replay
cannot overwrite pixels that a later stage still reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("framefarm.graphs")


class GraphedFrame:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                 stream: torch.cuda.Stream) -> None:
        self.shape = example.shape
        self._input = example.clone()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the other stages' threads keep using CUDA while this one captures
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self._output = fn(self._input)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """On the capture stream (the caller's current stream)."""
        self._input.copy_(latents)
        self.graph.replay()
        return self._output.clone()


class FrameRunner:
    """Runs `fn` eagerly for the first frame of a shape, then as a captured graph.
    If capture fails (an op that cannot be captured), it says so once and stays eager."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], stream: torch.cuda.Stream | None,
                 enabled: bool) -> None:
        self.fn = fn
        self.stream = stream
        self.enabled = enabled and stream is not None
        self._graph: GraphedFrame | None = None
        self._warm: set[tuple[int, ...]] = set()
        self.replays = 0

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        shape = tuple(latents.shape)
        if self._graph is not None and tuple(self._graph.shape) == shape:
            self.replays += 1
            return self._graph(latents)
        if self.enabled and shape in self._warm:
            try:
                self._graph = GraphedFrame(self.fn, latents, self.stream)
            except Exception as err:  # any capture failure means: run eagerly
                log.warning("decode runs without a CUDA graph: capture failed (%s)", err)
                self.enabled = False
            else:
                self.replays += 1
                return self._graph(latents)
        self._warm.add(shape)
        return self.fn(latents)
