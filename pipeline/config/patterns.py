"""File name patterns such as ``{shot}/{shot}.{frame:04d}``: checked, then filled.

Job files are data, so a pattern may name only the placeholders listed here, with a
plain format spec of a sensible width: no attribute or index access, no conversions,
nothing evaluated. The frame-number spellings of other tools, ``####`` (Nuke) and
``%04d`` (ffmpeg, Resolve), are read as ``{frame:04d}``.
"""

from __future__ import annotations

import re
import string
from pathlib import Path, PurePosixPath

from pipeline.errors import JobError

PLACEHOLDERS = ("shot", "frame")
MAX_WIDTH = 32          # digits a frame number may be padded to: a file name, not a buffer
_SEQUENCE = re.compile(r"#+|%(0\d+)?d")
_FRAME_SPEC = re.compile(r"0?\d*d?")   # {frame}, {frame:d}, {frame:4}, {frame:04d}: a decimal number


def frame_sequence(pattern: str) -> str:
    """``####`` or ``%04d`` as ``{frame:04d}`` (``#`` or ``%d``: ``{frame}``), in a pattern
    that has no ``{frame}`` of its own."""
    if "{frame" in pattern:
        return pattern

    def placeholder(match: re.Match[str]) -> str:
        text = match.group(0)
        width = len(text) if text.startswith("#") else int(match.group(1) or "0")
        return f"{{frame:0{width}d}}" if width > 1 else "{frame}"

    return _SEQUENCE.sub(placeholder, pattern)


def check_pattern(field: str, pattern: str, *, needs_frame: bool, allow_frame: bool = True) -> None:
    """Reject anything but ``{shot}`` and ``{frame[:spec]}`` placeholders."""
    allowed = "{shot}" + (" and {frame} (with a format spec such as {frame:04d})" if allow_frame else "")
    seen: set[str] = set()
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as err:
        raise JobError(field, pattern, f"not a valid pattern ({err}); placeholders: {allowed}") from None
    for _text, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or (name == "frame" and not allow_frame):
            raise JobError(field, pattern, f"placeholder {{{name}}} is not allowed; use {allowed}")
        if conversion is not None or "{" in (spec or ""):
            raise JobError(field, pattern, f"placeholder {{{name}}} must be plain; use {allowed}")
        if name == "frame" and not _FRAME_SPEC.fullmatch(spec or ""):
            # {frame:c} makes a character (a NUL for frame 0), {frame:e} a float: a frame is a whole number
            raise JobError(field, pattern, f"{{frame:{spec}}} is not a whole-number format; use {{frame}} "
                           "or a zero-padded width such as {frame:04d}")
        width = re.match(r"\D*(\d+)", spec or "")
        if width and int(width.group(1)) > MAX_WIDTH:
            raise JobError(field, pattern, f"placeholder {{{name}}} pads to {int(width.group(1))} characters; "
                           f"at most {MAX_WIDTH}")
        seen.add(name)
    if needs_frame and "frame" not in seen:
        raise JobError(field, pattern, "must contain {frame} so that each frame gets its own file")
    try:
        fill(pattern, shot="shot", frame=1)
    except (ValueError, TypeError) as err:
        raise JobError(field, pattern, f"format spec does not apply to a number ({err})") from None


def fill(pattern: str, *, shot: str, frame: int | None = None) -> str:
    values: dict[str, object] = {"shot": shot}
    if frame is not None:
        values["frame"] = frame
    return pattern.format_map(values)


def input_pattern(base: Path, pattern: str, *, shot: str) -> str:
    """An input file pattern made absolute, its ``{shot}`` filled now and only ``{frame}``
    left for `fill`: braces in `base` (a folder's name) are escaped, not read as
    placeholders. `pattern` has passed `check_pattern`."""
    out = []
    for text, name, spec, _conversion in string.Formatter().parse(pattern):
        out.append(text.replace("{", "{{").replace("}", "}}"))
        if name == "shot":
            out.append(shot)
        elif name == "frame":
            out.append("{frame" + (f":{spec}" if spec else "") + "}")
    relative = "".join(out)
    if Path(pattern).is_absolute():
        return relative
    return str(Path(str(base).replace("{", "{{").replace("}", "}}")) / relative)


def check_relative(field: str, pattern: str, relative: str) -> None:
    """An output pattern must stay inside the output root."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or "\\" in relative or not path.name:
        raise JobError(
            field, pattern, "must be a relative path inside output.root (no leading /, no '..')"
        )


def confined(root: Path, relative: str) -> Path:
    """Join `relative` under `root`, refusing any result outside it (symlinks included)."""
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise JobError("output", relative, f"resolves to {target}, outside the output root {base}")
    return target
