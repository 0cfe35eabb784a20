"""End-to-end renders on the CPU through the real CLI entry point: PNGs read back and
compared with the decoder's own output, the MP4 read back with PyAV, the manifest,
resume and verify."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_vae, write_latents
from safetensors.torch import load_file

from pipeline.files.png import read_png
from pipeline.files.video import read_video_info


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
            ) -> tuple[int, str, str]:
    from pipeline.cli import main

    monkeypatch.setattr(sys, "argv", ["render", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Callable[..., tuple]:
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def expected_frame(vae_path: Path, latents: torch.Tensor) -> np.ndarray:
    """The decoder's output computed independently of the pipeline."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    config = json.loads((vae_path / "config.json").read_text())
    cls = AutoencoderTiny if config["_class_name"] == "AutoencoderTiny" else AutoencoderKL
    vae = cls.from_pretrained(vae_path, low_cpu_mem_usage=False).eval()
    shift = config.get("shift_factor") or 0.0
    with torch.no_grad():
        image = vae.decode(latents[None] / config["scaling_factor"] + shift).sample[0]
    image = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).numpy()


def manifest(root: Path) -> list[dict]:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] != "run"]   # the files' records, not the runs


def test_renders_pngs_equal_to_the_decoder_and_an_mp4(
        cli: Callable[..., tuple], write_job: Callable[..., Path], job_dir: Path, kl_vae: Path) -> None:
    code, out, err = cli("run", str(write_job()), "--device", "cpu", "-q")
    assert code == 0, err
    assert "rendered 6 frame(s) of test" in out
    for stage in ("source", "decode", "transfer", "write"):
        assert stage in out
    root = job_dir / "out"
    for frame in range(1, 7):
        latents = load_file(job_dir / "latents" / f"frame_{frame:04d}.safetensors")["latents"]
        written = read_png(root / "test" / f"test.{frame:04d}.png")
        assert written.shape == (24, 32, 3)
        diff = np.abs(written.astype(int) - expected_frame(kl_vae, latents).astype(int))
        assert diff.max() <= 1, f"frame {frame} differs from the decoder by {diff.max()}"
    assert read_video_info(root / "test.mp4") == (6, 32, 24)
    records = manifest(root)
    frames = [r for r in records if r["kind"] == "frame"]
    assert sorted(r["frame"] for r in frames) == list(range(1, 7))
    for record in frames:
        data = (root / record["path"]).read_bytes()
        assert record["size"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert {"seed", "model_hash", "job_hash", "shot"} <= record.keys()
    assert [r["path"] for r in records if r["kind"] == "video"] == ["test.mp4"]
    assert not list(root.rglob("*.part"))


def test_autoencoder_tiny_and_npy_latents(cli: Callable[..., tuple], write_job: Callable[..., Path],
                                          job_dir: Path) -> None:
    vae = make_tiny_vae(job_dir / "taesd")
    write_latents(job_dir / "npy", range(1, 4), (4, 3, 4), suffix=".npy")
    native = np.load(job_dir / "npy" / "frame_0003.npy")
    np.save(job_dir / "npy" / "frame_0003.npy", native.astype(native.dtype.newbyteorder(">")))  # big-endian
    job = write_job(model={"path": str(vae)}, shot={"frame_end": 3},
                    source={"path": "npy/frame_{frame:04d}.npy"})
    code, _out, err = cli("run", str(job), "--device", "cpu", "-q")
    assert code == 0, err
    for frame, latents in ((2, torch.from_numpy(np.load(job_dir / "npy" / "frame_0002.npy"))),
                           (3, torch.from_numpy(native))):
        written = read_png(job_dir / "out" / "test" / f"test.000{frame}.png")
        diff = np.abs(written.astype(int) - expected_frame(vae, latents).astype(int))
        assert diff.max() <= 1


def test_noise_source_is_deterministic_and_a_frame_alone_matches(
        cli: Callable[..., tuple], write_job: Callable[..., Path], job_dir: Path) -> None:
    whole = write_job("whole.toml", source={"kind": "noise"}, output={"root": str(job_dir / "a")})
    again = write_job("again.toml", source={"kind": "noise"}, output={"root": str(job_dir / "b")})
    alone = write_job("alone.toml", source={"kind": "noise"}, shot={"frame_start": 4, "frame_end": 4},
                      output={"root": str(job_dir / "c")})
    for job in (whole, again, alone):
        code, _out, err = cli("run", str(job), "--device", "cpu", "-q")
        assert code == 0, err
    frame4 = "test/test.0004.png"
    assert (job_dir / "a" / frame4).read_bytes() == (job_dir / "b" / frame4).read_bytes()
    assert (job_dir / "a" / frame4).read_bytes() == (job_dir / "c" / frame4).read_bytes()
    assert (job_dir / "a" / frame4).read_bytes() != (job_dir / "a" / "test/test.0005.png").read_bytes()


def test_dry_run_prints_the_plan_and_writes_nothing(cli: Callable[..., tuple],
                                                    write_job: Callable[..., Path], job_dir: Path) -> None:
    code, out, err = cli("run", str(write_job()), "--device", "cpu", "--dry-run")
    assert code == 0, err
    assert "frames 1-6 (6)" in out
    assert "decode: whole frames, layer by layer" in out and "GiB modelled within 8.00 GiB" in out
    assert "test/test.0001.png .. test/test.0006.png" in out
    assert "video: test.mp4, review (libx264, yuv420p, crf 18)" in out
    assert not (job_dir / "out").exists()


def test_resume_renders_only_what_is_missing_or_damaged(
        cli: Callable[..., tuple], write_job: Callable[..., Path], job_dir: Path) -> None:
    job = str(write_job())
    root = job_dir / "out"
    assert cli("run", job, "--device", "cpu", "-q")[0] == 0
    first = {p: p.read_bytes() for p in root.rglob("*.png")}

    code, out, _ = cli("run", job, "--device", "cpu", "--resume", "-q")
    assert code == 0 and "nothing to render" in out

    (root / "test" / "test.0003.png").unlink()
    damaged = root / "test" / "test.0005.png"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    (root / "test.mp4").unlink()
    code, out, err = cli("run", job, "--device", "cpu", "--resume", "-q")
    assert code == 0, err
    assert "rendered 2 frame(s)" in out and "4 frame(s) already finished" in out
    assert {p: p.read_bytes() for p in root.rglob("*.png")} == first
    assert read_video_info(root / "test.mp4") == (6, 32, 24)  # skipped frames read back
    assert cli("verify", str(root))[0] == 0


def test_verify_reports_mismatch_and_missing(cli: Callable[..., tuple], write_job: Callable[..., Path],
                                             job_dir: Path) -> None:
    root = job_dir / "out"
    assert cli("run", str(write_job()), "--device", "cpu", "-q")[0] == 0
    code, out, _ = cli("verify", str(root))
    assert code == 0 and "ok: 7 output(s)" in out
    frame = root / "test" / "test.0002.png"
    frame.write_bytes(frame.read_bytes().replace(b"IDAT", b"IDAU", 1))
    (root / "test" / "test.0004.png").unlink()
    code, out, err = cli("verify", str(root))
    assert code == 1
    assert "test/test.0002.png: content hash differs" in out
    assert "test/test.0004.png: missing" in out
    assert "2 output(s) do not match" in err


def test_changed_job_is_not_resumed_from_stale_frames(
        cli: Callable[..., tuple], write_job: Callable[..., Path], job_dir: Path) -> None:
    assert cli("run", str(write_job(seed=1, source={"kind": "noise"})), "--device", "cpu", "-q")[0] == 0
    code, out, _ = cli("run", str(write_job(seed=2, source={"kind": "noise"})), "--device", "cpu",
                       "--resume", "-q")
    assert code == 0 and "rendered 6 frame(s)" in out


SECRET = "s3cret-studio-key-7f2a"


def test_watermark_is_found_in_marked_frames_only(cli: Callable[..., tuple], write_job: Callable[..., Path],
                                                  job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key comes from an environment variable; it is needed to find the mark and
    appears nowhere: not in the output, the manifest, the logs or any file written."""
    monkeypatch.setenv("STUDIO_WM_KEY", SECRET)
    write_latents(job_dir / "big", range(1, 3), (4, 96, 128), smooth=True)
    marked = write_job("marked.toml", shot={"frame_end": 2, "width": 256, "height": 192},
                       source={"path": "big/frame_{frame:04d}.safetensors"},
                       watermark={"enabled": True, "payload": "ACME42", "key_env": "STUDIO_WM_KEY"},
                       output={"root": str(job_dir / "marked"), "formats": ["png", "mp4"]})
    plain = write_job("plain.toml", shot={"frame_end": 2, "width": 256, "height": 192},
                      source={"path": "big/frame_{frame:04d}.safetensors"},
                      output={"root": str(job_dir / "plain"), "formats": ["png"]})
    code, run_out, run_err = cli("run", str(marked), "--device", "cpu")
    assert code == 0, run_err
    assert cli("run", str(plain), "--device", "cpu", "-q")[0] == 0
    marked_png = str(job_dir / "marked" / "test" / "test.0001.png")
    plain_png = str(job_dir / "plain" / "test" / "test.0001.png")
    code, out, _ = cli("watermark", "verify", marked_png, "--key-env", "STUDIO_WM_KEY")
    assert code == 0 and "payload 'ACME42'" in out and "p = " in out
    code, out, _ = cli("watermark", "verify", plain_png, "--key-env", "STUDIO_WM_KEY")
    assert code == 1 and "no watermark" in out
    code, out, _ = cli("watermark", "verify", marked_png, "--key", "other-key")
    assert code == 1 and "ACME42" not in out
    difference = read_png(Path(marked_png)).astype(float) - read_png(Path(plain_png)).astype(float)
    assert 10 * np.log10(255**2 / np.mean(difference**2)) >= 42, "the mark must stay invisible"
    everything = run_out + run_err + out + marked.read_text()
    for path in (job_dir / "marked").rglob("*"):
        if path.is_file() and path.suffix not in (".png", ".mp4"):
            everything += path.read_text(errors="replace")
    assert "STUDIO_WM_KEY" in marked.read_text() and SECRET not in everything


def test_a_failing_stage_names_stage_and_frame_and_keeps_finished_frames(
        cli: Callable[..., tuple], write_job: Callable[..., Path], job_dir: Path) -> None:
    write_latents(job_dir / "npy", range(1, 7), (4, 12, 16), suffix=".npy")
    broken = job_dir / "npy" / "frame_0005.npy"
    broken.write_bytes(broken.read_bytes()[:-64])  # header intact, data cut short
    job = write_job(source={"path": "npy/frame_{frame:04d}.npy"}, output={"formats": ["png"]},
                    tuning={"channel_depth": 0, "writer_threads": 1})
    code, _out, err = cli("run", str(job), "--device", "cpu", "-q")
    assert code == 1
    assert "stage 'source' on frame 5 failed" in err and "--resume" in err
    assert "Traceback" not in err
    root = job_dir / "out"
    assert not list(root.rglob("*.part"))
    assert cli("verify", str(root))[0] == 0
    assert {r["frame"] for r in manifest(root)} <= {1, 2, 3, 4}


def test_latent_paths_name_the_shot_and_job_folders_may_hold_braces(
        cli: Callable[..., tuple], tmp_path: Path, kl_vae: Path) -> None:
    """`{shot}` in source.path is the shot's name (it was filled with ""), and a job in a
    folder whose name has braces reads its latents from there (they were taken for
    placeholders)."""
    from helpers import base_job, job_toml

    folder = tmp_path / "take{2}"
    write_latents(folder / "hero_latents", range(1, 3), (4, 12, 16))
    job = base_job(kl_vae, shot={"name": "hero", "frame_end": 2},
                   source={"kind": "latents", "path": "{shot}_latents/frame_{frame:04d}.safetensors"},
                   output={"root": str(tmp_path / "out"), "formats": ["png"]})
    (folder / "job.toml").write_text(job_toml(job))
    code, _out, err = cli("run", str(folder / "job.toml"), "--device", "cpu", "-q")
    assert code == 0, err
    for frame in (1, 2):
        latents = load_file(folder / "hero_latents" / f"frame_{frame:04d}.safetensors")["latents"]
        written = read_png(tmp_path / "out" / "hero" / f"hero.{frame:04d}.png")
        assert np.abs(written.astype(int) - expected_frame(kl_vae, latents).astype(int)).max() <= 1


def test_progress_is_a_line_when_stderr_is_not_a_terminal(write_job: Callable[..., Path]) -> None:
    """A log file, CI or a farm gets progress lines (frames, rate, time left), not a
    bare shot name."""
    from helpers import render

    out = render("run", str(write_job(output={"formats": ["png"]})), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "test: 6/6 frames," in out.stderr and "frames/s" in out.stderr and "left" in out.stderr, out.stderr
