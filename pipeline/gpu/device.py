"""One device context per run: the streams, events and host buffer ring.

On a GPU: a compute stream at the highest priority the device offers, a copy stream,
and a watermark stream at priority 0 (the lowest), both levels read from
`torch.cuda.Stream.priority_range()` and configurable in the preset; events order work
between them, and trio awaits an event by polling `query()` with short sleeps, so the
event loop never blocks and no core spins. On the CPU every stream is `None`, every event is
`None` and already complete: the same stage code runs on both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import trio

from pipeline.errors import JobError

# Poll backoff while awaiting a GPU event: 0.2 ms first (a copy of one 4K frame
# takes ~0.5 ms), growing to 2 ms for long decodes.
_POLL_FIRST_S = 0.0002
_POLL_MAX_S = 0.002


def pick_device(name: str | None) -> torch.device:
    """`None` picks the first GPU when there is one, else the CPU."""
    if name is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise JobError("--device", name, "expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise JobError("--device", name, "expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise JobError("--device", name, "no CUDA device on this machine; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise JobError("--device", name,
                           f"this machine has {torch.cuda.device_count()} GPU(s): cuda:0 .. "
                           f"cuda:{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", index)
    return device


Event = torch.cuda.Event | None
Stream = torch.cuda.Stream | None





class DeviceContext:
    def __init__(self, device: torch.device, *, compute_priority: str = "highest",
                 watermark_priority: str = "lowest") -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.compute: Stream = None
        self.copy: Stream = None
        self.watermark: Stream = None
        if self.is_cuda:
            # e.g. (0, -5): lower is higher. A staticmethod, which torch's stubs call a method.
            lowest, highest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]
            level = {"highest": highest, "lowest": lowest}
            self.compute = torch.cuda.Stream(device, priority=level[compute_priority])
            self.copy = torch.cuda.Stream(device, priority=lowest)  # priority orders kernels, not copies
            self.watermark = torch.cuda.Stream(device, priority=level[watermark_priority])
        self.event_waits = 0
        self.event_wait_s = 0.0

    @contextlib.contextmanager
    def on(self, stream: Stream) -> Iterator[None]:
        """Make `stream` current for this thread (a no-op on the CPU)."""
        if stream is None:
            yield
        else:
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                yield

    def record(self, stream: Stream) -> Event:
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event

    @staticmethod
    def after(stream: Stream, event: Event) -> None:
        """Order `stream`'s next work after `event`, on the GPU, without a host wait."""
        if stream is not None and event is not None:
            stream.wait_event(event)

    async def completed(self, event: Event) -> None:
        """Return once the GPU has passed `event`, yielding to trio meanwhile."""
        if event is None:
            return
        start = trio.current_time()
        delay = _POLL_FIRST_S
        while not event.query():
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
        self.event_waits += 1
        self.event_wait_s += trio.current_time() - start

    def statistics(self) -> dict[str, float]:
        return {"event_waits": self.event_waits, "event_wait_s": round(self.event_wait_s, 3)}

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """A frame buffer in host memory: pinned on a GPU so copies run at full speed."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.is_cuda)

    def describe(self) -> str:
        if not self.is_cuda:
            return "cpu"
        return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
