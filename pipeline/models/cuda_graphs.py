"""A generation pipeline's denoiser (UNet or transformer) replayed from CUDA graphs.

An SDXL-class UNet's eager forward is a few thousand kernel launches from Python. At
1024x1024 with few steps the GPU finishes them faster than the host queues them, and
the pipeline's other threads take host time from the one queueing the UNet
(benchmarks/RESULTS.md, 'Generation').
A CUDA graph records the forward's kernels once per input signature and replays them
with one launch. The inputs are copied into the recorded buffers and the outputs
copied out, so the pipeline sees an ordinary forward; the arithmetic is the same
kernels on the same values.

Signature: the shape, dtype and device of every tensor argument and the value of
every other one (a timestep is a tensor in diffusers' pipelines, so the steps of a
shot share one graph). Captures use the thread-local capture mode, so the other
threads' CUDA work (decode and copies of earlier frames, on other streams) does not
invalidate them. A forward that cannot be captured (a host sync inside, an argument
this cannot copy) runs eagerly for that signature from then on; a module whose
signature changes nearly every call stops being captured. Each kept graph holds its
own memory pool (a forward's activations), MAX_GRAPHS of them per module. A graph
reads the parameters where they were at capture: the module must not be moved or cast
after `use_cuda_graphs` (load_pipeline installs it last; in-place weight updates are
seen). Callers hold the pipeline's lock (`generation._turn`): one graph's buffers serve one
call at a time.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 4        # signatures kept per module (a shot has one or two: full and last batch)
MAX_CAPTURES = 8      # past this many, with a capture for more than 1 call in 4: stay eager
WARMUP_CALLS = 2      # eager calls before capture: cuBLAS handles, lazy buffers, autotuning


class Unsupported(Exception):
    """An argument that is neither a CUDA tensor nor a plain value nor a container of them."""


def signature(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A hashable description of `value`; its tensors are appended to `tensors` in order."""
    if isinstance(value, torch.Tensor):
        if not value.is_cuda or value.requires_grad:
            raise Unsupported("a tensor off the GPU or needing gradients")
        tensors.append(value)
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(signature(v, tensors) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, signature(v, tensors)) for k, v in value.items()))
    if value is None or isinstance(value, (bool, int, float, str)):
        return ("value", type(value).__name__, value)
    raise Unsupported(type(value).__name__)


def rebuild(value: Any, tensors: Any) -> Any:
    """`value` with its tensors replaced, in order, by those from the iterator `tensors`."""
    if isinstance(value, torch.Tensor):
        return next(tensors)
    if isinstance(value, (list, tuple)):
        return type(value)(rebuild(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: rebuild(v, tensors) for k, v in value.items()}
    return value


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]      # the buffers the graph reads
    outputs: tuple[torch.Tensor, ...]


class GraphedForward:
    """Stands in for `module.forward` (see `use_cuda_graphs`)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward
        self.graphs: OrderedDict[Any, Captured | None] = OrderedDict()   # None: runs eagerly
        self.calls = 0
        self.captures = 0
        self.replays = 0

    def worth_capturing(self) -> bool:
        """A farm worker meets a new signature with each job (one capture, then a shot's
        worth of replays); a model whose arguments change every call never replays."""
        return self.captures < MAX_CAPTURES or self.captures * 4 <= self.calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        tensors: list[torch.Tensor] = []
        try:
            key = signature((args, kwargs), tensors)
        except Unsupported:
            return self.forward(*args, **kwargs)
        if key not in self.graphs:
            if not self.worth_capturing():
                return self.forward(*args, **kwargs)
            self.graphs[key] = self._capture(args, kwargs, tensors)
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        captured = self.graphs[key]
        if captured is None:
            return self.forward(*args, **kwargs)
        self.graphs.move_to_end(key)
        for buffer, tensor in zip(captured.inputs, tensors, strict=True):
            buffer.copy_(tensor)
        captured.graph.replay()
        self.replays += 1
        return tuple(out.clone() for out in captured.outputs)  # the next replay overwrites them

    def _capture(self, args: Any, kwargs: Any, tensors: list[torch.Tensor]) -> Captured | None:
        self.captures += 1
        inputs = [t.clone() for t in tensors]
        static_args, static_kwargs = rebuild((args, kwargs), iter(inputs))
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    out = self.forward(*static_args, **static_kwargs)
            torch.cuda.current_stream().wait_stream(side)
            if not (isinstance(out, tuple) and all(isinstance(o, torch.Tensor) for o in out)):
                return None   # e.g. return_dict=True: diffusers' pipelines ask for tuples
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.forward(*static_args, **static_kwargs)
        except Exception as err:  # capture errors come as RuntimeError or from inside the model
            log.warning("CUDA graph capture failed, running the forward eagerly: %s",
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
            torch.cuda.empty_cache()   # give back what the failed capture's pool holds
            return None
        return Captured(graph, inputs, tuple(out))


def use_cuda_graphs(module: torch.nn.Module) -> GraphedForward | None:
    """Replay `module`'s forward from CUDA graphs (a module on a CUDA device only)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    if tensor is None or not tensor.is_cuda:
        return None
    graphed = GraphedForward(type(module).forward.__get__(module))
    module.forward = graphed
    return graphed
