"""A ring of host frame buffers, allocated once per run and reused.

A slot is taken by the transfer stage before its copy and given back by the writers
once every output has been encoded from it (the host-IO-done point). The ring's size
bounds the frames held in host memory, whatever the shot length.

A slot may also hold a frame's Y'CbCr planes for the video writers (`planes`: pixel
format -> samples and dtype), converted on the device and copied beside the frame.
"""

from __future__ import annotations

import numpy as np
import torch
import trio

from pipeline.gpu.device import DeviceContext


class HostRing:
    def __init__(self, ctx: DeviceContext, count: int, frame_shape: tuple[int, int, int],
                 dtype: torch.dtype = torch.uint8, planes: dict[str, tuple[int, torch.dtype]] | None = None) -> None:
        self.buffers = [ctx.host_buffer(frame_shape, dtype) for _ in range(count)]
        self.plane_buffers = {fmt: [ctx.host_buffer((size,), planes_dtype) for _ in range(count)]
                              for fmt, (size, planes_dtype) in (planes or {}).items()}
        self._free_send, self._free_recv = trio.open_memory_channel[int](count)
        for slot in range(count):
            self._free_send.send_nowait(slot)
        self.wait_s = 0.0

    async def acquire(self) -> int:
        start = trio.current_time()
        slot = await self._free_recv.receive()
        self.wait_s += trio.current_time() - start
        return slot

    def release(self, slot: int) -> None:
        self._free_send.send_nowait(slot)

    def tensor(self, slot: int) -> torch.Tensor:
        return self.buffers[slot]

    def array(self, slot: int) -> np.ndarray:
        return self.buffers[slot].numpy()

    def planes(self, slot: int) -> dict[str, torch.Tensor]:
        return {fmt: buffers[slot] for fmt, buffers in self.plane_buffers.items()}

    def in_use(self) -> int:
        return len(self.buffers) - self._free_recv.statistics().current_buffer_used

    def statistics(self) -> dict[str, float]:
        return {"slots": len(self.buffers), "free": self._free_recv.statistics().current_buffer_used,
                "wait_s": round(self.wait_s, 3)}
