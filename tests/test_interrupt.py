"""Ctrl-C and SIGTERM mid-run: the process stops cleanly, no partial file is left,
every published frame is whole and recorded, and --resume finishes the shot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import render

from pipeline.files.video import read_video_info


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_leaves_no_partial_file(write_job: Callable[..., Path], job_dir: Path,
                                               signum: int, exit_code: int) -> None:
    # Enough frames that the run is still going when the signal lands.
    job = write_job(source={"kind": "noise"}, shot={"frame_end": 200, "width": 64, "height": 48})
    root = job_dir / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--device", "cpu",
                                "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=ctrl_c_as_at_a_terminal)
    manifest = root / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signum)
    _out, err = process.communicate(timeout=60)

    assert process.returncode == exit_code, err
    assert "no partial file" in err and "--resume" in err and "Traceback" not in err
    assert not list(root.rglob("*.part")), "a temporary file was left behind"
    assert not (root / "test.mp4").exists(), "an unfinished video was published"
    done = manifest.read_text().count("\n")
    assert 5 <= done < 200
    assert f"after {done} finished frame(s)" in err, "the message counts what is on disk"
    pngs = list(root.rglob("*.png"))
    assert len(pngs) == done, "every published frame has its manifest record"
    assert render("verify", str(root)).returncode == 0

    finished = render("run", str(job), "--device", "cpu", "--resume", "-q", timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{done} frame(s) already finished" in finished.stdout
    assert read_video_info(root / "test.mp4") == (200, 64, 48)
    assert render("verify", str(root)).returncode == 0


def ctrl_c_as_at_a_terminal() -> None:
    """A process started in the background by a shell without job control (as a test
    runner may be) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: give the child the disposition a terminal's foreground job has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay_s", [0.5, 1.5, 3.0, 5.0])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_folder(write_job: Callable[..., Path], job_dir: Path,
                                                                 delay_s: float) -> None:
    """Before: click printed a blank line and "error: aborted", and an interrupt after the
    output folders were made left them behind, empty. Now, whenever Ctrl-C lands before
    the first frame is published: one line, exit 130, no folder of the run's left."""
    job = write_job(source={"kind": "noise"}, shot={"frame_end": 200, "width": 64, "height": 48},
                    output={"root": str(job_dir / "out" / "deeper")})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--device", "cpu", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=ctrl_c_as_at_a_terminal)
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    # -SIGINT: Python ends a process stopped by Ctrl-C at exit with that signal; a shell says 130 too
    assert process.returncode in (130, -signal.SIGINT), err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("error: "), err
    published = list((job_dir / "out").rglob("*.png"))
    if not published:   # it was still starting: nothing of the run is left, not even a folder
        assert not (job_dir / "out").exists(), sorted((job_dir / "out").rglob("*"))
        assert "nothing was written" in err or "after 0 finished frame(s)" in err, err


def test_a_run_failing_before_its_first_frame_removes_the_folders_it_made(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = job_dir / "latents" / "frame_0001.safetensors"
    latents = load_file(str(path))["latents"]
    latents[0, 0, 0] = float("inf")
    save_file({"latents": latents}, str(path))
    kept = job_dir / "out" / "kept"
    kept.mkdir(parents=True)   # a folder that was there before the run stays
    job = write_job(shot={"frame_end": 1}, output={"root": str(job_dir / "out" / "new" / "root")})
    result = render("run", str(job), "--device", "cpu", "-q")
    assert result.returncode == 1 and "NaN or infinite" in result.stderr, result.stderr
    assert sorted(p.relative_to(job_dir) for p in (job_dir / "out").rglob("*")) == [Path("out/kept")]
