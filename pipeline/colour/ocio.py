"""OpenColorIO: check a job's `[colour]` names against its config and bake the transform
into a 3D LUT, sampled on OCIO's own CPU processor (the reference the GPU result is
measured against). PyOpenColorIO is imported only by jobs that ask for a transform.

Why a LUT and not OCIO's GPU shader: the shader is GLSL/HLSL/MSL text for a graphics
API; PyTorch runs none of them. A LUT of 65 points a side (3.3 MB in float32), applied
with trilinear interpolation, is one gather per pixel on the GPU and matches the CPU
processor within the tolerance `tests/test_colour.py` states.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.config.job import Colour
from pipeline.errors import JobError

# The target colour spaces whose primaries an EXR header can state (x, y of R, G, B, white)
CHROMATICITIES = {
    "ACEScg": (0.713, 0.293, 0.165, 0.830, 0.128, 0.044, 0.32168, 0.33767),
    "ACES2065-1": (0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.077, 0.32168, 0.33767),
    "Linear Rec.709 (sRGB)": (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290),
    "Linear Rec.2020": (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290),
    "Linear P3-D65": (0.680, 0.320, 0.265, 0.690, 0.150, 0.060, 0.3127, 0.3290),
}


def _ocio() -> Any:
    try:
        import PyOpenColorIO
    except ImportError as err:   # a dependency of the package: only a broken install lacks it
        raise JobError("colour", "", "needs the opencolorio package (pip install opencolorio)") from err
    return PyOpenColorIO


@lru_cache(maxsize=4)
def _config(source: str) -> Any:
    ocio = _ocio()
    try:
        return ocio.Config.CreateFromFile(source)
    except Exception as err:   # OCIO's own message says what is wrong in the file
        raise JobError("colour.config", source, f"not an OpenColorIO config: {str(err).splitlines()[0]}") from err


def check(colour: Colour) -> None:
    """Refuse names the config does not have, listing the ones it does."""
    config = _config(colour.config)
    names = [space.getName() for space in config.getColorSpaces()]
    for field, name in (("colour.from", colour.source), ("colour.to", colour.target)):
        if config.getColorSpace(name) is None:
            raise JobError(field, name, "expected a colour space of " + colour.config + ": " + ", ".join(names))


def bake(colour: Colour) -> np.ndarray:
    """The transform sampled on a lattice: float32 (3, N, N, N) indexed [channel, b, g, r]."""
    check(colour)
    config = _config(colour.config)
    processor = config.getProcessor(colour.source, colour.target).getDefaultCPUProcessor()
    n = colour.lut_size
    axis = np.linspace(0, 1, n, dtype=np.float32)
    b, g, r = np.meshgrid(axis, axis, axis, indexing="ij")
    lattice = np.ascontiguousarray(np.stack([r, g, b], axis=-1).reshape(-1, 3))
    processor.applyRGB(lattice)   # in place
    return np.ascontiguousarray(lattice.reshape(n, n, n, 3).transpose(3, 0, 1, 2))


def reference(colour: Colour, rgb: np.ndarray) -> np.ndarray:
    """OCIO's CPU processor on float32 (..., 3) RGB: what the LUT is checked against."""
    config = _config(colour.config)
    processor = config.getProcessor(colour.source, colour.target).getDefaultCPUProcessor()
    out = np.ascontiguousarray(rgb, dtype=np.float32).reshape(-1, 3).copy()
    processor.applyRGB(out)
    return out.reshape(rgb.shape)
