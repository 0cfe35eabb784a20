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
                                "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
    pngs = list(root.rglob("*.png"))
    assert len(pngs) == done, "every published frame has its manifest record"
    assert render("verify", str(root)).returncode == 0

    finished = render("run", str(job), "--device", "cpu", "--resume", "-q", timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{done} frame(s) already finished" in finished.stdout
    assert read_video_info(root / "test.mp4") == (200, 64, 48)
    assert render("verify", str(root)).returncode == 0
