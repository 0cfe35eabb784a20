"""`render watermark verify` (issue 18): every file kind a person may hold (PNG 8/16-bit,
EXR, JPEG, MP4/MOV/MKV), text and --json verdicts, exit 1 without the mark, exit 2 with
one line for unreadable files and bad payloads; the key read from a file or a variable
and never printed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import render, render_bounded
from PIL import Image
from test_bad_input import assert_rejected
from test_watermark_unit import KEY, PAYLOAD, encode_clip, marked, picture

from pipeline.files.exr import encode_exr
from pipeline.files.png import encode_png

SECRET = "wm-secret-0c41b7"


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The CLI's main() in-process: (exit status, stdout, stderr); 0 when it returns."""
    from pipeline.cli import main

    monkeypatch.setattr(sys, "argv", ["render", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return marked(picture(5, 360, 640), SECRET, PAYLOAD)


@pytest.fixture(scope="module")
def files(frame: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("marked")
    out = {"png": root / "f.png", "png16": root / "f16.png", "exr": root / "f.exr", "jpeg": root / "f.jpg"}
    out["png"].write_bytes(bytes(encode_png(frame, 1)))
    out["png16"].write_bytes(bytes(encode_png(frame.astype(np.uint16) * 257, 1)))
    out["exr"].write_bytes(encode_exr(frame.astype(np.float32) / 255, "srgb"))
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=90)
    out["jpeg"].write_bytes(buffer.getvalue())
    for suffix in ("mp4", "mov", "mkv"):
        out[suffix] = encode_clip([frame] * 4, root / f"clip.{suffix}", "libx264", 18)
    plain = picture(5, 360, 640)
    out["plain"] = root / "plain.png"
    out["plain"].write_bytes(bytes(encode_png(plain, 1)))
    return out


def test_every_kind_of_file_is_read(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WM_KEY", SECRET)
    kinds = ["png", "png16", "exr", "jpeg", "mp4", "mov", "mkv"]
    code, out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key-env", "WM_KEY", "--json",
                              *[str(files[kind]) for kind in kinds])
    assert code == 0, err
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(files[kind]) for kind in kinds]
    for result in results:
        assert result["found"] and result["payload"] == PAYLOAD and result["p_value"] <= 1e-6, result
    assert [r["frames"] for r in results] == [1, 1, 1, 1, 4, 4, 4]
    assert SECRET not in out + err


def test_suffixes_are_matched_whatever_their_case(frame: np.ndarray, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """An .EXR went to the PNG reader (FFmpeg), which shows a linear EXR's values as they
    are stored, not converted for display: a different picture, a different verdict."""
    lower, upper = tmp_path / "f.exr", tmp_path / "F.EXR"
    lower.write_bytes(encode_exr(frame.astype(np.float32) / 255, "linear"))
    upper.write_bytes(lower.read_bytes())
    monkeypatch.setenv("WM_KEY", SECRET)
    code, out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key-env", "WM_KEY", "--json",
                              str(lower), str(upper))
    assert code == 0, err
    as_lower, as_upper = json.loads(out)
    assert as_lower["payload"] == PAYLOAD
    assert {k: v for k, v in as_upper.items() if k != "file"} == {k: v for k, v in as_lower.items() if k != "file"}


def test_text_verdicts_and_exit_status(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET + "\n")
    code, out, _ = run_main(monkeypatch, capsys, "watermark", "verify", "--key-file", str(key_file),
                            str(files["jpeg"]), str(files["plain"]))
    assert code == 1
    found, missing = out.strip().splitlines()
    assert f"watermark found, payload {PAYLOAD!r}" in found and "p = " in found
    assert "no watermark" in missing
    code, out, _ = run_main(monkeypatch, capsys, "watermark", "verify", "--key-file", str(key_file),
                            "--expect", "OTHER", str(files["png"]))
    assert code == 1 and "not 'OTHER'" in out
    code, out, _ = run_main(monkeypatch, capsys, "watermark", "verify", "--key", KEY, str(files["png"]))
    assert code == 1 and PAYLOAD not in out   # a wrong key finds nothing


@pytest.mark.parametrize("content", [b"not a picture at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b""])
@pytest.mark.parametrize("suffix", [".png", ".mp4", ".jpg"])
def test_unreadable_file_is_one_line(content: bytes, suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(content)
    code, _out, err = run_main(monkeypatch, capsys, "watermark", "verify", str(path))
    assert_rejected(code, err, "FILE", str(path), "cannot be read")


def test_missing_file_and_bad_options_are_one_line(files: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    code, _out, err = run_main(monkeypatch, capsys, "watermark", "verify", str(tmp_path / "nope.png"))
    assert_rejected(code, err, "FILE", "no such file")
    code, _out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--expect", "much too long",
                               str(files["png"]))
    assert_rejected(code, err, "--expect", "at most 8")
    code, _out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key", SECRET, "--key-env", "X",
                               str(files["png"]))
    assert_rejected(code, err, "--key-env", "only one")
    assert SECRET not in err
    monkeypatch.delenv("NO_SUCH_WM_KEY", raising=False)
    code, _out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key-env", "NO_SUCH_WM_KEY",
                               str(files["png"]))
    assert_rejected(code, err, "--key-env", "NO_SUCH_WM_KEY")


def test_a_key_file_that_is_no_regular_file_or_too_big_is_refused_unread(files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """A FIFO blocked the read forever and /dev/zero filled memory (a subprocess held to
    4 GiB and 60 s fails here instead); a directory and an oversized file are refused too."""
    import os

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.key"
    big.write_text("k" * (64 * 1024 + 1))
    cases = [(fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
             (tmp_path, "is a directory"), (big, "over 64 KiB")]
    for path, why in cases:
        result = render_bounded("watermark", "verify", "--key-file", str(path), str(files["png"]))
        assert_rejected(result.returncode, result.stderr, "--key-file", str(path), why)
        assert result.stdout == ""


def test_every_file_gets_its_verdict_when_some_cannot_be_read(files: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """An unreadable file stopped the check at it: the files after it got no verdict and
    --json printed nothing. Now each file has its line (or JSON object), then exit 2."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    given = [files["png"], tmp_path / "nope.png", broken, tmp_path, files["plain"]]
    monkeypatch.setenv("WM_KEY", SECRET)
    code, out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key-env", "WM_KEY",
                              *map(str, given))
    assert_rejected(code, err, "3 of 5 file(s) cannot be read", "1 of 5 file(s) carry no watermark")
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(path) for path in given]
    assert "watermark found" in lines[0] and "no watermark" in lines[4]
    assert lines[1].endswith("no such file") and "cannot be read as an image" in lines[2]
    assert lines[3].endswith("is a directory, not a file")   # was "no such file"

    code, out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key-env", "WM_KEY", "--json",
                              *map(str, given))
    assert_rejected(code, err, "3 of 5 file(s) cannot be read")
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(path) for path in given]
    assert [r["found"] for r in results] == [True, False, False, False, False]
    assert ["error" in r for r in results] == [False, True, True, True, False]
    assert SECRET not in out + err


def test_an_empty_key_is_refused_not_replaced_by_the_default(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_main(monkeypatch, capsys, "watermark", "verify", "--key", "", str(files["png"]))
    assert_rejected(code, err, "--key", "empty")
    assert out == ""


def test_non_utf8_payload_is_one_line(files: dict[str, Path]) -> None:
    """A byte string that is not UTF-8, as a shell passes it (subprocess: argv bytes)."""
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "watermark", "verify", "--expect", b"\xff\xfe",
                             str(files["png"])], capture_output=True, text=True, timeout=120,
                            env=render_env())
    assert_rejected(result.returncode, result.stderr, "--expect", "UTF-8")


def render_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def test_a_clip_is_read_as_one(tmp_path: Path) -> None:
    """A 720p panning clip at CRF 30, read as a clip: found, over all 12 frames, although
    its later P-frames alone lose the payload. (Frames are weighted equally: the I-frame
    alone can score higher than the whole clip; this checks the clip verdict, not a gain.)"""
    from pipeline.files.pictures import read_pictures
    from pipeline.watermark.detect import detect, detect_frames

    wide = picture(7, 720, 1280 + 24)
    frames = [marked(np.ascontiguousarray(wide[:, 2 * i:2 * i + 1280])) for i in range(12)]
    path = encode_clip(frames, tmp_path / "clip.mp4", "libx264", 30)
    decoded = list(read_pictures(path, 100))
    together = detect_frames(decoded, KEY)
    assert together.found and together.payload == PAYLOAD and together.frames == 12
    assert not any(detect(one, KEY).found for one in decoded[7:10]), "these P-frames alone lose the payload"


def test_subprocess_prints_no_traceback_and_json(files: dict[str, Path]) -> None:
    result = render("watermark", "verify", "--key", SECRET, "--json", str(files["png"]))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["payload"] == PAYLOAD
