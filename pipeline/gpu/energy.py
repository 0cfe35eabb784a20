"""A GPU's energy from NVML's total-energy counter (millijoules since the driver loaded).

Read at the start and end of a run (and of a farm task), not per frame: the counter
updates every 20-100 ms. None where there is no figure (the CPU, a GPU or driver
without the counter): callers say "not measured", never zero.
"""

from __future__ import annotations

from typing import Any

import torch


class EnergyMeter:
    def __init__(self, device: torch.device) -> None:
        self._handle: Any = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            uuid = torch.cuda.get_device_properties(index).uuid   # NVML's order may differ from CUDA's
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)   # raises where unsupported
            self._handle = handle
        except Exception:   # no NVML, no such counter: not measured
            self._handle = None

    def joules(self) -> float | None:
        """The counter now, in joules; None where it cannot be read."""
        if self._handle is None:
            return None
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
        except pynvml.NVMLError:
            return None
