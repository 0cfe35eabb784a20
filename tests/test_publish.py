"""Atomic publishing and the manifest, at the file level."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.files.manifest import Manifest, read_records, verify
from pipeline.files.publish import publish_bytes, sweep_stale_temps, temp_path


def test_publish_writes_whole_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "frame.png"
    published = publish_bytes(dest, b"pixels")
    assert dest.read_bytes() == b"pixels"
    assert published.sha256 == hashlib.sha256(b"pixels").hexdigest()
    assert published.size == 6 and not published.kept_existing
    assert [p.name for p in dest.parent.iterdir()] == ["frame.png"]


def test_first_writer_wins_with_same_content(tmp_path: Path) -> None:
    dest = tmp_path / "frame.png"
    publish_bytes(dest, b"same")
    inode = dest.stat().st_ino
    second = publish_bytes(dest, b"same")
    assert second.kept_existing
    assert dest.stat().st_ino == inode, "the first writer's file must stay in place"
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]


def test_other_content_replaces_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "frame.png"
    publish_bytes(dest, b"old render")
    second = publish_bytes(dest, b"new render")
    assert not second.kept_existing
    assert dest.read_bytes() == b"new render"
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]


def test_sweep_removes_temps_of_dead_processes_only(tmp_path: Path) -> None:
    dest = tmp_path / "frame.png"
    mine = temp_path(dest)
    mine.write_bytes(b"in progress")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".frame.png.{int(dead.stdout)}.{os.urandom(4).hex()}.part"
    stale.write_bytes(b"left by kill -9")
    assert sweep_stale_temps(tmp_path) == 1
    assert mine.exists() and not stale.exists()


def test_manifest_skips_a_torn_last_line(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    publish_bytes(tmp_path / "f1.png", b"one")
    manifest.append({"path": "f1.png", "size": 3, "sha256": hashlib.sha256(b"one").hexdigest()})
    with (tmp_path / "manifest.jsonl").open("a") as handle:
        handle.write('{"path": "f2.png", "si')  # a crash mid-append
    assert [r["path"] for r in read_records(tmp_path)] == ["f1.png"]
    assert verify(tmp_path) == (1, ["manifest.jsonl line 2: not a manifest record"])
    # the next append starts a line of its own: the torn record does not swallow it
    publish_bytes(tmp_path / "f3.png", b"three")
    manifest.append({"path": "f3.png", "size": 5, "sha256": hashlib.sha256(b"three").hexdigest()})
    assert [r["path"] for r in read_records(tmp_path)] == ["f1.png", "f3.png"]


SHORT_WRITE = """
import resource, signal, sys
from pathlib import Path
from pipeline.files.manifest import Manifest
root = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit returns short or fails
size = (root / "manifest.jsonl").stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, size + 20))
try:
    Manifest(root).append({"path": "f2.png", "size": 3, "sha256": "a" * 64, "note": "x" * 200})
except OSError as err:
    print("refused:", err)
"""


def test_an_append_that_stops_short_fails_and_the_next_one_is_whole(tmp_path: Path) -> None:
    """A full disk (here a file-size limit) mid-record: the append raises instead of
    reporting success, and once space is back the next record is readable."""
    manifest = Manifest(tmp_path)
    manifest.append({"path": "f1.png", "size": 3, "sha256": "b" * 64})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:"), out.stdout
    assert not (tmp_path / "manifest.jsonl").read_bytes().endswith(b"\n")   # the torn record is there
    manifest.append({"path": "f3.png", "size": 3, "sha256": "c" * 64})
    assert [r["path"] for r in read_records(tmp_path)] == ["f1.png", "f3.png"]


def test_verify_reports_files_without_a_record_and_a_manifest_of_garbage(tmp_path: Path) -> None:
    publish_bytes(tmp_path / "shot" / "f1.png", b"one")
    Manifest(tmp_path).append({"path": "shot/f1.png", "size": 3, "sha256": hashlib.sha256(b"one").hexdigest()})
    publish_bytes(tmp_path / "shot" / "f2.png", b"two")   # published, its record never written
    assert verify(tmp_path) == (1, ["shot/f2.png: no manifest record"])
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "manifest.jsonl").write_bytes(b"\x00\xff not json\n[1, 2]\n{\"path\": \"a\\u0000b\"}\n")
    count, problems = verify(garbage)
    assert count == 0 and problems == [f"manifest.jsonl line {n}: not a manifest record" for n in (1, 2, 3)]


def test_verify_flags_records_leaving_the_root(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"path": "../etc/passwd", "size": 1, "sha256": "x"}\n')
    _count, problems = verify(tmp_path)
    assert problems == ["../etc/passwd: path leaves the output root"]


RACER = """
import sys, time
from pathlib import Path
from pipeline.files.publish import publish_bytes
folder, start = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
for index in range(30):
    published = publish_bytes(folder / f"frame.{index:04d}.png", bytes([index]) * 200_000)
    print(index, "kept" if published.kept_existing else "won", flush=True)
"""


def test_two_processes_racing_for_frames_publish_each_once(tmp_path: Path) -> None:
    start = time.time() + 2.0  # both processes start publishing at the same moment
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)], env=env,
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes: dict[int, list[str]] = {}
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        for line in out.split("\n"):
            if line:
                index, outcome = line.split()
                outcomes.setdefault(int(index), []).append(outcome)
    assert all(sorted(o) == ["kept", "won"] for o in outcomes.values()), outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"frame.{i:04d}.png" for i in range(30)]


RECORDING_RACER = """
import sys, time
from pathlib import Path
from pipeline.files.manifest import Manifest
from pipeline.files.publish import publish_bytes
folder, start = Path(sys.argv[1]), float(sys.argv[2])
manifest = Manifest(folder)
time.sleep(max(0.0, start - time.time()))
for index in range(30):
    name = f"frame.{index:04d}.png"
    def record(published, name=name):
        manifest.record_unless_recorded({"path": name, "sha256": published.sha256}, published.kept_existing)
    publish_bytes(folder / name, bytes([index]) * 200_000, then=record, lock=manifest.exclusive())
"""


def test_two_processes_publishing_the_same_files_record_each_once(tmp_path: Path) -> None:
    """Before: the second publisher of an identical file checked for a record before the
    first had written it, and both recorded it."""
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    racers = [subprocess.Popen([sys.executable, "-c", RECORDING_RACER, str(tmp_path), str(start)], env=env)
              for _ in range(3)]
    for racer in racers:
        assert racer.wait(timeout=60) == 0
    paths = [r["path"] for r in read_records(tmp_path)]
    assert sorted(paths) == [f"frame.{i:04d}.png" for i in range(30)], "each file recorded exactly once"


def test_two_runs_on_one_output_root_record_the_video_once(tmp_path: Path) -> None:
    """Two `render run`s of one shot into one root at the same time (issue 15: the video
    was recorded twice)."""
    from collections import Counter

    from helpers import base_job, job_toml, make_kl_vae

    vae = make_kl_vae(tmp_path / "vae")
    job = base_job(vae, source={"kind": "noise"}, shot={"frame_end": 8, "width": 32, "height": 24},
                   output={"root": str(tmp_path / "out"), "formats": ["png", "mp4"]})
    (tmp_path / "job.toml").write_text(job_toml(job))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "job.toml"),
                              "--device", "cpu", "-q"], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for run in runs:
        _out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err
    counts = Counter(r["path"] for r in read_records(tmp_path / "out"))
    assert counts["test.mp4"] == 1, counts
    assert len(counts) == 9 and max(counts.values()) == 1, counts
    assert verify(tmp_path / "out") == (9, [])
