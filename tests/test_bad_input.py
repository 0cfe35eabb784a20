"""Every bad input: one line naming the field and value, exit status 2, no traceback,
nothing written. Most cases call the CLI's `main()` in-process (fast); one goes
through a real subprocess to prove the same holds for the installed command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import base_job, job_toml, make_kl_vae, render, write_latents


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
             ) -> tuple[int, str, str]:
    from pipeline.cli import main

    monkeypatch.setattr(sys, "argv", ["render", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_rejected(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture
def reject(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, job_dir: Path
           ) -> Callable[..., None]:
    """reject(job_file, *needles, extra=[...]): render run fails as bad input, writes nothing."""
    def check(job_file: Path, *needles: str, extra: tuple[str, ...] = ()) -> None:
        before = sorted(p for p in job_dir.rglob("*"))
        code, _out, err = run_main(monkeypatch, capsys, "run", str(job_file), "--device", "cpu", *extra)
        assert_rejected(code, err, *needles)
        assert not (job_dir / "out").exists(), "a rejected job wrote its output root"
        assert sorted(p for p in job_dir.rglob("*")) == before
    return check


def test_toml_syntax_error_subprocess(job_dir: Path) -> None:
    job = job_dir / "broken.toml"
    job.write_text('[shot]\nname = "x\n')
    result = render("run", str(job), "--device", "cpu")
    assert_rejected(result.returncode, result.stderr, "job file", "invalid TOML", "line 2")
    assert not (job_dir / "out").exists()


def test_missing_job_file(reject: Callable[..., None], job_dir: Path) -> None:
    reject(job_dir / "nope.toml", "job file", "no such file")


def test_a_job_file_that_is_no_regular_file_is_refused_unread(reject: Callable[..., None], job_dir: Path) -> None:
    fifo = job_dir / "shot.toml"
    os.mkfifo(fifo)        # reading it would wait forever for a writer
    reject(fifo, "job file", "not a regular file")
    reject(Path("/dev/zero"), "job file", "not a regular file")   # reading it would fill memory
    reject(job_dir, "job file", "is a directory")


def test_unknown_field(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    job = write_job(shot={"framestart": 1})
    reject(job, "shot.framestart", "unknown field; did you mean 'frame_start'?")


def test_a_misspelt_field_is_named_not_reported_missing(reject: Callable[..., None], job_dir: Path,
                                                        kl_vae: Path) -> None:
    job = base_job(kl_vae)
    job["shot"]["fsp"] = job["shot"].pop("fps")
    path = job_dir / "typo.toml"
    path.write_text(job_toml(job))
    reject(path, "shot.fsp = 24", "unknown field; did you mean 'fps'?")


def test_unknown_table(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(outputs={"root": "x"}), "outputs", "unknown field")


def test_missing_field(reject: Callable[..., None], write_job: Callable[..., Path],
                       job_dir: Path, kl_vae: Path) -> None:
    job = write_job()
    text = job.read_text().replace("frame_end = 6\n", "")
    job.write_text(text)
    reject(job, "shot.frame_end is missing")


def test_wrong_type(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"fps": "24"}), "shot.fps = '24'", "integer")


def test_bool_is_not_an_integer(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"width": True}), "shot.width = True", "integer")


def test_reversed_frame_range(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"frame_start": 6, "frame_end": 1}), "shot.frame_end = 1", ">= shot.frame_start")


def test_negative_frame(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"frame_start": -1}), "shot.frame_start = -1", ">= 0")


def test_resolution_the_vae_cannot_make(reject: Callable[..., None],
                                        write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"width": 33}, output={"formats": ["png"]}), "shot.width = 33",
           "multiples of 2", "32 or 34")


def test_missing_model_folder(reject: Callable[..., None], write_job: Callable[..., Path],
                              job_dir: Path) -> None:
    reject(write_job(model={"path": str(job_dir / "no_model")}), "model.path", "no such folder")


def test_model_folder_of_another_class(reject: Callable[..., None], write_job: Callable[..., Path],
                                       job_dir: Path) -> None:
    folder = job_dir / "unet"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    reject(write_job(model={"path": str(folder)}), "model.path", "UNet2DConditionModel",
           "AutoencoderKL")


def test_pickled_weights_refused(reject: Callable[..., None], write_job: Callable[..., Path],
                                 job_dir: Path, kl_vae: Path) -> None:
    folder = job_dir / "bin_vae"
    folder.mkdir()
    (folder / "config.json").write_text((kl_vae / "config.json").read_text())
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    reject(write_job(model={"path": str(folder)}), "model.path", "safetensors")


def test_latents_with_wrong_channel_count(reject: Callable[..., None],
                                          write_job: Callable[..., Path], job_dir: Path) -> None:
    write_latents(job_dir / "latents16", range(1, 7), (16, 12, 16))
    job = write_job(source={"path": "latents16/frame_{frame:04d}.safetensors"})
    reject(job, "source.path", "(16, 12, 16)", "expected (4, 12, 16)")


def test_latents_with_wrong_shape(reject: Callable[..., None], write_job: Callable[..., Path],
                                  job_dir: Path) -> None:
    write_latents(job_dir / "small", range(1, 7), (4, 12, 12))
    reject(write_job(source={"path": "small/frame_{frame:04d}.safetensors"}), "source.path",
           "frame 1", "(4, 12, 12)")


def test_missing_latent_file_for_one_frame(reject: Callable[..., None],
                                           write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"frame_end": 9}), "source.path", "frame_0007", "no latent file for frame 7")


def test_pickled_npy_latents_refused(reject: Callable[..., None], write_job: Callable[..., Path],
                                     job_dir: Path) -> None:
    folder = job_dir / "objects"
    folder.mkdir()
    for frame in range(1, 7):
        np.save(folder / f"frame_{frame:04d}.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    reject(write_job(source={"path": "objects/frame_{frame:04d}.npy"}), "source.path", "float")


def test_long_double_npy_latents_refused_at_plan_time(reject: Callable[..., None],
                                                      write_job: Callable[..., Path], job_dir: Path) -> None:
    """Before: accepted by the plan, then a TypeError in the source stage after the output
    folders were made."""
    folder = job_dir / "long"
    folder.mkdir()
    for frame in range(1, 7):
        np.save(folder / f"frame_{frame:04d}.npy", np.zeros((4, 12, 16), dtype=np.longdouble))
    reject(write_job(source={"path": "long/frame_{frame:04d}.npy"}), "source.path", "float128",
           "expected a float16, float32 or float64 array")


def test_output_root_not_writable(reject: Callable[..., None], write_job: Callable[..., Path],
                                  job_dir: Path) -> None:
    blocker = job_dir / "a_file"
    blocker.write_text("x")
    reject(write_job(output={"root": str(blocker / "out")}), "output.root", "is a file")


def test_mp4_with_odd_size(reject: Callable[..., None], write_job: Callable[..., Path],
                           job_dir: Path) -> None:
    vae = make_kl_vae(job_dir / "scale1", blocks=1)
    write_latents(job_dir / "odd", range(1, 7), (4, 25, 32))
    job = write_job(model={"path": str(vae)}, shot={"height": 25},
                    source={"path": "odd/frame_{frame:04d}.safetensors"})
    reject(job, "shot.height = 25", "even")


def test_pattern_with_attribute_access(reject: Callable[..., None],
                                       write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"frames": "{frame.__class__}"}), "output.frames",
           "{frame.__class__} is not allowed")


def test_output_pattern_leaving_root(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"frames": "../escape/{frame:04d}"}), "output.frames", "inside output.root")


def test_frames_pattern_without_frame(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"frames": "{shot}/still"}), "output.frames", "{frame}")


def test_frame_padding_wider_than_a_file_name_is_refused(reject: Callable[..., None],
                                                         write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"frames": "{shot}/f.{frame:99999999d}"}), "output.frames", "at most 32")


def test_shot_name_with_a_trailing_newline(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    job = write_job(shot={"name": "demo"})
    job.write_text(job.read_text().replace('name = "demo"', 'name = "demo\\n"'))   # a TOML escape
    reject(job, "shot.name", "letters, digits")


def test_nuke_and_ffmpeg_frame_patterns_are_read_as_frame_numbers(tmp_path: Path, kl_vae: Path) -> None:
    from pipeline.config.job import load_job
    from pipeline.config.patterns import fill

    for spelling in ("{shot}/{shot}.####", "{shot}/{shot}.%04d"):
        job = base_job(kl_vae, output={"root": str(tmp_path / "out"), "frames": spelling})
        path = tmp_path / "job.toml"
        path.write_text(job_toml(job))
        frames = load_job(path).output.frames
        assert fill(frames, shot="sh", frame=7) == "sh/sh.0007", spelling


def test_unknown_format(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"formats": ["png", "gif"]}), "output.formats", "png, png16, exr, mp4")


def test_shot_name_with_slash(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(shot={"name": "a/b"}), "shot.name = 'a/b'")


def test_unknown_preset(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(preset="fastest"), "preset = 'fastest'", "default")


def test_bad_tuning_override(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(tuning={"channel_depth": 9}), "tuning.channel_depth = 9", "0 to 4")


def test_two_frame_formats(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(output={"formats": ["png", "exr"]}), "output.formats", "at most one frame format")


def test_tile_overlap_not_below_tile_size(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(tuning={"decode": "tiles", "tile_size": 16, "tile_overlap": 16}),
           "tuning.tile_overlap = 16", "less than tuning.tile_size (16)")


def test_two_tiled_decodes_at_once(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(tuning={"decode": "tiles", "tiling": True}), "tuning.tiling", "exclude each other")


def test_bad_stream_priority(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(tuning={"compute_priority": "max"}), "tuning.compute_priority", "highest, lowest")


def test_unknown_tuning_field(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(tuning={"threads": 9}), "tuning.threads", "unknown field")


def test_watermark_payload_too_long(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(watermark={"enabled": True, "payload": "much too long"}),
           "watermark.payload", "8 bytes")


KEY_TEXT = "never-shown-key-91ab"


def test_watermark_key_sources_are_checked_and_never_shown(write_job: Callable[..., Path], job_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """key, key_env, key_file: at most one; a variable that is unset, a file that is
    missing or empty are named, never the key itself; nothing is written."""
    monkeypatch.setenv("WM_KEY_SET", KEY_TEXT)
    monkeypatch.delenv("WM_KEY_UNSET", raising=False)
    (job_dir / "empty.key").write_text("\n")
    cases = [({"key": KEY_TEXT, "key_env": "WM_KEY_SET"}, ("watermark.key_env", "only one of key, key_env")),
             ({"key_env": "WM_KEY_UNSET"}, ("watermark.key_env", "WM_KEY_UNSET", "no such environment variable")),
             ({"key_file": "missing.key"}, ("watermark.key_file", "missing.key", "cannot be read")),
             ({"key_file": "empty.key"}, ("watermark.key_file", "empty")),
             ({"key": KEY_TEXT * 300}, ("watermark.key", "over 4096")),
             ({"key": 7}, ("watermark.key", "non-empty string"))]
    for fields, needles in cases:
        job = write_job(watermark={"enabled": True, **fields})
        code, out, err = run_main(monkeypatch, capsys, "run", str(job), "--device", "cpu")
        assert_rejected(code, err, *needles)
        assert KEY_TEXT not in out + err
        assert not (job_dir / "out").exists()


def test_watermark_key_from_a_file_or_variable(write_job: Callable[..., Path], job_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config.job import load_job

    (job_dir / "studio.key").write_text(KEY_TEXT + "\n")
    job = load_job(write_job(watermark={"enabled": True, "key_file": "studio.key"}))
    assert job.watermark.key == KEY_TEXT and KEY_TEXT not in repr(job)
    monkeypatch.setenv("WM_KEY_SET", KEY_TEXT + "-env")
    assert load_job(write_job(watermark={"enabled": True, "key_env": "WM_KEY_SET"})).watermark.key == KEY_TEXT + "-env"
    monkeypatch.delenv("WM_KEY_UNSET", raising=False)
    assert not load_job(write_job(watermark={"enabled": False, "key_env": "WM_KEY_UNSET"})).watermark.enabled


def test_watermark_payload_not_utf8(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    job = write_job()
    job.write_bytes(job.read_bytes().replace(b'[watermark]', b'[watermark]\npayload = "\xff\xfe"'))
    reject(job, "job file", "cannot be read")


def test_cuda_requested_without_gpu(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    job = write_job()
    reject(job, "--device = 'cuda:0'", "no CUDA device", extra=("--device", "cuda:0"))


def test_bad_device_name(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    reject(write_job(), "--device = 'tpu'", extra=("--device", "tpu"))


def test_unknown_option(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, _out, err = run_main(monkeypatch, capsys, "run", "--frobnicate")
    assert_rejected(code, err, "--frobnicate")


def test_verify_on_a_folder_without_manifest(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _out, err = run_main(monkeypatch, capsys, "verify", str(tmp_path))
    assert_rejected(code, err, "OUTDIR", "manifest.jsonl")


def test_generation_source_needs_a_pipeline_folder(reject: Callable[..., None], write_job: Callable[..., Path],
                                                  kl_vae: Path) -> None:
    """A VAE folder is not a pipeline (more generation cases: tests/test_generate.py)."""
    job = write_job(source={"kind": "diffusers", "path": str(kl_vae), "prompt": "a cat", "steps": 2})
    reject(job, "source.path", "model_index.json")


def test_a_model_whose_weights_do_not_match_its_config(reject: Callable[..., None], write_job: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    """diffusers only warns and fills missing layers with random weights: refused."""
    from safetensors.torch import load_file, save_file

    vae = make_kl_vae(tmp_path / "broken_vae", seed=3)
    weights = next(vae.glob("*.safetensors"))
    tensors = load_file(str(weights))
    tensors.pop("decoder.conv_in.bias")
    tensors["decoder.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(weights))
    reject(write_job(model={"path": str(vae)}), "model.path", "do not match its config.json",
           "decoder.conv_in.bias", "decoder.extra.weight")


def test_non_finite_latents_fail_the_frame_and_publish_nothing_for_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, write_job: Callable[..., Path],
        job_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = job_dir / "latents" / "frame_0003.safetensors"
    latents = load_file(str(path))["latents"]
    latents[0, 0, 0] = float("nan")
    save_file({"latents": latents}, str(path))
    code, _out, err = run_main(monkeypatch, capsys, "run", str(write_job(output={"formats": ["png"]})),
                               "--device", "cpu", "-q")
    assert code == 1 and "Traceback" not in err
    assert "frame 3" in err and "NaN or infinite" in err, err
    assert not (job_dir / "out" / "test" / "test.0003.png").exists()


@pytest.mark.parametrize("fault", ["scaling_factor", "constant"])
def test_frames_that_are_not_pictures_fail_and_are_not_published(
        fault: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        write_job: Callable[..., Path], job_dir: Path, tmp_path: Path) -> None:
    """scaling_factor = 0 decodes to NaN; a decoder whose last convolution is zero, to
    one grey: both passed as frames before, watermark and all."""
    import json

    from safetensors.torch import load_file, save_file

    vae = make_kl_vae(tmp_path / "vae", seed=4)
    if fault == "scaling_factor":
        config = json.loads((vae / "config.json").read_text())
        config["scaling_factor"] = 0.0
        (vae / "config.json").write_text(json.dumps(config))
    else:
        weights = next(vae.glob("*.safetensors"))
        tensors = load_file(str(weights))
        tensors["decoder.conv_out.weight"].zero_()
        tensors["decoder.conv_out.bias"].zero_()
        save_file(tensors, str(weights))
    job = write_job(model={"path": str(vae)}, output={"formats": ["png"]}, watermark={"enabled": True})
    code, _out, err = run_main(monkeypatch, capsys, "run", str(job), "--device", "cpu", "-q")
    assert code == 1 and "Traceback" not in err
    assert ("NaN or infinite" if fault == "scaling_factor" else "one colour") in err, err
    assert not list((job_dir / "out").rglob("*.png"))


@pytest.mark.parametrize(("tuning", "needles"), [
    ({"decode_gpus": "two"}, ["tuning.decode_gpus = 'two'", 'an integer from 1 to 64 or "all"']),
    ({"decode_gpus": 0}, ["tuning.decode_gpus = 0", 'an integer from 1 to 64 or "all"']),
    ({"decode_gpus": 2, "decode": "tiles"}, ["tuning.decode_gpus = 2", 'excludes decode = "tiles"']),
    ({"decode_gpus": 2}, ["tuning.decode_gpus = 2", "needs GPUs", "this run is on the CPU"]),
    ({"decode_gpus": "all"}, ["tuning.decode_gpus = 'all'", "needs GPUs"]),
])
def test_bad_decode_gpus(reject: Callable[..., None], write_job: Callable[..., Path], tuning: dict,
                         needles: list[str]) -> None:
    reject(write_job(tuning=tuning), *needles)


def test_decode_gpus_refused_for_a_vae_it_cannot_split(reject: Callable[..., None], write_job: Callable[..., Path],
                                                       job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import make_tiny_vae

    monkeypatch.setenv("FRAMEFARM_DECODE_RANKS_ON_CPU", "1")   # past the CPU check, to the model's
    tiny = make_tiny_vae(job_dir / "tiny")
    write_latents(job_dir / "latents", range(1, 7), (4, 3, 4))
    reject(write_job(model={"path": str(tiny), "dtype": "float32"}, tuning={"decode_gpus": 2}),
           "tuning.decode_gpus = 2", "AutoencoderTiny decodes on one device")


@pytest.mark.gpu
def test_decode_gpus_beyond_the_visible_gpus(reject: Callable[..., None], write_job: Callable[..., Path]) -> None:
    visible = torch.cuda.device_count()
    reject(write_job(tuning={"decode_gpus": visible + 1}), f"tuning.decode_gpus = {visible + 1}",
           f"this machine shows {visible} GPU(s)", extra=("--device", "cuda"))
