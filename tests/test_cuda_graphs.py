"""The CUDA-graph wrapper's contract that holds off the GPU: models on the CPU are left
alone, arguments it cannot copy are refused (the caller then runs eagerly), and
rebuilding arguments keeps their structure. The replays themselves: tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.cuda_graphs import MAX_CAPTURES, GraphedForward, Unsupported, rebuild, signature, use_cuda_graphs


def test_cpu_models_are_not_wrapped() -> None:
    module = torch.nn.Linear(2, 2)
    assert use_cuda_graphs(module) is None
    assert "forward" not in vars(module)


@pytest.mark.parametrize("argument", [torch.zeros(2), object(), [torch.zeros(1)]])
def test_arguments_it_cannot_copy_are_refused(argument: object) -> None:
    with pytest.raises(Unsupported):
        signature(((argument,), {}), [])


def test_plain_values_key_the_signature() -> None:
    assert signature(((1.0, None), {"flag": True}), []) != signature(((2.0, None), {"flag": True}), [])


def test_rebuild_replaces_tensors_in_order_and_keeps_the_rest() -> None:
    a, b = torch.zeros(2), torch.ones(3)
    args = ((a, 1.5), {"added": {"text": b}, "return_dict": False})
    new = [torch.full((2,), 7.0), torch.full((3,), 8.0)]
    (positional, keywords) = rebuild(args, iter(new))
    assert positional[0] is new[0] and positional[1] == 1.5
    assert keywords["added"]["text"] is new[1] and keywords["return_dict"] is False


def test_capturing_stops_only_when_signatures_change_nearly_every_call() -> None:
    graphed = GraphedForward(lambda: None)
    graphed.captures, graphed.calls = MAX_CAPTURES, 50 * MAX_CAPTURES   # a worker after many jobs
    assert graphed.worth_capturing()
    graphed.calls = MAX_CAPTURES + 1                                    # a new signature each call
    assert not graphed.worth_capturing()
    graphed.captures, graphed.calls = MAX_CAPTURES - 1, MAX_CAPTURES - 1
    assert graphed.worth_capturing()
