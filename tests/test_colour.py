"""A job's [colour] transform: OpenColorIO's built-in config, baked into a 3D LUT applied
on the device before quantisation, checked against OCIO's own CPU processor; EXR frames
that say what they hold; names the config lacks refused in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import render

from pipeline.colour.lut import apply_lut
from pipeline.colour.ocio import CHROMATICITIES, bake, reference
from pipeline.config.job import Colour
from pipeline.files.exr import read_attributes, read_exr

SRGB = "sRGB Encoded Rec.709 (sRGB)"
# 65 points a side, trilinear: measured max 4.2e-4 over these targets (a 10-bit step is 9.8e-4)
LUT_TOLERANCE = 5e-4


@pytest.mark.parametrize("target", ["ACEScg", "Linear Rec.709 (sRGB)", "sRGB Encoded P3-D65", "ACEScct"])
def test_the_baked_lut_matches_ocios_cpu_processor(target: str) -> None:
    colour = Colour("ocio://default", SRGB, target)
    rgb = np.random.default_rng(0).random((3, 120, 160), dtype=np.float32)
    rgb[:, :8, :8], rgb[:, 8:16, :8] = 0, 1   # the lattice's corners exactly
    got = apply_lut(torch.from_numpy(rgb), torch.from_numpy(bake(colour))).numpy()
    want = reference(colour, rgb.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert np.abs(got - want).max() <= LUT_TOLERANCE
    # and the transform is not the identity: the check would pass on a LUT that did nothing
    assert np.abs(want - rgb).max() > 0.05


def colour_job(**colour: object) -> dict[str, object]:
    return {"colour": {"to": "ACEScg", **colour}, "output": {"formats": ["exr"]}}


def test_exr_frames_hold_the_transform_of_the_decoders_pixels_and_say_so(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    plain = render("run", str(write_job("plain.toml", output={"formats": ["exr"], "exr_transfer": "srgb",
                                                              "root": str(job_dir / "plain")})),
                   "--device", "cpu", "-q")
    assert plain.returncode == 0, plain.stderr
    result = render("run", str(write_job(**colour_job())), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    for frame in (1, 6):
        display = read_exr(job_dir / "plain" / "test" / f"test.{frame:04d}.exr")   # the decoder's values, half
        path = job_dir / "out" / "test" / f"test.{frame:04d}.exr"
        want = reference(Colour("ocio://default", SRGB, "ACEScg"), display)
        # half precision twice (the display values here, the transformed ones there) and the LUT
        assert np.abs(read_exr(path) - want).max() <= LUT_TOLERANCE + 2e-3
        attributes = read_attributes(path)
        assert attributes["framefarm.transfer"] == "colour"
        assert attributes["framefarm.colour"] == f"ocio://default: {SRGB} -> ACEScg"
        assert np.allclose(attributes["chromaticities"], CHROMATICITIES["ACEScg"])
    assert render("verify", str(job_dir / "out")).returncode == 0


REFUSED = [
    ({"to": "ACEScgg"}, "colour.to", "expected a colour space of ocio://default: "),
    ({"from": "sRGB"}, "colour.from", "ACEScg"),
    ({"config": "missing.ocio"}, "colour.config", "not an OpenColorIO config"),
    ({"lut_size": 1}, "colour.lut_size", "from 2 to 129"),
    ({"gamma": 2.2}, "colour.gamma", "unknown field"),
]


@pytest.mark.parametrize(("colour", "field", "says"), REFUSED, ids=[r[1] for r in REFUSED])
def test_a_colour_table_the_config_cannot_do_is_refused_in_one_line(
        colour: dict, field: str, says: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    result = render("run", str(write_job(**colour_job(**colour))), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert field in line and says in line, line
    assert not (job_dir / "out").exists()


def test_exr_transfer_and_a_colour_transform_together_are_refused(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job(colour={"to": "ACEScg"}, output={"formats": ["exr"], "exr_transfer": "linear"})
    result = render("run", str(job), "--device", "cpu")
    assert result.returncode == 2 and "output.exr_transfer" in result.stderr, result.stderr
