"""What a render costs: prices a job names (`[cost]`) applied to what the run measured.

    [cost]
    gpu_hour = 2.50     # money per GPU-hour the run holds
    kwh = 0.20          # money per kWh of the GPU's energy (NVML's counter)
    currency = "USD"    # text, shown beside the figures

Money per frame = gpu_hour x GPU-seconds / 3600 + kwh x joules / 3.6e6, over the
frames the run wrote. A figure the run could not measure (the CPU: no GPU-seconds, no
energy counter) makes the price "not measured", never zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.schema import Table


@dataclass(frozen=True)
class Cost:
    gpu_hour: float = 0.0
    kwh: float = 0.0
    currency: str = ""


def parse_cost(t: Table) -> Cost:
    cost = Cost(gpu_hour=t.number("gpu_hour", 0.0, lo=0), kwh=t.number("kwh", 0.0, lo=0),
                currency=t.string("currency", "", max_len=16) if "currency" in t.data else "")
    t.done()
    return cost


def price(cost: Cost, gpu_s: float | None, energy_j: float | None) -> float | None:
    """Money for a run; None when a price is given for a figure that was not measured."""
    if (cost.gpu_hour and gpu_s is None) or (cost.kwh and energy_j is None):
        return None
    return cost.gpu_hour * (gpu_s or 0.0) / 3600 + cost.kwh * (energy_j or 0.0) / 3.6e6
