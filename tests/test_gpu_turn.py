"""Two renders in one process (a farm worker's two task slots) take turns at the GPU
when they share a GpuTurn: one's decodes all run before the other's start, and the
second starts while the first's frames are still being written. Without a turn their
decodes interleave. The decode is the real one, held a little longer per frame (a
stand-in for GPU time) and timed."""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import trio
from helpers import base_job, job_toml, write_latents

from pipeline.config.job import load_job
from pipeline.gpu.device import pick_device
from pipeline.gpu.turns import GpuTurn
from pipeline.plan import make_plan
from pipeline.run import RunReport, render
from pipeline.stages.decode import Decoder
from pipeline.stages.write import FrameOutputs

DECODE_S = 0.03


@pytest.fixture
def decode_times(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[tuple[float, float]]]:
    """Decode intervals per Decoder (one per render); each publish is slowed so a
    render's frames are still being written after its last decode."""
    times: dict[int, list[tuple[float, float]]] = defaultdict(list)
    lock = threading.Lock()
    decode, publish = Decoder.decode, FrameOutputs.publish_frame

    def timed_decode(self, item):
        start = time.perf_counter()
        time.sleep(DECODE_S)
        result = decode(self, item)
        with lock:
            times[id(self)].append((start, time.perf_counter()))
        return result

    def slow_publish(self, frame, seed, pixels):
        time.sleep(DECODE_S)
        publish(self, frame, seed, pixels)

    monkeypatch.setattr(Decoder, "decode", timed_decode)
    monkeypatch.setattr(FrameOutputs, "publish_frame", slow_publish)
    return times


def two_renders(tmp_path: Path, kl_vae: Path, turn: GpuTurn | None
                ) -> tuple[dict[str, RunReport], dict[str, list[float]]]:
    """Renders "a" and "b" of 8 frames each, at once in one trio run: their reports and
    the times their frames were written."""
    write_latents(tmp_path / "latents", range(1, 9), (4, 12, 16))
    plans = {}
    for name in ("a", "b"):
        job = base_job(kl_vae, shot={"frame_end": 8}, output={"root": str(tmp_path / name), "formats": ["png"]})
        (tmp_path / f"{name}.toml").write_text(job_toml(job))
        plans[name] = make_plan(load_job(tmp_path / f"{name}.toml"), pick_device("cpu"))
    reports: dict[str, RunReport] = {}
    written: dict[str, list[float]] = defaultdict(list)

    async def both() -> None:
        async def one(name: str) -> None:
            reports[name] = await render(plans[name], lambda frame: written[name].append(time.perf_counter()),
                                         handle_signals=False, gpu_turn=turn)

        async with trio.open_nursery() as nursery:
            for name in plans:
                nursery.start_soon(one, name)

    trio.run(both)
    assert [reports[name].frames for name in plans] == [8, 8]
    return reports, written


def test_renders_sharing_a_turn_decode_one_after_the_other(tmp_path: Path, kl_vae: Path,
                                                           decode_times: dict) -> None:
    reports, written = two_renders(tmp_path, kl_vae, GpuTurn())
    first, second = sorted(decode_times.values(), key=lambda spans: spans[0][0])
    assert len(first) == len(second) == 8
    assert max(end for _, end in first) <= min(start for start, _ in second)
    went_first, went_second = sorted(reports, key=lambda name: reports[name].stages["decode"]["gpu_turn_wait_s"])
    assert reports[went_first].stages["decode"]["gpu_turn_wait_s"] < DECODE_S
    assert reports[went_second].stages["decode"]["gpu_turn_wait_s"] >= 6 * DECODE_S  # the first's decodes
    # ... but not its writes: the second decoded while the first's frames were still being written
    assert min(start for start, _ in second) < max(written[went_first])


def test_without_a_turn_the_decodes_interleave(tmp_path: Path, kl_vae: Path, decode_times: dict) -> None:
    two_renders(tmp_path, kl_vae, None)
    first, second = sorted(decode_times.values(), key=lambda spans: spans[0][0])
    assert min(start for start, _ in second) < max(end for _, end in first)


def test_a_failing_render_gives_the_turn_back(tmp_path: Path, kl_vae: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import StageFailed

    write_latents(tmp_path / "latents", range(1, 3), (4, 12, 16))
    job = base_job(kl_vae, shot={"frame_end": 2}, output={"root": str(tmp_path / "out"), "formats": ["png"]})
    (tmp_path / "job.toml").write_text(job_toml(job))
    plan = make_plan(load_job(tmp_path / "job.toml"), pick_device("cpu"))
    turn = GpuTurn()
    decode = Decoder.decode

    def broken(self, item):
        raise RuntimeError("boom")

    monkeypatch.setattr(Decoder, "decode", broken)
    with pytest.raises(StageFailed):
        trio.run(functools.partial(render, plan, lambda frame: None, handle_signals=False, gpu_turn=turn))
    monkeypatch.setattr(Decoder, "decode", decode)
    report = trio.run(functools.partial(render, plan, lambda frame: None, handle_signals=False, gpu_turn=turn))
    assert report.frames == 2
