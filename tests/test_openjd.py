"""Issue 21: a job as an Open Job Description template, checked by OpenJD's own
validator (`openjd check`) and run end to end by its own runtime (`openjd run`) on the
CPU; `render run --frames` for the chunks; the session's render server that keeps the
model loaded across a session's tasks, stopped or killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import render

from pipeline.cli import main
from workers.openjd import export_template

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """What OpenJD's actions run with: `render` (this checkout's) on the PATH."""
    if not (BIN / "render").is_file():
        pytest.fail(f"no `render` in {BIN}: install the project (pip install -e .), as .ci/run does")
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def openjd(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openjd", *args], cwd=cwd, env=env(), text=True,
                          capture_output=True, timeout=timeout)


def session_render(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "render"), *args], env=env(), text=True, capture_output=True, timeout=timeout)


@pytest.fixture
def sample_shot(tmp_path: Path) -> Path:
    """The sample shot cut to its first 6 frames, beside links to its VAE and latents;
    output under tmp_path/out."""
    text = (SAMPLES / "demo.toml").read_text()
    text = text.replace("frame_end = 48", "frame_end = 6").replace('"renders/demo"', f'"{tmp_path / "out"}"')
    assert "frame_end = 6" in text and str(tmp_path / "out") in text
    for name in ("demo_vae", "demo_latents"):
        (tmp_path / name).symlink_to(SAMPLES / name)
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def records(root: Path) -> list[dict]:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r["kind"] != "run"]   # files, not runs


def frames_published(root: Path) -> Counter:
    return Counter(r["frame"] for r in records(root) if r["kind"] == "frame")


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".part"))


def test_the_sample_shot_exports_to_a_template_openjd_accepts(tmp_path: Path) -> None:
    done = render("openjd", str(SAMPLES / "demo.toml"), "--chunk", "16", "-o", str(tmp_path / "template.yaml"))
    assert done.returncode == 0, done.stderr
    check = openjd("check", str(tmp_path / "template.yaml"), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    template = yaml.safe_load((tmp_path / "template.yaml").read_text())
    assert template["specificationVersion"] == "jobtemplate-2023-09"
    assert template["extensions"] == ["TASK_CHUNKING"]
    assert [p["name"] for p in template["parameterDefinitions"]] == ["InputRoot", "OutputRoot", "Device"]
    frames, video = template["steps"]
    chunks = frames["parameterSpace"]["taskParameterDefinitions"][0]
    assert (chunks["type"], chunks["range"], chunks["chunks"]["defaultTaskCount"]) == ("CHUNK[INT]", "1-48", 16)
    assert frames["script"]["embeddedFiles"][0]["data"] == (SAMPLES / "demo.toml").read_text()
    args = frames["script"]["actions"]["onRun"]["args"]
    assert args[:5] == ["run", "{{Task.File.Job}}", "--frames", "{{Task.Param.Frames}}", "--resume"]
    assert [e["name"] for e in frames["stepEnvironments"]] == ["RenderSession"]
    assert video["dependencies"] == [{"dependsOn": "Frames"}]
    assert "--frames" not in video["script"]["actions"]["onRun"]["args"]
    assert {a["name"]: a["min"] for a in frames["hostRequirements"]["amounts"]} == {
        "amount.worker.gpu": 1, "amount.worker.gpu.memory": 8192}


def test_without_the_extension_and_referenced_by_path_the_template_is_still_valid(sample_shot: Path) -> None:
    folder = sample_shot.parent
    plain = export_template(sample_shot, chunk=4, gpus=0, gpu_memory_gib=None, chunk_extension=False,
                            saved_in=folder)
    (folder / "plain.yaml").write_text(plain)
    template = yaml.safe_load(plain)
    assert "extensions" not in template and "amounts" not in template["steps"][0]["hostRequirements"]
    assert template["steps"][0]["parameterSpace"]["taskParameterDefinitions"][0] == {
        "name": "Frames", "type": "STRING", "range": ["1-4", "5-6"]}
    # "{{" would be read as an expression in embedded text: such a job is referenced by path
    sample_shot.write_text(sample_shot.read_text() + "# {{ not a template expression }}\n")
    (folder / "by_path.yaml").write_text(export_template(sample_shot, chunk=4, gpus=1, gpu_memory_gib=24,
                                                         saved_in=folder))
    template = yaml.safe_load((folder / "by_path.yaml").read_text())
    assert template["parameterDefinitions"][0] == {
        "name": "JobFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN", "default": "demo.toml",
        "description": "The framefarm job file (TOML), as the render hosts see it.",
        "userInterface": {"control": "CHOOSE_INPUT_FILE", "label": "Job file"}}
    assert "embeddedFiles" not in template["steps"][0]["script"]
    for name in ("plain.yaml", "by_path.yaml"):
        check = openjd("check", name, cwd=folder)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("change, field", [
    (("fps = 24", "fps = 0"), "shot.fps"),
    (('path = "demo_vae"', 'path = "no_such_vae"'), "model.path"),
])
def test_a_malformed_job_exits_2_before_any_template_is_written(sample_shot: Path, change: tuple[str, str],
                                                                 field: str) -> None:
    sample_shot.write_text(sample_shot.read_text().replace(*change))
    out = sample_shot.parent / "template.yaml"
    done = render("openjd", str(sample_shot), "-o", str(out))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {field} = ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists() and not list(sample_shot.parent.glob(".template.yaml*"))


def test_openjd_run_executes_every_task_of_both_steps(sample_shot: Path) -> None:
    folder, out = sample_shot.parent, sample_shot.parent / "out"
    (folder / "template.yaml").write_text(export_template(sample_shot, chunk=2, gpus=1, gpu_memory_gib=None,
                                                          saved_in=folder))
    done = openjd("run", "template.yaml", "-p", "Device=cpu", cwd=folder)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Session ended successfully" in log, log[-3000:]
    assert "Chunks run: 4" in log   # 3 chunks of 2 frames, and the video
    for chunk in ("1-2", "3-4", "5-6"):
        assert f"Frames(CHUNK[INT]) = {chunk}" in log
    # one render process served the session's three chunk tasks and loaded the model once
    assert log.count("the model was loaded in this run") == 1
    assert log.count("the model was kept loaded from an earlier run") == 2
    assert "stopped after 3 run(s), 1 model load(s)" in log
    assert frames_published(out) == Counter(range(1, 7))            # every frame published once
    videos = [r for r in records(out) if r["kind"] == "video"]
    assert [v["frames"] for v in videos] == [[1, 6]] and (out / "demo.mp4").is_file()
    verify = render("verify", str(out))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_task_killed_mid_run_and_run_again_leaves_no_partial_file(sample_shot: Path) -> None:
    """kill -9 of the process that writes the frames (the session's render server) in
    the middle of a chunk; the runtime's next run of the step skips what was published
    and renders the rest, and no temporary file is left."""
    folder, out = sample_shot.parent, sample_shot.parent / "out"
    (folder / "template.yaml").write_text(export_template(sample_shot, chunk=6, gpus=1, gpu_memory_gib=None,
                                                          saved_in=folder))
    run = subprocess.Popen([sys.executable, "-m", "openjd", "run", "template.yaml", "--step", "Frames",
                            "-p", "Device=cpu"], cwd=folder, env=env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert run.stdout is not None
    server = None
    for line in run.stdout:
        if "render session server pid" in line and " serves " in line:
            server = int(line.split("render session server pid ")[1].split()[0])
            break
    assert server is not None, "the session's render server did not start"
    deadline = time.monotonic() + 120
    while not ((out / "manifest.jsonl").is_file() and frames_published(out)):
        assert time.monotonic() < deadline and run.poll() is None, "no frame was published"
        time.sleep(0.02)
    os.kill(server, signal.SIGKILL)
    log = run.stdout.read()
    assert run.wait(60) != 0
    assert "stopped in the middle of the run" in log, log[-3000:]
    first = frames_published(out)
    assert 1 <= sum(first.values()) < 6 and max(first.values()) == 1

    again = openjd("run", "template.yaml", "--step", "Frames", "-p", "Device=cpu", cwd=folder)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"{sum(first.values())} frame(s) already finished" in again.stdout
    assert leftovers(out) == []
    assert frames_published(out) == Counter(range(1, 7))
    assert not (out / "demo.mp4").exists()   # chunks write frames only
    verify = render("verify", str(out))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_stopped_session_run_finishes_its_frames_in_flight_and_resumes(sample_shot: Path,
                                                                         tmp_path_factory: pytest.TempPathFactory
                                                                         ) -> None:
    """What OpenJD's cancel does (SIGTERM to the task's process): the server stops the
    run at a frame boundary, the task exits 143, and a resumed run in the same session
    renders the rest with the model still loaded."""
    out = sample_shot.parent / "out"
    session = tmp_path_factory.mktemp("s")   # short: a Unix socket's path is at most 107 bytes
    started = session_render("session", "start", "--dir", str(session))
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        task = subprocess.Popen([str(BIN / "render"), "run", str(sample_shot), "--frames", "1-6", "--resume",
                                 "--device", "cpu", "--session", str(session), "-q"], env=env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not ((out / "manifest.jsonl").is_file() and frames_published(out)):
            assert time.monotonic() < deadline and task.poll() is None, "no frame was published"
            time.sleep(0.02)
        task.send_signal(signal.SIGTERM)
        stdout, stderr = task.communicate(timeout=60)
        assert task.returncode == 143, stdout + stderr
        assert stderr.startswith("error: stopped by SIGTERM after ") and stderr.count("\n") == 1, stderr
        first = sum(frames_published(out).values())
        assert first < 6 and leftovers(out) == []

        again = session_render("run", str(sample_shot), "--frames", "1-6", "--resume", "--device", "cpu",
                               "--session", str(session), "-q")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{first} frame(s) already finished" in again.stdout
        assert "the model was kept loaded from an earlier run" in again.stdout
        assert frames_published(out) == Counter(range(1, 7))
    finally:
        stopped = session_render("session", "stop", "--dir", str(session))
    assert stopped.returncode == 0 and "stopped after 2 run(s), 1 model load(s)" in stopped.stdout, stopped.stdout
    assert not (session / "render-session.sock").exists()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["render", *args])
        try:
            main()
            code = 0
        except SystemExit as done:
            code = int(done.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_frames_renders_only_those_frames_and_never_the_video(write_job: Callable[..., Path],
                                                              cli: Callable[..., tuple[int, str, str]],
                                                              tmp_path: Path) -> None:
    job = write_job()
    out = job.parent / "out"
    # no session server answers in this folder: the run says so and renders here
    code, stdout, stderr = cli("run", str(job), "--frames", "2-3", "--device", "cpu", "-q",
                               "--session", str(tmp_path / "no-session"))
    assert code == 0, stderr
    assert "warning: no render session server in" in stderr and "rendering in this process instead" in stderr
    assert frames_published(out) == Counter([2, 3])
    assert not (out / "test.mp4").exists() and all(r["kind"] == "frame" for r in records(out))
    code, stdout, _ = cli("run", str(job), "--frames", "3", "--resume", "--device", "cpu", "-q")
    assert code == 0 and "nothing to render: all 1 frame(s)" in stdout
    code, _, stderr = cli("run", str(job), "--resume", "--device", "cpu", "-q")   # the rest, and the video
    assert code == 0, stderr
    assert frames_published(out) == Counter(range(1, 7))
    assert [r["frames"] for r in records(out) if r["kind"] == "video"] == [[1, 6]]


def test_frames_as_studios_write_them(write_job: Callable[..., Path], cli: Callable[..., tuple[int, str, str]]
                                      ) -> None:
    job = write_job()
    out = job.parent / "out"
    code, _, stderr = cli("run", str(job), "--frames", "1-5x2", "--device", "cpu", "-q")
    assert code == 0, stderr
    assert frames_published(out) == Counter([1, 3, 5])
    code, _, stderr = cli("run", str(job), "--frames", "2,4-5,3", "--resume", "--device", "cpu", "-q")
    assert code == 0, stderr
    assert frames_published(out) == Counter([1, 2, 3, 4, 5])   # 5 was skipped: finished, each frame once
    assert not (out / "test.mp4").exists()


@pytest.mark.parametrize("frames", ["0-3", "3-2", "5-9", "abc", "1,9", "-2", "99999999999", "1-2x0.5", "2-4,6-5",
                                    "1-", "1-6x0", ","])
def test_frames_outside_the_shot_exit_2_naming_the_option(write_job: Callable[..., Path],
                                                         cli: Callable[..., tuple[int, str, str]],
                                                         frames: str) -> None:
    job = write_job()
    code, stdout, stderr = cli("run", str(job), "--frames", frames, "--device", "cpu")
    assert code == 2 and stdout == ""
    assert stderr == (f"error: --frames = {frames!r}: expected FIRST-LAST (inclusive), FIRST-LASTxSTEP or a comma "
                      "list of those and single frames (e.g. 1-6, 1-6x2, 1,6), within the shot's frames 1-6\n")
    assert not (job.parent / "out").exists()


def test_frames_of_a_video_only_job_exit_2(write_job: Callable[..., Path],
                                           cli: Callable[..., tuple[int, str, str]]) -> None:
    job = write_job(output={"formats": ["mp4"]})
    code, _, stderr = cli("run", str(job), "--frames", "1-2", "--device", "cpu")
    assert code == 2 and stderr.startswith("error: --frames = '1-2': this job writes only a video")
