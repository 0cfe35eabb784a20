"""The job (a shot) as read from its TOML file: parsed, typed and checked field by field.

Checks that need the model or the latent files (resolution, channels, shapes) live in
`pipeline.plan`, which sees those too. Relative input paths (model, latents, preset)
are resolved against the job file's folder; a relative output root against the
working directory, so the same job renders wherever it is run.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from pipeline.config import patterns
from pipeline.config.cost import Cost, parse_cost
from pipeline.config.formats import EXR_COMPRESSIONS, EXR_TRANSFERS, FRAME_FORMATS, VIDEO_FORMATS, frame_format
from pipeline.config.schema import Table, read_toml
from pipeline.config.secret import MAX_KEY, key_from_env, key_from_file
from pipeline.config.tuning import Tuning, load_tuning
from pipeline.config.urls import redact
from pipeline.config.video import (
    CONTAINERS,
    MXF_RATES,
    VIDEO_CODECS,
    X26X_PRESETS,
    VideoOutput,
    chroma_steps,
    review_video,
    with_segments,
)
from pipeline.errors import JobError

SOURCE_KINDS = ("latents", "clip", "noise", "diffusers")
DTYPE_NAMES = ("float32", "float16", "bfloat16")   # models.dtypes maps them to torch dtypes
FORMATS = (*FRAME_FORMATS, *VIDEO_FORMATS)
_SHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_FRAMES = 1_000_000
MAX_FRAME = 2**31 - 1    # a frame number fits a signed 32-bit integer, as ffmpeg and Nuke read it


# Shown every file or folder a job names, before anything is read from it: (field, path,
# what it is: "model" for a model or pipeline folder, "data" for latents and preset
# files). A farm worker confines them to its roots this way; it raises to refuse.
InputCheck = Callable[[str, Path, str], None]


@dataclass(frozen=True)
class Shot:
    name: str
    frame_start: int
    frame_end: int      # inclusive, as in every VFX tool
    fps: int
    width: int
    height: int

    @property
    def frames(self) -> range:
        return range(self.frame_start, self.frame_end + 1)


@dataclass(frozen=True)
class PromptRange:
    first: int                # frames first..last (inclusive) use this prompt
    last: int
    prompt: str
    negative_prompt: str | None  # None: the shot's


@dataclass(frozen=True)
class Generation:
    """How a diffusers pipeline makes the shot's latents."""
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    scheduler: str | None     # a diffusers scheduler class name; None: the pipeline's own
    batch_size: int           # frames per pipeline call
    overrides: tuple[PromptRange, ...] = ()

    def prompts_for(self, frame: int) -> tuple[str, str]:
        """(prompt, negative prompt) of a frame: the last override covering it, or the shot's."""
        for r in reversed(self.overrides):
            if r.first <= frame <= r.last:
                return r.prompt, self.negative_prompt if r.negative_prompt is None else r.negative_prompt
        return self.prompt, self.negative_prompt


@dataclass(frozen=True)
class Source:
    kind: str                 # "latents" | "clip" | "noise" | "diffusers"
    path: str | None          # latents: absolute pattern with {frame} (patterns.input_pattern);
                              #   clip: one absolute file, as a pattern (braces doubled);
                              #   diffusers: the pipeline folder
    tensor: str               # tensor name inside a safetensors file
    generation: Generation | None = None   # diffusers only


@dataclass(frozen=True)
class Model:
    path: Path
    dtype: str


@dataclass(frozen=True)
class Output:
    root: Path
    frames: str               # pattern under root, without extension
    video: str                # pattern under root, ending in .mp4
    formats: tuple[str, ...]
    exr_transfer: str = "linear"   # config.formats.EXR_TRANSFERS
    exr_compression: str = "zip16"  # config.formats.EXR_COMPRESSIONS
    # every video the run writes from the same frames: the review MP4 ("mp4" in
    # formats) first, then [[output.videos]] in the job's order
    videos: tuple[VideoOutput, ...] = ()

    def pixels(self) -> str:
        """The precision the frames travel in: the frame format's; for videos alone 16 bits
        when one stores more than 8, else 8."""
        found = frame_format(self.formats)
        if found is not None:
            return found.pixels
        return "uint16" if any(v.deep for v in self.videos) else "uint8"


@dataclass(frozen=True)
class Watermark:
    enabled: bool
    payload: str
    key: str = dataclass_field(repr=False)   # a secret: never shown (repr, logs, errors)


@dataclass(frozen=True)
class Colour:
    """An OpenColorIO transform applied to every frame on the device before quantisation."""
    config: str                # "ocio://..." (built into OCIO) or a config file's path
    source: str                # what the decoder's pixels are
    target: str                # what the files get
    lut_size: int = 65         # lattice points a side of the baked 3D LUT


@dataclass(frozen=True)
class Notify:
    """Where the farm POSTs the job's completion (done or failed), and the environment
    variable holding the HMAC secret it is signed with, on the workers."""
    webhook: str
    secret_env: str


@dataclass(frozen=True)
class Job:
    file: Path
    seed: int
    preset: str
    shot: Shot
    source: Source
    model: Model
    output: Output
    watermark: Watermark
    tuning: Tuning
    colour: Colour | None = None
    cost: Cost | None = None       # prices: the run's money per frame
    notify: Notify | None = None   # the farm's completion webhook


def load_job(path: Path, *, output_root: Path | None = None) -> Job:
    data = read_toml(path, "job file")
    return parse_job(data, job_dir=path.resolve().parent, file=path, output_root=output_root)


def parse_job(data: dict[str, Any], *, job_dir: Path, file: Path,
              output_root: Path | None = None, check_input: InputCheck | None = None) -> Job:
    top = Table(data, "")
    seed = top.integer("seed", 0, lo=0, hi=2**63 - 1)
    preset = top.string("preset", "default")
    shot = _shot(top.table("shot"))
    source = _source(top.table("source"), job_dir, shot)
    model = _model(top.table("model"), job_dir, source)
    output = _output(top.table("output"), shot, output_root)
    watermark = _watermark(top.table("watermark", required=False), job_dir)
    colour = _colour(top.table("colour"), job_dir, data) if "colour" in data else None
    cost = parse_cost(top.table("cost")) if "cost" in data else None
    notify = _notify(top.table("notify")) if "notify" in data else None
    overrides = top.table("tuning", required=False).data
    top.done()
    if check_input is not None:
        for field, path, kind in input_paths(shot, source, model, colour):
            check_input(field, path, kind)
    tuning = load_tuning(preset, job_dir, overrides,
                         None if check_input is None else lambda field, path: check_input(field, path, "data"))
    if "mp4" in output.formats:   # the review MP4 takes its codec from the preset
        review = review_video(output.video, tuning.video_codec, tuning.video_crf, tuning.video_preset)
        _distinct_paths((review, *output.videos), shot.name)
        output = replace(output, videos=(review, *output.videos))
    output = replace(output, videos=tuple(with_segments(v, tuning.video_segment_frames) for v in output.videos))
    return Job(file=file, seed=seed, preset=preset, shot=shot, source=source, model=model,
               output=output, watermark=watermark, tuning=tuning, colour=colour, cost=cost,
               notify=notify)


def input_paths(shot: Shot, source: Source, model: Model,
                colour: Colour | None = None) -> list[tuple[str, Path, str]]:
    """Every file or folder the job reads (but a preset), as InputCheck sees them. A
    latent pattern is shown filled for its first and last frame: a frame number fills
    in digits only, so the frames between name the same folders."""
    paths = [("model.path", model.path, "model")]
    if source.kind == "diffusers" and source.path:   # the pipeline first: its VAE is inside it
        paths.insert(0, ("source.path", Path(source.path), "model"))
    elif source.kind == "clip" and source.path:
        paths.append(("source.path", Path(patterns.fill(source.path, shot=shot.name)), "data"))
    elif source.kind == "latents" and source.path:
        for frame in sorted({shot.frame_start, shot.frame_end}):
            paths.append(("source.path", Path(patterns.fill(source.path, shot=shot.name, frame=frame)), "data"))
    if colour is not None and not colour.config.startswith(OCIO_BUILTIN):
        paths.append(("colour.config", Path(colour.config), "data"))
    return paths


def _shot(t: Table) -> Shot:
    name = t.string("name", max_len=100)
    if not _SHOT_NAME.fullmatch(name):   # match() would let a trailing newline through
        raise JobError("shot.name", name, "expected letters, digits, '.', '_' or '-' (it names files)")
    start = t.integer("frame_start", lo=0)
    end = t.integer("frame_end", lo=0)
    for field, frame in (("shot.frame_start", start), ("shot.frame_end", end)):
        if frame > MAX_FRAME:
            raise JobError(field, frame, f"expected a frame number from 0 to {MAX_FRAME}")
    if end < start:
        raise JobError("shot.frame_end", end, f"expected a frame >= shot.frame_start ({start}); "
                       "the range is inclusive, so frame_end = frame_start renders one frame")
    if end - start + 1 > MAX_FRAMES:
        raise JobError("shot.frame_end", end, f"at most {MAX_FRAMES} frames per job")
    shot = Shot(name=name, frame_start=start, frame_end=end, fps=t.integer("fps", lo=1, hi=240),
                width=t.integer("width", lo=8, hi=16384), height=t.integer("height", lo=8, hi=16384))
    t.done()
    return shot


def _source(t: Table, job_dir: Path, shot: Shot) -> Source:
    kind = t.string("kind", choices=SOURCE_KINDS)
    if kind == "diffusers":
        return _generation_source(t, job_dir, shot)
    if kind == "latents":
        pattern = patterns.frame_sequence(t.string("path"))
        patterns.check_pattern("source.path", pattern, needs_frame=True)
        if not pattern.endswith((".safetensors", ".npy")):
            raise JobError("source.path", pattern, "expected a .safetensors or .npy file pattern")
        path = patterns.input_pattern(job_dir, pattern, shot=shot.name)
        source = Source(kind=kind, path=path, tensor=t.string("tensor", "latents"))
    elif kind == "clip":  # a video VAE's latents for the whole shot: (C, T, h, w) in one file
        raw = t.string("path")
        patterns.check_pattern("source.path", raw, needs_frame=False, allow_frame=False)
        if not raw.endswith((".safetensors", ".npy")):
            raise JobError("source.path", raw, "expected a .safetensors or .npy file")
        path = patterns.input_pattern(job_dir, raw, shot=shot.name)
        source = Source(kind=kind, path=path, tensor=t.string("tensor", "latents"))
    else:
        source = Source(kind=kind, path=None, tensor="latents")
    t.done()
    return source


def _generation_source(t: Table, job_dir: Path, shot: Shot) -> Source:
    raw = t.string("path")
    path = raw if Path(raw).is_absolute() else str(job_dir / raw)
    negative = "" if t.data.get("negative_prompt", "") == "" else t.string("negative_prompt", max_len=10_000)
    t.used.add("negative_prompt")  # absent or "" (allowed here): no negative prompt
    generation = Generation(
        prompt=t.string("prompt", max_len=10_000), negative_prompt=negative,
        steps=t.integer("steps", lo=1, hi=1000), guidance_scale=t.number("guidance_scale", 5.0, lo=0.0),
        scheduler=t.string("scheduler") if "scheduler" in t.data else None,
        batch_size=t.integer("batch_size", 1, lo=1, hi=64),
        overrides=_prompt_ranges(t.data.get("prompts", []), shot))
    t.used.update({"scheduler", "prompts"})
    t.done()
    return Source(kind="diffusers", path=path, tensor="latents", generation=generation)


def _prompt_ranges(entries: object, shot: Shot) -> tuple[PromptRange, ...]:
    if not isinstance(entries, list):
        raise JobError("source.prompts", entries, "expected [[source.prompts]] tables")
    ranges = []
    for i, entry in enumerate(entries):
        t = Table(entry, f"source.prompts[{i}]")
        frames = t.data.get("frames")
        t.used.add("frames")
        if (not isinstance(frames, list) or len(frames) != 2 or not all(type(f) is int for f in frames)
                or not shot.frame_start <= frames[0] <= frames[1] <= shot.frame_end):
            raise JobError(t.name("frames"), frames, f"expected [first, last] within the shot's frames "
                           f"{shot.frame_start}-{shot.frame_end}")
        negative = t.string("negative_prompt", max_len=10_000) if t.data.get("negative_prompt") else None
        t.used.add("negative_prompt")
        ranges.append(PromptRange(frames[0], frames[1], t.string("prompt", max_len=10_000), negative))
        t.done()
    return tuple(ranges)


def _model(t: Table, job_dir: Path, source: Source) -> Model:
    if source.kind == "diffusers" and "path" not in t.data:  # the pipeline's own VAE
        t.used.add("path")
        model = Model(path=Path(source.path or "") / "vae", dtype=t.string("dtype", "float32", choices=DTYPE_NAMES))
        t.done()
        return model
    raw = Path(t.string("path"))
    model = Model(path=raw if raw.is_absolute() else job_dir / raw,
                  dtype=t.string("dtype", "float32", choices=DTYPE_NAMES))
    t.done()
    return model


def _output(t: Table, shot: Shot, root_override: Path | None) -> Output:
    root = root_override or Path(t.string("root"))
    if root_override is not None:
        t.used.add("root")
    frames = patterns.frame_sequence(t.string("frames", "{shot}/{shot}.{frame:04d}"))
    video = t.string("video", "{shot}.mp4")
    videos = tuple(_video(v, shot) for v in t.tables("videos"))
    formats = t.string_list("formats", ["png"], choices=FORMATS, allow_empty=bool(videos))
    exr_transfer = t.string("exr_transfer", "linear", choices=EXR_TRANSFERS)
    exr_compression = t.string("exr_compression", "zip16", choices=EXR_COMPRESSIONS)
    t.done()
    _distinct_paths(videos, shot.name)
    if len([f for f in formats if f in FRAME_FORMATS]) > 1:
        raise JobError("output.formats", list(formats), "at most one frame format (png, png16 or exr: "
                       "each writes one file per frame), with or without mp4")
    patterns.check_pattern("output.frames", frames, needs_frame=True)
    first = patterns.fill(frames, shot=shot.name, frame=shot.frame_start)
    patterns.check_relative("output.frames", frames, first)
    patterns.check_pattern("output.video", video, needs_frame=False, allow_frame=False)
    patterns.check_relative("output.video", video, patterns.fill(video, shot=shot.name))
    if not video.endswith(".mp4"):
        raise JobError("output.video", video, "expected a file name ending in .mp4")
    if "mp4" in formats and (shot.width % 2 or shot.height % 2):
        raise JobError("shot.width" if shot.width % 2 else "shot.height",
                       shot.width if shot.width % 2 else shot.height,
                       "MP4 (yuv420p) needs an even width and height; drop \"mp4\" from "
                       "output.formats or choose an even size")
    return Output(root=root.expanduser().resolve(), frames=frames, video=video, formats=formats,
                  exr_transfer=exr_transfer, exr_compression=exr_compression, videos=videos)


def _video(t: Table, shot: Shot) -> VideoOutput:
    """One [[output.videos]] entry: codec, container (the path's suffix), pixel format, quality."""
    name = t.string("codec", choices=VIDEO_CODECS)
    codec = VIDEO_CODECS[name]
    path = t.string("path")
    pixel_format = t.string("pixel_format", codec.pixel_formats[0], choices=codec.pixel_formats)
    segment_frames = t.integer("segment_frames", 0, lo=0, hi=1_000_000)
    crf = preset = None
    for field in ("crf", "preset"):
        if codec.crf is None and field in t.data:
            raise JobError(t.name(field), t.data[field], f"{name} takes no {field}: its quality is its profile")
    if codec.crf is not None:
        crf = t.integer("crf", codec.crf, lo=0, hi=51)
        preset = t.string("preset", "veryfast", choices=X26X_PRESETS)
    t.done()   # a crf or preset for a codec without one is an unknown field here
    patterns.check_pattern(t.name("path"), path, needs_frame=False, allow_frame=False)
    patterns.check_relative(t.name("path"), path, patterns.fill(path, shot=shot.name))
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in codec.suffixes:
        raise JobError(t.name("path"), path, f"{name} goes in a file ending in {' or '.join(codec.suffixes)}")
    across, down = chroma_steps(pixel_format)
    for field, size, step in (("shot.width", shot.width, across), ("shot.height", shot.height, down)):
        if size % step:
            raise JobError(field, size, f"{name} in {pixel_format} ({t.name('videos')}) needs a size divisible "
                           f"by {step}; choose another size or pixel_format")
    least_w, least_h = codec.min_size
    if shot.width < least_w or shot.height < least_h:
        raise JobError("shot.width" if shot.width < least_w else "shot.height",
                       shot.width if shot.width < least_w else shot.height,
                       f"{name} needs at least {least_w}x{least_h} pixels")
    if CONTAINERS[suffix] == "mxf" and shot.fps not in MXF_RATES:
        raise JobError("shot.fps", shot.fps, f"MXF ({t.name('path')}) takes "
                       f"{', '.join(map(str, MXF_RATES))} frames/s; write a .mov instead")
    return VideoOutput(path=path, codec=name, encoder=codec.encoder, container=CONTAINERS[suffix],
                       pixel_format=pixel_format, crf=crf, preset=preset, options=codec.options,
                       segment_frames=segment_frames)


def _distinct_paths(videos: tuple[VideoOutput, ...], shot: str) -> None:
    seen: set[str] = set()
    for video in videos:
        path = patterns.fill(video.path, shot=shot)
        if path in seen:
            raise JobError("output.videos", video.path, "two videos would be written to the same file; "
                           "give each its own path (output.video is the review MP4's)")
        seen.add(path)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def read_notify(data: dict[str, Any]) -> Notify | None:
    """A job's [notify] table alone (a farm worker reads it for a job it may not render)."""
    return _notify(Table(data["notify"], "notify")) if "notify" in data else None


def _notify(t: Table) -> Notify:
    url, secret_env = t.string("webhook", max_len=2048), t.string("secret_env", max_len=128)
    t.done()
    _check_webhook(url)
    if not _ENV_NAME.fullmatch(secret_env):
        raise JobError("notify.secret_env", secret_env, "expected an environment variable's name (letters, "
                       "digits, _): the workers read the HMAC secret from it")
    return Notify(webhook=url, secret_env=secret_env)


def _check_webhook(url: str) -> None:
    """Refuse, at submit, a URL the worker could not POST to when the job ends. Every
    message shows the URL with its user:password masked."""
    shown = redact(url)
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise JobError("notify.webhook", shown, "expected ASCII without spaces or control characters "
                       "(percent-encode the rest; a non-ASCII host name in its xn-- form)")
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname, parts.port   # .port raises for a port that is not 0-65535
    except ValueError:   # not its text: a password holding '/' would be read as the port
        raise JobError("notify.webhook", shown, "expected an http:// or https:// URL with a host, a port from 0 "
                       "to 65535 if any, and an IPv6 host in [brackets]") from None
    if parts.scheme not in ("http", "https") or not host:
        raise JobError("notify.webhook", shown, "expected an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        # The HMAC signature is the hook's authentication; a password here would be stored in
        # the queue with the job's text and shown wherever the job file is.
        raise JobError("notify.webhook", shown, "must not hold user:password credentials: the receiver checks "
                       "X-Framefarm-Signature (HMAC with the secret in secret_env) instead; remove them")


OCIO_BUILTIN = "ocio://"


def _colour(t: Table, job_dir: Path, data: dict[str, Any]) -> Colour:
    config = t.string("config", "ocio://default")
    if not config.startswith(OCIO_BUILTIN):
        config = str(job_dir / Path(config).expanduser())
    colour = Colour(config=config, source=t.string("from", "sRGB Encoded Rec.709 (sRGB)"),
                    target=t.string("to"), lut_size=t.integer("lut_size", 65, lo=2, hi=129))
    t.done()
    output = data.get("output")
    if isinstance(output, dict) and "exr_transfer" in output:
        raise JobError("output.exr_transfer", output["exr_transfer"],
                       "a [colour] transform decides what EXR values are; leave exr_transfer out")
    return colour


def _watermark(t: Table, job_dir: Path) -> Watermark:
    enabled = t.boolean("enabled", False)
    payload = t.string("payload", "ffarm")
    if len(payload.encode()) > 8:
        raise JobError("watermark.payload", payload, "expected at most 8 bytes of UTF-8 text")
    key = _watermark_key(t, job_dir, resolve=enabled)
    mark = Watermark(enabled=enabled, payload=payload, key=key)
    t.done()
    return mark


KEY_SOURCES = ("key", "key_env", "key_file")
DEFAULT_KEY = "framefarm"


def _watermark_key(t: Table, job_dir: Path, *, resolve: bool) -> str:
    """The key from the job text, an environment variable or a file: never echoed back.
    A disabled mark leaves the variable and the file unread."""
    given = [name for name in KEY_SOURCES if name in t.data]
    for name in given:
        t.used.add(name)
        if not isinstance(t.data[name], str) or not t.data[name]:
            raise JobError(t.name(name), "(not shown)", "expected a non-empty string")
    if len(given) > 1:
        raise JobError(t.name(given[1]), "(not shown)", "give only one of key, key_env and key_file")
    source = given[0] if given else "key"
    if source == "key_env" and resolve:
        return key_from_env(t.data["key_env"], "watermark.key_env")
    if source == "key_file" and resolve:
        path = Path(t.data["key_file"])
        return key_from_file(path if path.is_absolute() else job_dir / path, "watermark.key_file")
    key = t.data["key"] if source == "key" and given else DEFAULT_KEY
    if len(key) > MAX_KEY:
        raise JobError("watermark.key", "(not shown)", f"the key is over {MAX_KEY} characters")
    return key
