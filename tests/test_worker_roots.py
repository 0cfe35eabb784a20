"""A farm worker reads only inside its roots: a job cannot make it read, or quote, a file
of the worker's (issue 15, item 7). Every path a job names is checked before it is read:
models and pipelines against --model-root, latents and preset files against
--input-root (default: the model roots). And no error quotes a value read from a
preset file, on the farm or off it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from helpers import render

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-do-not-print"


def run_worker(queue: str, job_dir: Path, kl_vae: Path, *roots: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--queue", queue, "--device", "cpu",
         "--output-root", str(job_dir), "--model-root", str(kl_vae.parent), *roots, "--exit-when-idle"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})


def submit(job: Path, queue: str) -> str:
    result = render("submit", str(job), "--queue", queue, "--chunk", "6")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def job_status(queue: str, job_id: str) -> dict:
    result = render("status", job_id, "--queue", queue, "--json")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    return json.loads(result.stdout)["jobs"][0]


def test_a_preset_file_outside_the_input_roots_is_refused_unread(
        write_job: Callable[..., Path], job_dir: Path, kl_vae: Path, tmp_path: Path) -> None:
    """Before: the worker read any file a job named as its preset, and the unknown-field
    error put the file's contents in its log and in `render status`."""
    (job_dir / "worker-secrets.toml").write_text(f'writer_threads = 2\npassword = "{SECRET}"\n')
    # the submitter's copy (it owns it) is harmless; the worker's file of that name is not
    job = write_job(preset=str(job_dir / "worker-secrets.toml"), output={"formats": ["png"]})
    queue = f"sqlite:///{tmp_path / 'farm.db'}"
    refused_at_submit = render("submit", str(job), "--queue", queue)
    assert refused_at_submit.returncode == 2 and SECRET not in refused_at_submit.stderr
    assert "unknown field 'password' in the preset file" in refused_at_submit.stderr
    (job_dir / "worker-secrets.toml").write_text("writer_threads = 2\n")
    job_id = submit(job, queue)
    (job_dir / "worker-secrets.toml").write_text(f'writer_threads = 2\npassword = "{SECRET}"\n')
    worker = run_worker(queue, job_dir, kl_vae, "--input-root", str(job_dir / "latents"))
    assert worker.returncode == 2, worker.stderr
    assert SECRET not in worker.stderr and "Traceback" not in worker.stderr
    last = worker.stderr.strip().splitlines()[-1]
    assert "--input-root" in last and f"preset = '{job_dir.resolve() / 'worker-secrets.toml'}'" in last, last
    assert "outside this worker's input roots" in last
    final = job_status(queue, job_id)
    assert (final["pending"], final["failed"], final["done"]) == (6, 0, 0), "a refusal costs no attempt"
    assert not (job_dir / "out").exists()


def test_latents_outside_the_input_roots_are_refused_and_inside_render(
        write_job: Callable[..., Path], job_dir: Path, kl_vae: Path, tmp_path: Path) -> None:
    queue = f"sqlite:///{tmp_path / 'farm.db'}"
    job_id = submit(write_job(output={"formats": ["png"]}), queue)
    (job_dir / "elsewhere").mkdir()
    refused = run_worker(queue, job_dir, kl_vae, "--input-root", str(job_dir / "elsewhere"))
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "source.path" in last and "outside this worker's input roots" in last, last
    assert job_status(queue, job_id)["pending"] == 6
    # a link inside the root that leads out of it is outside
    (job_dir / "elsewhere" / "latents").symlink_to(job_dir / "latents")
    linked = submit(write_job("linked.toml", source={"path": "elsewhere/latents/frame_{frame:04d}.safetensors"},
                              output={"formats": ["png"], "root": str(job_dir / "out2")}), queue)
    taken = run_worker(queue, job_dir, kl_vae, "--input-root", str(job_dir / "latents"))
    assert taken.returncode == 0, taken.stderr
    assert job_status(queue, job_id)["done"] == 6
    assert job_status(queue, linked)["done"] == 6, "the link resolves inside the input root"
    assert len(list((job_dir / "out").rglob("*.png"))) == 6


def test_the_model_root_is_the_default_input_root(
        write_job: Callable[..., Path], job_dir: Path, kl_vae: Path, tmp_path: Path) -> None:
    """Without --input-root, latents must lie under a --model-root (here they do not)."""
    queue = f"sqlite:///{tmp_path / 'farm.db'}"
    submit(write_job(output={"formats": ["png"]}), queue)
    refused = run_worker(queue, job_dir, kl_vae)
    assert refused.returncode == 2 and "--input-root" in refused.stderr.strip().splitlines()[-1], refused.stderr


def test_no_error_quotes_a_value_read_from_a_preset_file(write_job: Callable[..., Path], job_dir: Path) -> None:
    preset = job_dir / "house.toml"
    for text, said in ((f'password = "{SECRET}"\n', "unknown field 'password' in the preset file"),
                       (f'channel_depth = "{SECRET}"\n', "its channel_depth: expected an integer"),
                       ("pinned_buffers = 987654\n", "its pinned_buffers: expected an integer")):
        preset.write_text(text)
        result = render("run", str(write_job(preset="house.toml")), "--dry-run")
        assert result.returncode == 2, result.stderr
        assert SECRET not in result.stderr and "987654" not in result.stderr
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # the job's own [tuning] table is the job's: its values are quoted as before
    result = render("run", str(write_job(tuning={"writer_threads": 65})), "--dry-run")
    assert result.returncode == 2 and "tuning.writer_threads = 65" in result.stderr
