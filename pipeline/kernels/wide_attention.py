"""Fused single-head attention forward for wide heads (D = 384, 512), in Triton.

softmax(q kᵀ · scale) v without materialising the N x N logits: one program owns
BLOCK_M query rows (and, with d_split, a slice of the output columns), walks the keys
BLOCK_N rows at a time and keeps an online softmax (running row max and row sum in
float32, exp2 with log2(e) folded into the scale), as in FlashAttention-2.

The head dimension is handled in power-of-two chunks of `d_chunk` columns, because
Triton tensors need power-of-two shapes (384 = 3 x 128): the logits are a sum of
per-chunk dots and the accumulator a tuple of per-chunk tiles (built by concatenation, which Triton's
frontend takes where it rejects starred unpacking). Variants (Config):
plain; defer_pv, which issues p @ v one key block late so that Triton's layout pass
splits the logits over the warpgroups instead of duplicating them; d_split, where the
output columns are split over programs that each recompute the logits; and, on any of
them, lazy_rescale and tma. NOTES.md has the design, the sm_90 resource estimates and
the configs to try.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = tuple(range(64, 513, 64))
# Lazy rescaling keeps a stale row max until some row's max grows by more than this
# (log2 units): the unnormalised terms stay below 2**8, harmless in float32 and bf16.
RESCALE_SLACK = tl.constexpr(8.0)
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Config:
    """One kernel configuration; `name` is how the benchmark prints it."""

    block_m: int = 64
    block_n: int = 32
    num_warps: int = 8
    num_stages: int = 2
    d_chunk: int = 128              # width of the head-dim chunks (power of two)
    d_split: int | None = None      # output columns per program; None: all of D
    defer_pv: bool = False          # issue p @ v one key block late (see _wide_attn_fwd)
    lazy_rescale: bool = False      # rescale the accumulator only when a row max grows a lot
    tma: bool = False               # Hopper tensor-memory-accelerator loads and stores

    @property
    def name(self) -> str:
        parts = [f"m{self.block_m}", f"n{self.block_n}", f"w{self.num_warps}", f"s{self.num_stages}",
                 f"c{self.d_chunk}"]
        if self.d_split is not None:
            parts.append(f"split{self.d_split}")
        if self.defer_pv:
            parts.append("defer")
        if self.lazy_rescale:
            parts.append("lazy")
        if self.tma:
            parts.append("tma")
        return "-".join(parts)


def pick_config(head_dim: int, dtype: torch.dtype) -> Config:
    """The config for a head width, from timing every candidate on an H200
    (`benchmarks/attention_configs.py`; benchmarks/RESULTS.md, 'Decode near the
    hardware's limit'): at D = 512 two programs per 128 query rows, each owning 256
    output columns and recomputing the logits (1.5x the FLOPs, but each warpgroup
    computes only its own rows' logits), loaded by the tensor memory accelerator; at
    D = 384 a 128-row tile with its whole float32 accumulator in registers. Other widths
    keep the choices made on paper: up to 256 a 128-row tile; above 384 a 64-row tile
    whose p @ v is issued one key block late (see _wide_attn_fwd)."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} not supported (multiples of 64 up to 512)")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype} not supported (float16 or bfloat16)")
    d_chunk = head_dim & -head_dim   # the largest power of two dividing D: 512 -> 512, 384 -> 128
    if head_dim == 512:
        return Config(block_m=128, block_n=32, num_warps=8, num_stages=2, d_chunk=256, d_split=256, tma=True)
    if head_dim > 384:
        return Config(block_m=64, block_n=32, num_warps=8, num_stages=2, d_chunk=d_chunk, defer_pv=True)
    if head_dim > 256:
        return Config(block_m=128, block_n=32, num_warps=8, num_stages=2, d_chunk=d_chunk, tma=head_dim == 384)
    return Config(block_m=128, block_n=64, num_warps=8, num_stages=2 if head_dim > 128 else 3, d_chunk=d_chunk)


@triton.jit
def _load_tile(src, base, row0, col0, row_stride, n_rows, head,
               ROWS: tl.constexpr, COLS: tl.constexpr, MASK_ROWS: tl.constexpr, USE_TMA: tl.constexpr):
    """rows [row0, row0 + ROWS) x columns [col0, col0 + COLS) of one (batch, head) slice."""
    if USE_TMA:
        # the descriptor zero-fills rows past the sequence end, no mask needed
        return src.load([base, head, row0, col0]).reshape(ROWS, COLS)
    else:
        rows = row0 + tl.arange(0, ROWS)
        ptrs = base + rows[:, None] * row_stride + (col0 + tl.arange(0, COLS))[None, :]
        if MASK_ROWS:
            return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _scores(q, k_src, k_base, head, start_n, k_stride, n_kv, qk_scale,
            NUM_CHUNKS: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            MASK: tl.constexpr, USE_TMA: tl.constexpr):
    """Logits of one key block in log2 units (-inf past the last key when MASK)."""
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in tl.static_range(NUM_CHUNKS):
        kc = _load_tile(k_src, k_base, start_n, c * D_CHUNK, k_stride, n_kv, head,
                        BLOCK_N, D_CHUNK, MASK, USE_TMA)
        s = tl.dot(q[c], tl.trans(kc), s)
    s = s * qk_scale
    if MASK:
        cols = start_n + tl.arange(0, BLOCK_N)
        s = tl.where(cols[None, :] < n_kv, s, float("-inf"))
    return s


@triton.jit
def _online_softmax(s, m_i, l_i, LAZY_RESCALE: tl.constexpr):
    """New row max and sum; p = exp2(s - max) and alpha, the factor for the old accumulator.

    `grow` says whether the accumulator needs alpha at all: always, unless LAZY_RESCALE,
    where one CTA-wide decision keeps the branch uniform and a stale max is kept until
    some row outgrows it by RESCALE_SLACK.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if LAZY_RESCALE:
        grow = tl.max(m_new - m_i, 0) > RESCALE_SLACK
        m_new = tl.where(grow, m_new, m_i)
    else:
        grow = True
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, grow, m_new, l_i


@triton.jit
def _accumulate(acc, p, alpha, grow, v_src, v_base, head, start_n, col_chunk0, v_stride, n_kv,
                OUT_CHUNKS: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                MASK: tl.constexpr, LAZY_RESCALE: tl.constexpr, USE_TMA: tl.constexpr):
    """acc * alpha + p @ v[start_n : start_n + BLOCK_N] over this program's column chunks."""
    if LAZY_RESCALE:
        if grow:
            acc = _rescale(acc, alpha, OUT_CHUNKS)
    else:
        acc = _rescale(acc, alpha, OUT_CHUNKS)
    updated = ()
    for c in tl.static_range(OUT_CHUNKS):
        vc = _load_tile(v_src, v_base, start_n, (col_chunk0 + c) * D_CHUNK, v_stride, n_kv, head,
                        BLOCK_N, D_CHUNK, MASK, USE_TMA)
        updated = updated + (tl.dot(p, vc, acc[c]),)  # noqa: RUF005
    return updated


@triton.jit
def _rescale(acc, alpha, OUT_CHUNKS: tl.constexpr):
    scaled = ()
    for c in tl.static_range(OUT_CHUNKS):
        scaled = scaled + (acc[c] * alpha[:, None],)  # noqa: RUF005
    return scaled


@triton.jit
def _wide_attn_fwd(Q, K, V, Out,
                   q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sn,
                   n_heads, n_q, n_kv, qk_scale,
                   HEAD_DIM: tl.constexpr, D_CHUNK: tl.constexpr, OUT_CHUNKS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DEFER_PV: tl.constexpr,
                   LAZY_RESCALE: tl.constexpr, USE_TMA: tl.constexpr):
    NUM_CHUNKS: tl.constexpr = HEAD_DIM // D_CHUNK
    N_COL: tl.constexpr = NUM_CHUNKS // OUT_CHUNKS
    # the column slices of one row block are neighbours in launch order, so they run
    # together and share each K/V block through L2
    pid = tl.program_id(0)
    col_chunk0 = (pid % N_COL) * OUT_CHUNKS
    start_m = (pid // N_COL) * BLOCK_M
    bh = tl.program_id(1)
    batch = bh // n_heads
    head = bh % n_heads

    if USE_TMA:
        dtype: tl.constexpr = Out.dtype
        q_base = batch
        k_base = batch
        v_base = batch
        o_base = batch
    else:
        dtype: tl.constexpr = Out.dtype.element_ty
        # 64-bit batch offsets: B x N x D passes 2**31 elements at 4K with B >= 33
        q_base = Q + batch.to(tl.int64) * q_sb + head.to(tl.int64) * q_sh
        k_base = K + batch.to(tl.int64) * k_sb + head.to(tl.int64) * k_sh
        v_base = V + batch.to(tl.int64) * v_sb + head.to(tl.int64) * v_sh
        o_base = Out + batch.to(tl.int64) * o_sb + head.to(tl.int64) * o_sh

    # Q stays resident (in shared memory, where wgmma reads it) for the whole key loop
    q = ()
    for c in tl.static_range(NUM_CHUNKS):
        q = q + (_load_tile(Q, q_base, start_m, c * D_CHUNK, q_sn, n_q, head, BLOCK_M, D_CHUNK, True, USE_TMA),)  # noqa: RUF005
    acc = ()
    for _ in tl.static_range(OUT_CHUNKS):
        acc = acc + (tl.zeros([BLOCK_M, D_CHUNK], dtype=tl.float32),)  # noqa: RUF005
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # full key blocks go through the pipelined loop without masks, the ragged last one after it
    n_full = n_kv - n_kv % BLOCK_N
    if DEFER_PV:
        # p @ v of each block is issued one iteration later, with p and alpha carried over.
        # Then no dot depends on the logits' dot within an iteration, and Triton spreads the
        # warpgroups over the logits' columns instead of making each compute all of them.
        s = _scores(q, K, k_base, head, 0, k_sn, n_kv, qk_scale,
                    NUM_CHUNKS, D_CHUNK, BLOCK_M, BLOCK_N, True, USE_TMA)
        p, alpha, grow, m_i, l_i = _online_softmax(s, m_i, l_i, LAZY_RESCALE)
        p = p.to(dtype)
        for start_n in range(BLOCK_N, n_full, BLOCK_N):
            acc = _accumulate(acc, p, alpha, grow, V, v_base, head, start_n - BLOCK_N, col_chunk0, v_sn, n_kv,
                              OUT_CHUNKS, D_CHUNK, BLOCK_N, False, LAZY_RESCALE, USE_TMA)
            s = _scores(q, K, k_base, head, start_n, k_sn, n_kv, qk_scale,
                        NUM_CHUNKS, D_CHUNK, BLOCK_M, BLOCK_N, False, USE_TMA)
            p, alpha, grow, m_i, l_i = _online_softmax(s, m_i, l_i, LAZY_RESCALE)
            p = p.to(dtype)
        if (n_full < n_kv) & (n_full >= BLOCK_N):  # a ragged block that was not block 0
            acc = _accumulate(acc, p, alpha, grow, V, v_base, head, n_full - BLOCK_N, col_chunk0, v_sn, n_kv,
                              OUT_CHUNKS, D_CHUNK, BLOCK_N, False, LAZY_RESCALE, USE_TMA)
            s = _scores(q, K, k_base, head, n_full, k_sn, n_kv, qk_scale,
                        NUM_CHUNKS, D_CHUNK, BLOCK_M, BLOCK_N, True, USE_TMA)
            p, alpha, grow, m_i, l_i = _online_softmax(s, m_i, l_i, LAZY_RESCALE)
            p = p.to(dtype)
        last = (n_kv - 1) // BLOCK_N * BLOCK_N
        acc = _accumulate(acc, p, alpha, grow, V, v_base, head, last, col_chunk0, v_sn, n_kv,
                          OUT_CHUNKS, D_CHUNK, BLOCK_N, True, LAZY_RESCALE, USE_TMA)
    else:
        for start_n in range(0, n_full, BLOCK_N):
            s = _scores(q, K, k_base, head, start_n, k_sn, n_kv, qk_scale,
                        NUM_CHUNKS, D_CHUNK, BLOCK_M, BLOCK_N, False, USE_TMA)
            p, alpha, grow, m_i, l_i = _online_softmax(s, m_i, l_i, LAZY_RESCALE)
            acc = _accumulate(acc, p.to(dtype), alpha, grow, V, v_base, head, start_n, col_chunk0, v_sn, n_kv,
                              OUT_CHUNKS, D_CHUNK, BLOCK_N, False, LAZY_RESCALE, USE_TMA)
        if n_full < n_kv:
            s = _scores(q, K, k_base, head, n_full, k_sn, n_kv, qk_scale,
                        NUM_CHUNKS, D_CHUNK, BLOCK_M, BLOCK_N, True, USE_TMA)
            p, alpha, grow, m_i, l_i = _online_softmax(s, m_i, l_i, LAZY_RESCALE)
            acc = _accumulate(acc, p.to(dtype), alpha, grow, V, v_base, head, n_full, col_chunk0, v_sn, n_kv,
                              OUT_CHUNKS, D_CHUNK, BLOCK_N, True, LAZY_RESCALE, USE_TMA)

    inv_l = 1.0 / l_i
    rows = start_m + tl.arange(0, BLOCK_M)
    for c in tl.static_range(OUT_CHUNKS):
        out = (acc[c] * inv_l[:, None]).to(dtype)
        col0 = (col_chunk0 + c) * D_CHUNK
        if USE_TMA:
            Out.store([o_base, head, start_m, col0], out.reshape(1, 1, BLOCK_M, D_CHUNK))
        else:
            ptrs = o_base + rows[:, None] * o_sn + (col0 + tl.arange(0, D_CHUNK))[None, :]
            tl.store(ptrs, out, mask=rows[:, None] < n_q)


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def _tma_strides(x: torch.Tensor) -> list[int]:
    # a size-1 head axis may carry any stride; give it an aligned one
    strides = list(x.stride())
    if x.shape[1] == 1:
        strides[1] = x.shape[2] * x.stride(2)
    return strides


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned bases and strides (all but the last, which is 1)."""
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in _tma_strides(t)[:-1])
               for t in tensors)


def _descriptor(x: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
    return TensorDescriptor(x, list(x.shape), _tma_strides(x), [1, 1, rows, cols])


def validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Config) -> None:
    """Raise ValueError for anything the kernel cannot take (the caller falls back)."""
    if not (q.dim() == k.dim() == v.dim() and q.dim() in (3, 4)):
        raise ValueError("q, k, v must all be (B, N, D) or all (B, H, N, D)")
    if q.dtype not in (torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a float16 or bfloat16 dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if q.device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise ValueError(f"tensors on {q.device.type} need CUDA (or TRITON_INTERPRET=1)")
    head_dim = q.shape[-1]
    if k.shape != v.shape or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != head_dim:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} not supported (multiples of 64 up to 512)")
    if k.shape[-2] == 0:
        raise ValueError("attention over zero keys is undefined")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v must be contiguous in the last dimension")
    if any(t.shape[-2] * t.stride(-2) > _INT32_MAX for t in (q, k, v)):
        raise ValueError("row offsets past 2**31 elements within one (batch, head)")
    if q.shape[0] * (q.shape[1] if q.dim() == 4 else 1) > 65535:
        raise ValueError("more than 65535 batch x heads (the grid's second axis)")
    c = config
    d_out = c.d_split or head_dim
    if c.d_chunk & (c.d_chunk - 1) or c.d_chunk < 16 or head_dim % c.d_chunk or d_out % c.d_chunk \
            or head_dim % d_out:
        raise ValueError(f"config {c.name} does not tile head dim {head_dim}")
    if c.block_m & (c.block_m - 1) or c.block_n & (c.block_n - 1) or min(c.block_m, c.block_n) < 16:
        raise ValueError(f"config {c.name}: block sizes must be powers of two >= 16")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              config: Config | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for (B, N, D) or (B, H, N, D) tensors; scale defaults to 1/sqrt(D).

    `out`, if given, receives the result (q's shape and dtype, any strides with the last
    dimension contiguous). Raises ValueError for inputs the kernel does not take (CPU
    without TRITON_INTERPRET=1, other dtypes, head dims outside multiples of 64 up to
    512); the caller falls back.
    """
    config = config or pick_config(q.shape[-1], q.dtype)
    validate(q, k, v, config)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1
          or out.shape[-2] * out.stride(-2) > _INT32_MAX):
        raise ValueError("out must have q's shape, dtype and device, contiguous in the last dimension")
    head_dim = q.shape[-1]
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if q.shape[-2] == 0 or q.numel() == 0:
        return out
    q4, k4, v4, o4 = (_as_4d(t) for t in (q, k, v, out))
    batch, heads, n_q, _ = q4.shape
    n_kv = k4.shape[2]
    c = config
    if c.tma and not _tma_ok(q4, k4, v4, o4):
        c = replace(c, tma=False)   # e.g. odd row strides: same kernel with pointer loads
    d_out = c.d_split or head_dim
    grid = (triton.cdiv(n_q, c.block_m) * (head_dim // d_out), batch * heads)
    if c.tma:
        args = (_descriptor(q4, c.block_m, c.d_chunk), _descriptor(k4, c.block_n, c.d_chunk),
                _descriptor(v4, c.block_n, c.d_chunk), _descriptor(o4, c.block_m, c.d_chunk))
    else:
        args = (q4, k4, v4, o4)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _wide_attn_fwd[grid](*args, *q4.stride()[:3], *k4.stride()[:3], *v4.stride()[:3], *o4.stride()[:3],
                             heads, n_q, n_kv, scale * LOG2E,
                             HEAD_DIM=head_dim, D_CHUNK=c.d_chunk, OUT_CHUNKS=d_out // c.d_chunk,
                             BLOCK_M=c.block_m, BLOCK_N=c.block_n, DEFER_PV=c.defer_pv,
                             LAZY_RESCALE=c.lazy_rescale, USE_TMA=c.tma,
                             num_warps=c.num_warps, num_stages=c.num_stages)
    return out

