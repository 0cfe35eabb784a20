"""What the micro-task decode of a job will do: its tile grid, the memory one tile
takes, and the batch size that keeps a batch within the job's VRAM budget."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.config.tuning import Tuning
from pipeline.decode.layered import modelled_bytes
from pipeline.decode.tiles import TileGrid, balanced_batch, batch_size, make_grid, modelled_tile_bytes
from pipeline.models.dtypes import DTYPES
from pipeline.models.vae import VaeInfo

MIB = 2**20
# A GroupNorm proxy smaller than this many latent cells a side measured worse than no
# statistics sync at all (random SD-class VAE on CPU, float32, 384x512, whole decoder
# tiled: a 12x16 proxy gave 17.8 dB against untiled decode where per-tile statistics
# gave 27.9; a 24x32 proxy gave 30.6 dB).
MIN_PROXY_SIDE = 24


# A Wan-style video VAE's tiled decoder tail, per output pixel of a tile, in elements of
# its full-resolution width (`full_res_channels`): the causal cache it keeps between
# chunks (Wan 2.1: 2316 elements a pixel at width 96, counted on the CPU after three
# chunks) and the activations of one chunk, per frame it makes; plus a part that did not
# shrink with the tiles. The last two are fitted to the decoder's own peaks at 1280x720
# in bf16 (least squares, then raised by the largest residual, so the model is at or
# above every measured point: benchmarks/RESULTS.md, 'Micro-task decode').
CLIP_CACHE_PER_PIXEL = 24.1
CLIP_LIVE_PER_FRAME = 7.43
CLIP_FIXED_BYTES = 0.51 * 2**30


@dataclass(frozen=True)
class TilePlan:
    grid: TileGrid
    batch: int              # tiles per batch
    tile_bytes: float       # modelled peak decode memory of one tile
    budget_bytes: float
    norm_proxy: int         # GroupNorm statistics proxy; 0 = per tile
    whole_bytes: float = 0.0  # what stays allocated beside the batches: weights, whole-frame features, canvas
    whole_up_blocks: int = 0  # AutoencoderKL: up blocks whose resnets run whole before the tiles
    clip: bool = False        # a video VAE: tiles decode chunk by chunk, each batch with its cache

    @property
    def modelled_peak(self) -> float:
        return self.whole_bytes + self.batch * self.tile_bytes

    def describe(self, frames: int) -> str:
        th, tw = self.grid.tile_shape
        tiles = len(self.grid.tiles)
        if self.clip:
            return (f"each latent frame's features in {tiles} tile(s) of {th}x{tw} latent cells "
                    f"(at most {self.grid.tile}), overlap {self.grid.overlap}, batches of up to {self.batch} "
                    f"tile(s) within {self.budget_bytes / 2**30:.2f} GiB (~{self.tile_bytes / MIB:.0f} MiB a "
                    f"tile's chunk; {self.whole_bytes / MIB:.0f} MiB for the weights, every tile's causal cache "
                    "and the canvas; modelled); conv_in and the mid block on the whole frame"
                    + (f"; over the budget: {self.modelled_peak / 2**30:.2f} GiB at the least (every "
                       "tile's cache stays for the clip: a frame's worth and their overlaps)"
                       if self.modelled_peak > self.budget_bytes else ""))
        norm = ("per tile" if self.norm_proxy == 0 else "from the whole frame" if self.norm_proxy == 1
                else f"from the frame subsampled {self.norm_proxy}x")
        return (f"decode: {tiles} tile(s) per frame of {th}x{tw} latent cells (at most {self.grid.tile}), "
                f"overlap {self.grid.overlap}; "
                f"batches of up to {self.batch} tile(s) within {self.budget_bytes / 2**30:.2f} GiB "
                f"(~{self.tile_bytes / MIB:.0f} MiB a tile, {self.whole_bytes / MIB:.0f} MiB for the "
                "weights, the whole frame's features and its canvas; modelled), "
                f"{frames * -(-tiles // self.batch)} batch(es) (a frame at a time); GroupNorm statistics {norm}"
                + (f"; mid block and {self.whole_up_blocks} up block(s) on the whole frame" if self.whole_up_blocks
                   else ""))


def plan_tiles(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str) -> TilePlan:
    return tile_plan(vae, latent_shape, DTYPES[dtype], tuning.tile_size, tuning.tile_overlap,
                     tuning.vram_budget_gib, tuning.norm_proxy, tuning.whole_up_blocks)


def layered_peak(vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str) -> float | None:
    """Modelled peak memory of a whole frame decoded layer by layer (`layered`): the
    weights and the up blocks' activations; None where the decode is not layered (any
    VAE but an AutoencoderKL)."""
    if vae.class_name != "AutoencoderKL" or not vae.block_out_channels:
        return None
    _, height, width = latent_shape
    itemsize = DTYPES[dtype].itemsize
    return (modelled_bytes(vae.block_out_channels, height * vae.scale, width * vae.scale, itemsize)
            + vae.parameters * itemsize)


def plan_decode(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str) -> TilePlan | None:
    """The tiles a job's frames decode in, or None for whole frames: tiles when the job
    asks for them, or when a whole frame decoded layer by layer would not fit the budget."""
    if tuning.decode == "tiles":
        return plan_tiles(tuning, vae, latent_shape, dtype)
    peak = layered_peak(vae, latent_shape, dtype)
    if not tuning.tiling and not vae.is_video and peak is not None and peak > tuning.vram_budget_gib * 2**30:
        return plan_tiles(tuning, vae, latent_shape, dtype)
    return None


def tile_plan(vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: torch.dtype, tile: int, overlap: int,
              budget_gib: float, norm_proxy: int, whole_up_blocks: int = 0) -> TilePlan:
    if vae.is_video:
        return clip_tiles_within(vae, latent_shape, dtype.itemsize, tile, overlap, budget_gib)
    _, height, width = latent_shape
    grid = make_grid(height, width, tile, overlap)
    th, tw = grid.tile_shape
    tile_bytes = modelled_tile_bytes(vae.full_res_channels, th * tw * vae.scale**2, dtype.itemsize)
    whole = whole_up_blocks if vae.class_name == "AutoencoderKL" else 0
    whole_bytes = whole_frame_bytes(vae, height, width, whole, dtype.itemsize) + vae.parameters * dtype.itemsize
    budget = budget_gib * 2**30
    batch = balanced_batch(len(grid.tiles), batch_size(budget - whole_bytes, tile_bytes))
    return TilePlan(grid=grid, batch=batch, tile_bytes=tile_bytes, budget_bytes=budget, whole_bytes=whole_bytes,
                    norm_proxy=usable_proxy(norm_proxy, height, width), whole_up_blocks=whole)


def whole_frame_bytes(vae: VaeInfo, height: int, width: int, whole_up_blocks: int, itemsize: int) -> float:
    """What a tiled decode keeps allocated while its batches run: the split decoder's
    whole-frame features (AutoencoderKL: as wide as the block before the cut, 2**(k-1)
    times the latent size a side after k whole up blocks) and the float32 canvas the
    tiles are blended into."""
    canvas = 3 * height * width * vae.scale**2 * 4
    if vae.class_name != "AutoencoderKL" or not vae.block_out_channels:
        return float(canvas)
    widths = vae.block_out_channels[::-1]          # decoder order: the mid block's width first
    channels = widths[max(0, whole_up_blocks - 1)]
    side = 2 ** max(0, whole_up_blocks - 1)
    return float(canvas + channels * height * width * side**2 * itemsize)


def usable_proxy(requested: int, height: int, width: int) -> int:
    """The largest subsampling up to `requested` that leaves a proxy of at least
    MIN_PROXY_SIDE cells a side; 1 (the whole frame) for small frames; 0 stays 0 (off)."""
    proxy = requested
    while proxy > 1 and min(height, width) // proxy < MIN_PROXY_SIDE:
        proxy -= 1
    return proxy


def clip_tiles_within(vae: VaeInfo, latent_shape: tuple[int, int, int], itemsize: int, tile: int,
                      overlap: int, budget_gib: float) -> TilePlan:
    """A clip's tile plan with the largest tiles, up to `tile` cells, that fit the budget.
    For a clip a batch of one tile is not the end: smaller tiles need less for their
    chunk (but every tile's cache stays, and their overlaps grow), so when `tile` does
    not fit, smaller ones are tried, 8 cells at a time; when none fits, the plan that
    needs the least is taken, and says it is over."""
    _, height, width = latent_shape
    sizes = range(tile, overlap, -8) if tile > overlap + 8 else [tile]
    best = None
    for size in sizes:
        plan = clip_tile_plan(vae, make_grid(height, width, size, overlap), itemsize, budget_gib)
        if plan.modelled_peak <= plan.budget_bytes:
            return plan
        if best is None or plan.modelled_peak < best.modelled_peak:
            best = plan
    assert best is not None
    return best


def clip_tile_plan(vae: VaeInfo, grid: TileGrid, itemsize: int, budget_gib: float) -> TilePlan:
    """A video VAE's tiles: every tile's cache stays allocated for the whole clip, so
    the budget holds all of them, the weights and the canvas, plus one batch's chunk:
    its activations and its cache a second time (the entries the step replaces are
    kept until it has finished, to roll back to if it runs out of memory)."""
    th, tw = grid.tile_shape
    pixels = th * tw * vae.scale**2
    frames = vae.temporal_scale
    cache = CLIP_CACHE_PER_PIXEL * vae.full_res_channels * pixels * itemsize
    canvas = 3 * frames * grid.height * grid.width * vae.scale**2 * 4
    whole_bytes = len(grid.tiles) * cache + canvas + vae.parameters * itemsize + CLIP_FIXED_BYTES
    tile_bytes = CLIP_LIVE_PER_FRAME * vae.full_res_channels * pixels * frames * itemsize + cache
    budget = budget_gib * 2**30
    batch = balanced_batch(len(grid.tiles), batch_size(budget - whole_bytes, tile_bytes))
    return TilePlan(grid=grid, batch=batch, tile_bytes=tile_bytes, budget_bytes=budget, whole_bytes=whole_bytes,
                    norm_proxy=0, clip=True)


@dataclass(frozen=True)
class RunMemory:
    """A run's modelled memory, in bytes, by what holds it (`run_memory`)."""
    decode: float      # the decode's peak: weights and activations, on the decode's device
    ring: float        # the ring of host frame buffers (pinned on a GPU), allocated at the start
    queued: float      # decoded frames waiting for their copy into the ring, on the decode's device
    encoding: float    # frames being encoded by the writers (host)
    latents: float     # latents read ahead for the decode (host)

    def host(self, on_cpu: bool) -> float:
        """Host memory: all of it on the CPU; on a GPU the decode and its frames are on the device."""
        return self.ring + self.encoding + self.latents + (self.decode + self.queued if on_cpu else 0.0)

    def describe(self, on_cpu: bool) -> str:
        parts = [("decode", self.decode if on_cpu else 0.0), ("frame ring", self.ring),
                 ("frames in flight", self.encoding + (self.queued if on_cpu else 0.0)), ("latents", self.latents)]
        return ", ".join(f"{name} {value / 2**30:.1f} GiB" for name, value in parts if value)


def decode_peak(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str,
                tiles: TilePlan | None) -> float:
    """The decode's modelled peak: its tile plan's, the layered whole-frame decode's, or,
    for a decode neither models (an AutoencoderTiny, diffusers' tiling), the weights and
    `modelled_tile_bytes` over what one call makes (a diffusers tile, or the whole frame)."""
    if tiles is not None:
        return tiles.modelled_peak
    itemsize = DTYPES[dtype].itemsize
    _, height, width = latent_shape
    if vae.is_video:  # a whole latent frame as one tile, with its cache
        return clip_tile_plan(vae, make_grid(height, width, max(height, width), 0), itemsize,
                              tuning.vram_budget_gib).modelled_peak
    layered = None if tuning.tiling else layered_peak(vae, latent_shape, dtype)
    if layered is not None:
        return layered
    pixels = height * width * vae.scale**2
    canvas = 3 * pixels * 4 if tuning.tiling else 0   # diffusers blends its tiles into the whole image
    tile = min(pixels, vae.sample_size**2) if tuning.tiling else pixels
    return vae.parameters * itemsize + modelled_tile_bytes(vae.full_res_channels, tile, itemsize) + canvas


def run_memory(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str,
               tiles: TilePlan | None, frame_bytes: int, *, watermark: bool, clip_frames: int = 0) -> RunMemory:
    """What a run holds at its peak: the decode's peak; the ring; the decoded frames each
    channel up to the copy can hold, plus the one being copied; a frame's worth of output
    per writer busy (at most one per ring slot); the latents the source reads ahead."""
    channels, height, width = latent_shape
    depth = tuning.channel_depth
    per_step = vae.temporal_scale if clip_frames else 1      # a clip's decode sends a chunk of frames
    queued = (max(depth, per_step) * (2 if watermark else 1) + per_step) * frame_bytes
    latent_bytes = channels * height * width * 4              # float32, as read from a file
    latents = latent_bytes * clip_frames if clip_frames else latent_bytes * (depth + 1)
    return RunMemory(decode=decode_peak(tuning, vae, latent_shape, dtype, tiles),
                     ring=float(tuning.pinned_buffers * frame_bytes), queued=float(queued),
                     encoding=float(min(tuning.writers(), tuning.pinned_buffers) * frame_bytes),
                     latents=float(latents))


def host_memory_available() -> int | None:
    """Host memory a run may still take: the kernel's MemAvailable (free memory and the
    page cache it can give back), else the free pages os.sysconf reports; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
