"""The stages overlap: with stand-in costs (a decode that holds its thread for a fixed
time per frame, a slow writer), a run takes about as long as its slowest stage, not
the sum of all, and the frames held in memory stay bounded when the writer is slowest.

The stand-ins wrap the real stage code (the real decode and the real PNG publish still
run) and add a sleep, so the wiring under test is the one `render run` uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config.job import load_job
from pipeline.gpu.device import pick_device
from pipeline.plan import make_plan
from pipeline.run import RunReport, run_plan
from pipeline.stages.decode import Decoder
from pipeline.stages.write import FrameOutputs

DECODE_S = 0.04
WRITE_S = 0.06


class InFlight:
    """Frames decoded but not yet written: the memory the pipeline holds."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self.lock:
            self.now += delta
            self.peak = max(self.peak, self.now)


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> InFlight:
    in_flight = InFlight()
    decode, publish = Decoder.decode, FrameOutputs.publish_frame

    def slow_decode(self, item):
        time.sleep(DECODE_S)
        result = decode(self, item)
        in_flight.add(1)
        return result

    def slow_publish(self, frame, seed, pixels):
        time.sleep(WRITE_S)
        publish(self, frame, seed, pixels)
        in_flight.add(-1)

    monkeypatch.setattr(Decoder, "decode", slow_decode)
    monkeypatch.setattr(FrameOutputs, "publish_frame", slow_publish)
    return in_flight


def render_frames(write_job: Callable[..., Path], frames: int, name: str) -> RunReport:
    job = load_job(write_job(f"{name}.toml", source={"kind": "noise"}, shot={"frame_end": frames},
                             output={"formats": ["png"], "root": name},
                             tuning={"writer_threads": 1, "channel_depth": 2, "pinned_buffers": 3}))
    plan = make_plan(job, pick_device("cpu"))
    report = run_plan(plan)
    assert report.frames == frames
    return report


def test_wall_time_tracks_the_slowest_stage(stand_ins: InFlight, write_job: Callable[..., Path],
                                            tmp_path: Path) -> None:
    frames = 30
    report = render_frames(write_job, frames, str(tmp_path / "a"))
    busy = {name: figures["busy_s"] for name, figures in report.stages.items()}
    slowest = max(busy.values())
    assert busy["write"] == slowest >= frames * WRITE_S  # the stand-in costs took effect
    assert busy["decode"] >= frames * DECODE_S
    serial = sum(busy.values())
    assert report.render_s <= 1.15 * slowest, (
        f"{report.render_s:.2f} s against a slowest stage of {slowest:.2f} s (all stages: {serial:.2f} s)")


def test_memory_stays_bounded_when_the_writer_is_slowest(stand_ins: InFlight, write_job: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    # channels of depth 2 between the stages, a ring of 3, one frame in each stage's hands
    bound = 2 * 3 + 3 + 4
    for frames in (20, 80):
        stand_ins.peak = 0
        render_frames(write_job, frames, str(tmp_path / str(frames)))
        assert stand_ins.peak <= bound, f"{stand_ins.peak} frames held in a {frames}-frame shot"
