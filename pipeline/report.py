"""`render report OUTDIR`: one self-contained HTML file of what the runs under OUTDIR did.

From the manifest: frames written over time and the rate, each run's stage
utilisation, energy, GPU-seconds and cost per frame ("not measured" where a run had no
figure), and the outputs' check (`render verify`); from a trace (`--trace`), each
track's busy time; from the job file (`--job`), its settings. Plots are PNGs made with
matplotlib and embedded in the page: nothing is fetched when it is viewed.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import itertools
import json
import math
import re
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config.given_files import read_regular
from pipeline.config.urls import MASK
from pipeline.errors import FramefarmError, JobError, MissingField
from pipeline.files.manifest import MANIFEST_NAME, read_records, read_runs, verify
from pipeline.files.publish import check_destination, publish_bytes

# Bounds on what is read whole: a job file is a few KiB; a day-long run's timeline tens of MiB
MAX_JOB_BYTES = 1 << 20
MAX_TRACE_BYTES = 1 << 30

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto}.bad{color:#b00}.ok{color:#070}"""


def _plot(draw: Any) -> str:
    """A matplotlib figure drawn by `draw(axes)`, as an <img> with the PNG inline."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 3.2), dpi=100)
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        pyplot.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(value: Any, digits: int = 2) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _runs_table(runs: list[dict[str, Any]]) -> str:
    rows = ["<tr><th>run</th><th>device</th><th>frames</th><th>render s</th><th>frames/s</th>"
            "<th>energy J</th><th>J / frame</th><th>GPU-s / frame</th><th>cost / frame</th></tr>"]
    for number, run in enumerate(runs, start=1):
        fps = run["frames"] / run["render_s"] if run.get("render_s") else None
        cost = run.get("cost_per_frame") if "cost" in run else None
        cost_text = "no prices" if "cost" not in run else (
            "not measured" if cost is None else f"{cost:.5f} {html.escape(str(run.get('currency', '')))}")
        rows.append(f"<tr><td>{number} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(run['time']))})</td>"
                    f"<td>{html.escape(str(run.get('device', '')))}</td><td>{run['frames']}</td>"
                    f"<td>{run['render_s']:.2f}</td><td>{_figure(fps)}</td><td>{_figure(run.get('energy_j'), 1)}</td>"
                    f"<td>{_figure(run.get('j_per_frame'), 2)}</td><td>{_figure(run.get('gpu_s_per_frame'), 3)}</td>"
                    f"<td>{cost_text}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _frames_over_time(frames: list[dict[str, Any]]) -> str:
    times = sorted(r["time"] for r in frames if _number(r.get("time")))
    if len(times) < 2:
        return "<p>Too few frames to plot.</p>"
    start = times[0]

    def draw(axes: Any) -> None:
        seconds = [t - start for t in times]
        axes.step(seconds, range(1, len(times) + 1), where="post", label="frames written")
        axes.set_xlabel("seconds since the first frame")
        axes.set_ylabel("frames")
        # the rate over every `step` frames (about 30 points whatever the shot's length)
        step = max(1, len(seconds) // 30)
        points = [((a + b) / 2, step / (b - a)) for a, b in itertools.pairwise(seconds[::step]) if b > a]
        rate = axes.twinx()
        rate.plot([t for t, _ in points], [r for _, r in points], color="tab:orange", marker=".",
                  label="frames/s")
        rate.set_ylim(bottom=0)
        rate.set_ylabel("frames/s")
        axes.set_title("Frames written over time (all runs)")

    return _plot(draw)


def _stages(run: dict[str, Any]) -> str:
    stages = run.get("stages") or {}
    if not stages:
        return "<p>The last run recorded no stage times.</p>"
    names = list(stages)

    def draw(axes: Any) -> None:
        left = [0.0] * len(names)
        for part, colour in (("busy_s", "tab:green"), ("waiting_s", "tab:gray"), ("blocked_s", "tab:red")):
            values = [stages[n].get(part, 0.0) for n in names]
            axes.barh(names, values, left=left, color=colour, label=part[:-2])
            left = [a + b for a, b in zip(left, values, strict=True)]
        axes.invert_yaxis()
        axes.set_xlabel("seconds (write: summed over its writer threads)")
        axes.legend(loc="lower right")
        axes.set_title("Stage utilisation, last run: busy, waiting for input, blocked on output")

    return _plot(draw)


def _trace_events(trace_path: Path) -> list[dict[str, Any]]:
    """The events of a timeline `render run --trace` wrote; JobError for anything else."""
    data = read_regular(trace_path, "--trace", MAX_TRACE_BYTES)   # a FIFO or /dev/zero: refused, not read
    wanted = "not a timeline `render run --trace` wrote"
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:   # not JSON, not UTF-8; nested too deep
        raise JobError("--trace", str(trace_path), f"{wanted}: not JSON ({type(err).__name__})") from None
    events = document.get("traceEvents") if isinstance(document, dict) else None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise JobError("--trace", str(trace_path), f"{wanted}: expected a JSON object whose traceEvents is a "
                                                   "list of event objects")
    for number, event in enumerate(events, start=1):
        if event.get("ph") == "X" and not _number(event.get("dur")):
            raise JobError("--trace", str(trace_path), f"{wanted}: event {number} has no duration (dur)")
    return events


def _trace_summary(events: list[dict[str, Any]]) -> str:
    def track_of(event: dict[str, Any]) -> str:
        return repr((event.get("pid"), event.get("tid")))   # any JSON value, hashable

    names = {track_of(e): str(e["args"].get("name")) for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and isinstance(e.get("args"), dict)}
    busy: dict[str, float] = defaultdict(float)
    waits: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("ph") == "X":
            track = names.get(track_of(event), "?")
            (waits if event.get("name") in ("waiting", "blocked") else busy)[track] += event["dur"] / 1e6
    rows = ["<tr><th>track</th><th>work s</th><th>waits s</th></tr>"]
    rows += [f"<tr><td>{html.escape(track)}</td><td>{busy[track]:.3f}</td><td>{waits[track]:.3f}</td></tr>"
             for track in sorted(set(busy) | set(waits))]
    return "<table>" + "".join(rows) + "</table>"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _a_time(value: Any) -> bool:
    if not _number(value):
        return False
    try:
        time.localtime(value)
    except (OverflowError, OSError, ValueError):   # years a platform's clock cannot show
        return False
    return True


_FIGURES = ("energy_j", "j_per_frame", "gpu_s_per_frame", "cost", "cost_per_frame")   # a number or None
_STAGE_PARTS = ("busy_s", "waiting_s", "blocked_s")


def _run_problem(run: dict[str, Any]) -> str | None:
    """What makes a run record unusable for the page, as "field = value: expected ..."; None if usable."""
    def bad(field: str, allowed: str) -> str:
        return str(JobError(field, run[field], allowed) if field in run else MissingField(field, allowed))

    frames = run.get("frames")
    if not (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0):
        return bad("frames", "expected a whole number >= 0")
    if not (_number(run.get("render_s")) and run["render_s"] >= 0):
        return bad("render_s", "expected seconds, a number >= 0")
    if not _a_time(run.get("time")):
        return bad("time", "expected a time in seconds since 1970")
    for field in _FIGURES:
        if run.get(field) is not None and not _number(run[field]):
            return bad(field, "expected a number or null (not measured)")
    stages = run.get("stages")
    if stages is not None and not (isinstance(stages, dict) and all(
            isinstance(f, dict) and all(_number(f.get(part, 0.0)) for part in _STAGE_PARTS)
            for f in stages.values())):
        return bad("stages", "expected an object of stages, each with busy_s, waiting_s and blocked_s in seconds")
    return None


def _usable_runs(root: Path, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The run records the page can show. A record that is not one (edited by hand, or
    from another tool) is left out with a warning rather than refusing the whole page:
    the other runs' figures are still worth seeing, and `render verify` judges the manifest."""
    runs = []
    for number, run in enumerate(read_runs(root), start=1):
        problem = _run_problem(run)
        if problem is None:
            runs.append(run)
        else:
            warn(f"{root / MANIFEST_NAME}: run record {number} left out of the report: {problem}")
    return runs


# Field names (split at '_', '-' and '.') whose values are secrets: shown as ***. A name ending
# in _env or _file (key_env, secret_env) names where a secret is kept and is shown.
_SECRET_WORDS = frozenset({"key", "keys", "token", "tokens", "password", "passwd", "secret", "secrets",
                           "credential", "credentials", "auth", "apikey", "signature"})
_REFERENCE_ENDS = ("_env", "_file")


def _job_settings(job: Path) -> str:
    """The job file's settings as TOML, every secret masked: the parsed file written
    again, not its text edited, so no way of spelling a value (escapes, inline tables,
    multi-line strings, comments) lets a secret through. Its comments are not shown."""
    try:
        data = tomllib.loads(read_regular(job, "--job", MAX_JOB_BYTES).decode("utf-8"))
    except UnicodeDecodeError:
        raise JobError("--job", str(job), "cannot be read as UTF-8 text") from None
    except (ValueError, RecursionError) as err:   # TOMLDecodeError; nesting too deep to parse
        raise JobError("--job", str(job), f"invalid TOML: {err}") from None
    return "\n".join(_toml_lines(_masked(data), [])).strip() + "\n"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith(_REFERENCE_ENDS):
        return False
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", lowered))


def _masked(value: Any, secret: bool = False) -> Any:
    """`value` with every scalar under a secret name replaced by ***, and every URL's
    credentials (user, password, path, query: webhooks keep their token in the path) too."""
    if isinstance(value, dict):
        return {k: _masked(v, secret or _is_secret(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, secret) for v in value]
    if secret:
        return MASK
    return _masked_url(value) if isinstance(value, str) and "://" in value else value


def _masked_url(url: str) -> str:
    """scheme://host[:port], the rest masked: more is hidden than may be secret, never less."""
    scheme, _, rest = url.partition("://")
    _userinfo, at, location = rest.rpartition("@")   # the last '@': a password may hold '/', '@', '?'
    host = re.split(r"[/?#]", location, maxsplit=1)[0]
    shown = f"{scheme}://{MASK + '@' if at else ''}{host}"
    return shown + ("/" + MASK if len(location) > len(host) else "")


def _toml_lines(table: dict[str, Any], path: list[str]) -> list[str]:
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()
             if not isinstance(v, dict) and not _table_array(v)]
    for name, value in table.items():
        header = ".".join(_toml_key(k) for k in [*path, name])
        if isinstance(value, dict):
            lines += ["", f"[{header}]", *_toml_lines(value, [*path, name])]
        elif _table_array(value):
            for item in value:
                lines += ["", f"[[{header}]]", *_toml_lines(item, [*path, name])]
    return lines


def _table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)   # a JSON string is a TOML basic string
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)


def build_report(root: Path, trace: Path | None = None, job: Path | None = None,
                 warn: Callable[[str], None] = lambda line: None) -> str:
    """The page. The inputs given by name (trace, job) are read and checked first, so a
    bad one is refused before any work."""
    events = _trace_events(trace) if trace is not None else None
    settings = _job_settings(job) if job is not None else None
    runs = _usable_runs(root, warn)
    records = read_records(root)
    if not runs and not records:
        raise FramefarmError(f"{root}: no manifest records here; render into it first")
    frames = [r for r in records if r.get("kind") == "frame"]
    shots = sorted({str(r.get("shot")) for r in (*runs, *frames) if r.get("shot")})
    checked, problems = verify(root)
    parts = [f"<h1>framefarm report: {html.escape(', '.join(shots) or root.name)}</h1>",
             f"<p>{html.escape(str(root))}: {len(frames)} frame file(s), {len(runs)} run(s). Outputs check: "
             + (f'<span class="ok">{checked} record(s), all match their files</span>' if not problems else
                f'<span class="bad">{len(problems)} problem(s)</span>: '
                + html.escape("; ".join(problems[:5]))) + "</p>",
             "<h2>Runs: energy, GPU time and cost</h2>", _runs_table(runs) if runs else "<p>No run records.</p>",
             "<h2>Frames over time</h2>", _frames_over_time(frames)]
    if runs:
        parts += ["<h2>Stages</h2>", _stages(runs[-1])]
    if trace is not None and events is not None:
        parts += [f"<h2>Timeline ({html.escape(trace.name)})</h2>", _trace_summary(events)]
    if job is not None and settings is not None:
        parts += [f"<h2>Job ({html.escape(job.name)}, secrets masked)</h2>", f"<pre>{html.escape(settings)}</pre>"]
    title = html.escape("framefarm report: " + (", ".join(shots) or root.name))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_report(root: Path, dest: Path, trace: Path | None = None, job: Path | None = None,
                 warn: Callable[[str], None] = lambda line: None) -> None:
    """The page, checked to be writable at `dest` first and published whole (a temporary
    file renamed into place, removed if the write fails)."""
    check_destination(dest, "--output")
    publish_bytes(dest, build_report(root, trace, job, warn).encode("utf-8"))
