"""Inputs that used to end in a Python traceback (issue 15, item 10): each now gives one
line naming the field, the value and what is allowed, exit status 2 (bad input; 1 where
that is the command's decision: an unreachable queue, a failed verify), and writes
nothing. Every case runs the real `render` command in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import render


def one_line(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The CLI's answer: exit `code`, one `error:` line on stderr naming every needle, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got: {result.stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def listing(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.fixture
def rejected(job_dir: Path) -> Callable[..., str]:
    """rejected(job_file, *needles, args=(...)): `render run` refuses it as bad input and
    leaves job_dir as it was (no output root, no file)."""
    def check(job: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
        before = listing(job_dir)
        line = one_line(render("run", str(job), "--device", "cpu", "--quiet", *args), *needles)
        assert not (job_dir / "out").exists(), "a refused job made its output root"
        assert listing(job_dir) == before
        return line
    return check


def vae_with(folder: Path, source: Path, field: str, raw_json: str) -> Path:
    """A copy of the VAE folder `source` whose config.json has `field` set to `raw_json`
    (JSON text as written, e.g. Infinity, which json.dumps would not write)."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = "@@VALUE@@"
    (folder / "config.json").write_text(json.dumps(config).replace('"@@VALUE@@"', raw_json))
    return folder


# 1. A model's config.json with Infinity or [] where numbers belong, or huge dimensions:
# refused when the job is planned (so --dry-run and submit refuse it too), naming the field.
@pytest.mark.parametrize(("field", "raw", "shown"), [
    ("scaling_factor", "Infinity", "= inf"),     # rendered (the latents divided by inf: zeros)
    ("latent_channels", "Infinity", "= inf"),    # OverflowError: cannot convert float infinity to integer
    ("block_out_channels", "[]", "= []"),        # "config.json lacks a usable max() arg is an empty sequence"
    ("layers_per_block", "[]", "= []"),          # TypeError inside diffusers
    ("block_out_channels", "[1000000000, 1000000000]", "[1000000000, 1000000000]"),  # a 108 GB allocation
])
def test_model_config_with_unusable_numbers(rejected: Callable[..., str], write_job: Callable[..., Path],
                                            job_dir: Path, kl_vae: Path, field: str, raw: str, shown: str) -> None:
    vae = vae_with(job_dir / "vae", kl_vae, field, raw)
    line = rejected(write_job(model={"path": str(vae)}), f"{field} in {vae / 'config.json'}", shown, "expected")
    assert "integer" in line or "number" in line


def test_model_config_larger_than_its_weights_is_refused_before_loading(
        rejected: Callable[..., str], write_job: Callable[..., Path], job_dir: Path, kl_vae: Path) -> None:
    """Dimensions within the config checks, but describing billions of weights the
    safetensors file does not hold: refused at load, before diffusers allocates them."""
    vae = vae_with(job_dir / "vae", kl_vae, "block_out_channels", "[4096, 4096]")
    rejected(write_job(model={"path": str(vae)}), f"model.path = '{vae}'", "config.json describes",
             "15,223", "save_pretrained")


# 2. Frame patterns whose format spec is not a whole number.
@pytest.mark.parametrize("spec", ["c", "e", "%", ",", "x"])
def test_frame_pattern_with_a_format_that_is_not_a_whole_number(rejected: Callable[..., str],
                                                                write_job: Callable[..., Path], spec: str) -> None:
    """{frame:c} made frame 0 a NUL (ValueError: embedded null byte) and frame 2000000 an
    OverflowError; {frame:e} wrote test.1.000000e+00.png."""
    pattern = f"{{shot}}.{{frame:{spec}}}"
    job = write_job(shot={"frame_start": 0, "frame_end": 1}, source={"kind": "noise"},
                    output={"frames": pattern, "formats": ["png"]})
    rejected(job, f"output.frames = '{pattern}'", f"{{frame:{spec}}} is not a whole-number format", "{frame:04d}")


def test_source_pattern_with_frame_as_a_character(rejected: Callable[..., str], write_job: Callable[..., Path]) -> None:
    rejected(write_job(source={"path": "latents/frame_{frame:c}.safetensors"}), "source.path", "{frame:c}")


# 3. nan and inf read from TOML as floats.
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1" + "0" * 400])
def test_vram_budget_that_is_not_a_finite_number(rejected: Callable[..., str], job_dir: Path,
                                                 write_job: Callable[..., Path], value: str) -> None:
    job = write_job()
    job.write_text(job.read_text().replace("[tuning]\n", f"[tuning]\nvram_budget_gib = {value}\n"))
    rejected(job, f"tuning.vram_budget_gib = {value[:20]}", "expected a finite number")


# 4. TOML nested thousands deep: RecursionError in tomllib, or in repr() of what it read.
@pytest.mark.parametrize(("text", "shown"), [
    ("a = " + "[" * 5000 + "]" * 5000, "too deep to read"),
    ("a = " + "{b = " * 5000 + "}" * 5000, "too deep to read"),
    ("a = " + "[" * 100 + "]" * 100, "nested 101 levels deep"),
    ("x." + "a." * 5000 + "b = 1", "nested 5002 levels deep"),
])
def test_toml_nested_thousands_deep(rejected: Callable[..., str], write_job: Callable[..., Path], job_dir: Path,
                                    text: str, shown: str) -> None:
    job = write_job()
    job.write_text(text + "\n" + job.read_text())
    rejected(job, f"job file = '{job}'", shown, "at most 32")


def test_toml_integer_of_thousands_of_digits(rejected: Callable[..., str], write_job: Callable[..., Path]) -> None:
    job = write_job()
    job.write_text(job.read_text().replace("seed = 7", "seed = 1" + "0" * 5000))
    rejected(job, f"job file = '{job}'", "invalid TOML", "4300 digits")


# 5. An unreachable queue: exit 1 (the farm's decision for a queue that may come back), one line.
@pytest.mark.parametrize("command", ["status", "submit"])
def test_unreachable_queue_is_one_line(write_job: Callable[..., Path], command: str) -> None:
    args = [command, "--queue", "redis://127.0.0.1:1/0"]
    if command == "submit":
        args.insert(1, str(write_job()))
    one_line(render(*args), "the queue cannot be reached", "redis://127.0.0.1:1/0", "Connection refused", code=1)


# 6. A Redis database the server does not have (redis.exceptions.ResponseError: DB index
# is out of range), or a database that is not a number (redis-py quietly used 0).
@pytest.mark.parametrize(("command", "database", "needle"), [
    ("status", "99999", "the server has no database 99999"),
    ("status", "-1", "the server has no database -1"),
    ("status", "0?db=99999", "the server has no database 99999"),
    ("status", "farm", "database 'farm' is not a number"),
    ("submit", "99999", "the server has no database 99999"),
    ("worker", "99999", "the server has no database 99999"),
])
def test_redis_database_out_of_range(redis_server: int, write_job: Callable[..., Path], job_dir: Path,
                                     command: str, database: str, needle: str) -> None:
    url = f"redis://127.0.0.1:{redis_server}/{database}"
    args = {"status": ["status"], "submit": ["submit", str(write_job())],
            "worker": ["worker", "--output-root", str(job_dir / "out"), "--model-root", str(job_dir.parent),
                       "--exit-when-idle", "--device", "cpu"]}[command]
    before = listing(job_dir)
    one_line(render(*args, "--queue", url, timeout=60), f"--queue = '{url}'", needle)
    assert listing(job_dir) == before


# 7. Frame numbers beyond 64 bits: OverflowError: Python int too large to convert to SQLite
# INTEGER (and silently rounded in Redis, whose scripts count in doubles).
@pytest.mark.parametrize("field", ["frame_start", "frame_end"])
def test_submit_with_a_frame_number_beyond_64_bits(write_job: Callable[..., Path], job_dir: Path, field: str) -> None:
    start, end = (2**64, 2**64 + 1) if field == "frame_start" else (1, 2**64)
    job = write_job(shot={"frame_start": start, "frame_end": end}, source={"kind": "noise"})
    before = listing(job_dir)
    one_line(render("submit", str(job), "--queue", f"sqlite://{job_dir / 'farm.db'}"),
             f"shot.{field} = {2**64}", "expected a frame number from 0 to 2147483647")
    assert listing(job_dir) == before, "nothing is queued (no database file made)"


# 8. `render verify` on manifest records whose path can name no file: exit 1 (a verify that
# finds problems), one MISMATCH line each, one error line, no traceback.
@pytest.mark.parametrize(("path", "problem"), [
    ("a\u0000b.png", "not a manifest record"),          # a NUL in a file name
    ("a\ud800b.png", "not a manifest record"),          # UnicodeEncodeError: surrogates not allowed
    ("a" * 300 + ".png", "cannot be checked: File name too long"),   # OSError: [Errno 36]
    ("loop/a.png", "cannot be checked"),                # RuntimeError (OSError from 3.13): symlink loop
])
def test_verify_record_whose_path_names_no_file(tmp_path: Path, path: str, problem: str) -> None:
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"path": path, "size": 1, "sha256": "0" * 64}) + "\n")
    result = render("verify", str(tmp_path))
    one_line(result, "1 output(s) do not match the manifest", code=1)
    [mismatch] = [line for line in result.stdout.splitlines() if line.startswith("MISMATCH ")]
    assert problem in mismatch, result.stdout


# 9. A frame too large for the machine: it passed --dry-run, then died allocating
# (RuntimeError: DefaultCPUAllocator: can't allocate memory, or the kernel's OOM killer).
# Now the plan models the run's host memory and refuses it, with the figures.
def huge_job(write_job: Callable[..., Path], **tuning: object) -> Path:
    return write_job(shot={"width": 16384, "height": 16384, "frame_end": 2}, source={"kind": "noise"},
                     output={"formats": ["png16"]}, tuning={"writer_threads": 2, **tuning})


def test_a_frame_too_large_for_host_memory_is_refused_at_plan_time(rejected: Callable[..., str],
                                                                     write_job: Callable[..., Path]) -> None:
    from pipeline.decode.budget import host_memory_available

    available = host_memory_available()
    if available is None or available > 200 * 2**30:
        pytest.skip("this machine has the memory for a 16384x16384 run with 64 ring buffers")
    job = huge_job(write_job, pinned_buffers=64, writer_threads=64)  # ~210 GiB: 64 buffers of 1.5 GiB, 64 writers
    line = rejected(job, "shot.width x shot.height = '16384x16384'", "GiB of host memory", "frame ring 96.0 GiB",
                    "this machine has available", "tuning.pinned_buffers", args=("--dry-run",))
    assert "decode" in line, "on the CPU the decode's memory is host memory too"


def test_host_memory_figures(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                             write_job: Callable[..., Path], job_dir: Path) -> None:
    """The figures, against a machine with 16 GiB available (in-process, to fix the limit):
    a 16384x16384 16-bit frame is 1.5 GiB; the tiny VAE's tiled decode keeps 11 GiB of
    whole-frame features and canvas (float32)."""
    import sys

    import pipeline.plan
    from pipeline.cli import main

    monkeypatch.setattr(pipeline.plan, "host_memory_available", lambda: 16 * 2**30)
    monkeypatch.setattr(sys, "argv", ["render", "run", str(huge_job(write_job)), "--device", "cpu", "--dry-run"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == ("error: shot.width x shot.height = '16384x16384': a run needs ~27.5 GiB of host memory (decode "
                    "11.0 GiB, frame ring 6.0 GiB, frames in flight 7.5 GiB, latents 3.0 GiB; modelled), more than "
                    "the 16.0 GiB this machine has available; lower tuning.vram_budget_gib or "
                    "tuning.whole_up_blocks (the decode), tuning.pinned_buffers, tuning.channel_depth or "
                    "tuning.writer_threads, or render a smaller frame")
    assert not (job_dir / "out").exists()
