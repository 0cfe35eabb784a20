"""The fused wide-head attention kernel (pipeline.kernels.wide_attention) against a float64
softmax(q kᵀ · scale) v, on the CPU under Triton's interpreter (conftest.py turns it on
where there is no GPU); tests/test_gpu_kernels.py runs it on the GPU.

Sizes are awkward on purpose: sequence lengths that no block size divides (1, 37, 200,
257), head dims 64, 384 (not a power of two: three 128-wide chunks) and 512, batches of
one and two, and every kernel variant. Outputs are poisoned with NaN first, so an element
the kernel never writes fails the test. Measured relative errors (||out - ref|| / ||ref||)
were at most 6.1e-3 for bfloat16 inputs and 3e-4 for float16 (typically 5e-3 and 2e-4):
the rounding of p and of the output to 16 bits.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import interpreting, patch_interpreter

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not interpreting(), reason="Triton's CPU interpreter is off (a GPU is here)")

from pipeline.kernels.wide_attention import (  # noqa: E402  (after the skip: it imports Triton)
    SUPPORTED_HEAD_DIMS,
    Config,
    attention,
    pick_config,
    validate,
)

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True, scope="module")
def interpreter_fixes():
    undo = patch_interpreter()   # see triton_interpreter.py: NumPy >= 2.4 and bfloat16 dots
    yield
    undo()


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = (t.double() for t in (q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def run_poisoned(q, k, v, config: Config | None, scale: float | None = None) -> torch.Tensor:
    out = torch.full(q.shape, float("nan"), dtype=q.dtype)
    attention(q, k, v, scale, config, out=out)
    assert not out.isnan().any(), "elements left unwritten (or NaN)"
    return out


def variants(head_dim: int) -> dict[str, Config]:
    """Every kernel variant, with blocks small enough for the interpreter and tails at every N."""
    low = head_dim & -head_dim     # largest power-of-two chunk: 64, 128, 512
    half = head_dim // 2 if head_dim >= 128 else head_dim
    return {
        "plain": Config(block_m=32, block_n=32, num_warps=4, d_chunk=min(low, 128)),
        "plain-wholeD": Config(block_m=16, block_n=64, num_warps=4, d_chunk=low),
        "defer": Config(block_m=32, block_n=32, num_warps=4, d_chunk=low, defer_pv=True),
        "dsplit": Config(block_m=32, block_n=32, num_warps=4, d_chunk=128 if half % 128 == 0 else 64,
                         d_split=half),
        "defer-lazy-tma": Config(block_m=16, block_n=32, num_warps=4, d_chunk=min(low, 128),
                                         defer_pv=True, lazy_rescale=True, tma=True),
    }


@pytest.mark.parametrize("head_dim", [64, 384, 512])
@pytest.mark.parametrize("n, batch", [(1, 2), (37, 1), (200, 2), (257, 1)])
@pytest.mark.parametrize("variant", ["plain", "plain-wholeD", "defer", "dsplit", "defer-lazy-tma"])
def test_matches_float64_reference(variant: str, n: int, batch: int, head_dim: int) -> None:
    torch.manual_seed(n * 1000 + head_dim)
    q, k, v = (torch.randn(batch, n, head_dim).bfloat16() for _ in range(3))
    q = q * 2   # a peaked softmax, so the running max changes and rescaling matters
    out = run_poisoned(q, k, v, variants(head_dim)[variant])
    assert rel_err(out, reference(q, k, v, head_dim ** -0.5)) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("head_dim", SUPPORTED_HEAD_DIMS)
def test_default_config_for_every_supported_head_dim(head_dim: int) -> None:
    torch.manual_seed(head_dim)
    q, k, v = (torch.randn(1, 45, head_dim, dtype=torch.float16) for _ in range(3))
    out = run_poisoned(q, k, v, None)
    assert rel_err(out, reference(q, k, v, head_dim ** -0.5)) < TOLERANCE[torch.float16]


def test_four_dim_heads_strides_and_scale() -> None:
    """(B, H, N, D) views from a (B, N, H, D) projection, and q, k, v slices of one fused
    qkv tensor (row stride 3 D): no copies, the kernel follows the strides."""
    torch.manual_seed(1)
    batch, n, heads, d = 2, 70, 2, 384
    qkv = torch.randn(batch, n, 3, heads, d).bfloat16()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # (B, H, N, D), row stride 3 H D
    for config in (variants(d)["defer"], variants(d)["dsplit"], variants(d)["defer-lazy-tma"]):
        out = run_poisoned(q, k, v, config, scale=0.07)
        assert out.shape == (batch, heads, n, d)
        assert rel_err(out, reference(q, k, v, 0.07)) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("variant", ["plain", "defer", "defer-lazy-tma"])
def test_row_max_that_grows_late(variant: str) -> None:
    """Keys in the middle and in the ragged last block that outscore everything before
    them: the running max jumps twice (rescaling, and for lazy, the branch that takes it)."""
    torch.manual_seed(3)
    n, d = 100, 512
    base = torch.randn(d)
    q = (base + 0.3 * torch.randn(2, n, d)).bfloat16()
    k, v = (torch.randn(2, n, d).bfloat16() for _ in range(2))
    k[:, n // 2] = (0.5 * base).bfloat16()
    k[:, n - 1] = (0.8 * base).bfloat16()
    out = run_poisoned(q, k, v, variants(d)[variant])
    assert rel_err(out, reference(q, k, v, d ** -0.5)) < TOLERANCE[torch.bfloat16]


def test_tma_config_with_unaligned_rows_falls_back_to_pointer_loads() -> None:
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 40, 516).bfloat16()[..., :512] for _ in range(3))   # rows of 1032 bytes
    out = run_poisoned(q, k, v, variants(512)["defer-lazy-tma"])
    assert rel_err(out, reference(q, k, v, 512 ** -0.5)) < TOLERANCE[torch.bfloat16]


def test_queries_and_keys_of_different_lengths() -> None:
    torch.manual_seed(2)
    q = torch.randn(1, 50, 512).bfloat16()
    k, v = (torch.randn(1, 77, 512).bfloat16() for _ in range(2))
    for name in ("plain", "defer"):
        out = run_poisoned(q, k, v, variants(512)[name])
        assert rel_err(out, reference(q, k, v, 512 ** -0.5)) < TOLERANCE[torch.bfloat16]


def test_unsupported_inputs_raise_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 8, 512).bfloat16()
    with pytest.raises(ValueError, match="head dim"):
        attention(*(torch.randn(1, 8, 96).bfloat16() for _ in range(3)))
    with pytest.raises(ValueError, match="head dim"):
        attention(*(torch.randn(1, 8, 576).bfloat16() for _ in range(3)))
    with pytest.raises(ValueError, match="dtype"):
        attention(x.float(), x.float(), x.float())
    with pytest.raises(ValueError, match="shapes"):
        attention(x, x[:, :, :384], x)
    with pytest.raises(ValueError, match="contiguous"):
        y = torch.randn(1, 512, 8).bfloat16().transpose(1, 2)
        attention(y, y, y)
    with pytest.raises(ValueError, match="does not tile"):
        validate(x, x, x, Config(d_chunk=128, d_split=192))
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    with pytest.raises(ValueError, match="need CUDA"):
        attention(x, x, x)


def test_pick_config_tiles_every_supported_head_dim() -> None:
    for head_dim in SUPPORTED_HEAD_DIMS:
        x = torch.empty(1, 4, head_dim, dtype=torch.bfloat16)
        validate(x, x, x, pick_config(head_dim, torch.bfloat16))
