"""What the micro-task decode of a job will do: its tile grid, the memory one tile
takes, and the batch size that keeps a batch within the job's VRAM budget."""

from __future__ import annotations

from dataclasses import dataclass

from .model import DTYPES, VaeInfo
from .tiles import TileGrid, batch_size, make_grid, modelled_tile_bytes
from .tuning import Tuning

MIB = 2**20
# A GroupNorm proxy smaller than this many latent cells a side measured worse than no
# statistics sync at all (random SD-class VAE on CPU, float32, 384x512, whole decoder
# tiled: a 12x16 proxy gave 17.8 dB against untiled decode where per-tile statistics
# gave 27.9; a 24x32 proxy gave 30.6 dB).
MIN_PROXY_SIDE = 24


@dataclass(frozen=True)
class TilePlan:
    grid: TileGrid
    batch: int              # tiles per batch
    tile_bytes: float       # modelled peak decode memory of one tile
    budget_bytes: float
    norm_proxy: int         # GroupNorm statistics proxy; 0 = per tile

    def describe(self, frames: int) -> str:
        th, tw = self.grid.tile_shape
        tiles = len(self.grid.tiles)
        norm = ("per tile" if self.norm_proxy == 0 else "from the whole frame" if self.norm_proxy == 1
                else f"from the frame subsampled {self.norm_proxy}x")
        return (f"decode: {tiles} tile(s) per frame of {th}x{tw} latent cells, overlap {self.grid.overlap}; "
                f"batches of up to {self.batch} tile(s) within {self.budget_bytes / 2**30:.2f} GiB "
                f"(~{self.tile_bytes / MIB:.0f} MiB a tile, modelled), "
                f"{frames * -(-tiles // self.batch)} batch(es) (a frame at a time); GroupNorm statistics {norm}")


def plan_tiles(tuning: Tuning, vae: VaeInfo, latent_shape: tuple[int, int, int], dtype: str) -> TilePlan:
    _, height, width = latent_shape
    grid = make_grid(height, width, tuning.tile_size, tuning.tile_overlap)
    th, tw = grid.tile_shape
    tile_bytes = modelled_tile_bytes(vae.full_res_channels, th * tw * vae.scale**2, DTYPES[dtype].itemsize)
    budget = tuning.vram_budget_gib * 2**30
    return TilePlan(grid=grid, batch=batch_size(budget, tile_bytes), tile_bytes=tile_bytes,
                    budget_bytes=budget, norm_proxy=usable_proxy(tuning.norm_proxy, height, width))


def usable_proxy(requested: int, height: int, width: int) -> int:
    """The largest subsampling up to `requested` that leaves a proxy of at least
    MIN_PROXY_SIDE cells a side; 1 (the whole frame) for small frames; 0 stays 0 (off)."""
    proxy = requested
    while proxy > 1 and min(height, width) // proxy < MIN_PROXY_SIDE:
        proxy -= 1
    return proxy
