"""The `render` command line: a front end over the core. Nothing in the core imports it.

Every error a user can cause is one line on stderr ("error: field = value: what is
allowed") and exit status 2; a failed run exits 1; an interrupted one 130 (Ctrl-C)
or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.errors import EXIT_BAD_INPUT, FramefarmError, VerifyFailed

if TYPE_CHECKING:
    from pipeline.watermark.detect import Detection


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="framefarm")
def cli() -> None:
    """framefarm: render generative video shots into frames and video on a GPU (or CPU).

    A job file (TOML) describes one shot: frames, resolution, latent source, VAE,
    outputs. See the README for a complete commented example.
    """


@cli.command()
@click.argument("job_file", metavar="JOB.toml", type=click.Path(path_type=Path))
@click.option("--device", metavar="DEVICE", default=None,
              help="cuda, cuda:N or cpu. Default: the first GPU if there is one, else the CPU.")
@click.option("--dry-run", is_flag=True,
              help="Check the job and print the plan (frames, tiles, batches, outputs); render nothing.")
@click.option("--resume", is_flag=True,
              help="Skip frames whose manifest record matches the file on disk; render the rest.")
@click.option("--output-root", metavar="DIR", type=click.Path(path_type=Path), default=None,
              help="Write under DIR instead of the job's output.root.")
@click.option("--frames", "frames_text", metavar="FRAMES", default=None,
              help="Render only these frames of the shot into the same outputs and manifest: 1001-1100 "
                   "(inclusive), 1001-1100x4 (every 4th), 1001,1010,1020-1030, or one frame. Writes frame "
                   "files only, never the video (chunks on several hosts would race to write it): build it "
                   "afterwards with a run of the whole shot with --resume.")
@click.option("--base-dir", metavar="DIR", type=click.Path(path_type=Path), default=None,
              help="Resolve the job's relative model, latents and preset paths against DIR instead of the "
                   "job file's folder.")
@click.option("--session", metavar="DIR", type=click.Path(path_type=Path), default=None,
              help="Render in the long-lived render process of the session folder DIR (`render session "
                   "start`), which keeps models loaded between runs; where none answers, render here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--trace", "trace_path", metavar="FILE.json", type=click.Path(path_type=Path), default=None,
              help="Write the run's timeline (Trace Event Format: open it in Perfetto or chrome://tracing).")
def run(job_file: Path, device: str | None, dry_run: bool, resume: bool, output_root: Path | None,
        frames_text: str | None, base_dir: Path | None, session: Path | None, quiet: bool,
        trace_path: Path | None) -> None:
    """Render the shot described by JOB.toml.

    Frames are published atomically (a temporary file, fsynced, renamed) and recorded in
    OUTPUT_ROOT/manifest.jsonl; an interrupted run leaves no partial file and can be
    continued with --resume.
    """
    if session is not None:
        if dry_run or trace_path is not None:
            raise click.UsageError("--dry-run and --trace work in this process; leave out --session")
        if run_in_session(session, quiet, cwd=str(Path.cwd()), job=str(job_file.resolve()), frames=frames_text,
                          resume=resume, device=device,
                          output_root=None if output_root is None else str(output_root.resolve()),
                          base_dir=None if base_dir is None else str(base_dir.resolve())):
            return
    if trace_path is not None:   # refused now, not after the frames are rendered
        from pipeline.files.publish import check_destination

        check_destination(trace_path, "--trace")
    with ctrl_c_deferred():   # the imports, the plan, the model's code: then the run watches signals itself
        from pipeline.config.task import frame_range, load_task_job
        from pipeline.gpu.device import pick_device
        from pipeline.plan import make_plan

        job = load_task_job(job_file, output_root=output_root, base_dir=base_dir)
        frames = None if frames_text is None else frame_range(job, frames_text)
        plan = make_plan(job, pick_device(device), resume=resume, frames=frames, video=frames is None,
                         across_devices=True)
        if dry_run:
            click.echo(plan.describe())
            return
        if not plan.todo and not plan.videos_to_write:
            click.echo(f"nothing to render: all {len(frames or job.shot.frames)} frame(s) of {job.shot.name} "
                       f"are finished and match the manifest in {plan.root}")
            return

        from pipeline.run import import_model_code, run_plan
        from pipeline.summary import format_summary

        import_model_code(plan)

    started = time.perf_counter()
    progress = Progress(job.shot.name, len(plan.todo), quiet=quiet)
    try:
        report = run_plan(plan, on_frame=progress.frame, trace_path=trace_path)
    finally:
        progress.close()
    click.echo(format_summary(plan, report, time.perf_counter() - started))


def run_in_session(folder: Path, quiet: bool, **request: Any) -> bool:
    """`render run --session`: the run rendered by the session's server, its progress and
    summary shown here; False, with a warning, where no server answers."""
    from pipeline.errors import SessionUnavailable
    from workers.session import run_in_session as hand_over

    progress: Progress | None = None
    try:
        for event in hand_over(folder, request):
            if "todo" in event:
                progress = Progress(event["name"], event["todo"], quiet=quiet)
            elif "frame" in event and progress is not None:
                progress.frame(event["frame"])
            elif "out" in event:
                click.echo(event["out"])
    except SessionUnavailable as why:
        click.echo(f"warning: {why}; rendering in this process instead", err=True)
        return False
    finally:
        if progress is not None:
            progress.close()
    return True


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block ends, then raise KeyboardInterrupt (main() says
    nothing was written). Raised in the middle of an import, it broke diffusers' lazy
    imports (a RecursionError and 100 lines of traceback) or was lost in them."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


class Progress:
    """A run's progress on stderr: a bar on a terminal; elsewhere (a log file, CI, a
    farm's log) a line every PERIOD_S seconds with frames done, rate and time left.
    Nothing is printed before the first frame is written, so an error while the model
    loads stands alone on its line."""

    PERIOD_S = 5.0

    def __init__(self, name: str, total: int, *, quiet: bool) -> None:
        self.name, self.total, self.quiet = name, total, quiet
        self.done = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.bar: Any = None

    def frame(self, _frame: int) -> None:
        if self.quiet or self.total == 0:
            return
        self.done += 1
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = click.progressbar(length=self.total, label=self.name, file=sys.stderr, show_pos=True,
                                             show_eta=True)
                self.bar.__enter__()
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.PERIOD_S or self.done == self.total:
            self.last_line = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            click.echo(f"{self.name}: {self.done}/{self.total} frames, {rate:.2f} frames/s, "
                       f"{int(left) // 60}:{int(left) % 60:02d} left", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@cli.command()
@click.argument("outdir", metavar="OUTDIR", type=click.Path(path_type=Path))
def verify(outdir: Path) -> None:
    """Check every output recorded in OUTDIR/manifest.jsonl against the file on disk.

    Exits 0 when every file is present with its recorded size and SHA-256, 1 otherwise.
    """
    from pipeline.errors import JobError
    from pipeline.files.manifest import MANIFEST_NAME
    from pipeline.files.manifest import verify as verify_outputs

    if not (outdir / MANIFEST_NAME).is_file():
        raise JobError("OUTDIR", str(outdir), f"has no {MANIFEST_NAME}; expected a render output root")
    checked, problems = verify_outputs(outdir)
    for problem in problems:
        click.echo(f"MISMATCH {problem}")
    if problems:
        raise VerifyFailed(problems)
    click.echo(f"ok: {checked} output(s) match the manifest")


@cli.command()
@click.argument("outdir", metavar="OUTDIR", type=click.Path(path_type=Path))
@click.option("--output", "-o", "dest", metavar="FILE.html", type=click.Path(path_type=Path), default=None,
              help="Where the page goes (default: OUTDIR-report.html beside OUTDIR, not inside it: "
                   "every file inside an output root has a manifest record).")
@click.option("--trace", "trace_path", metavar="FILE.json", type=click.Path(path_type=Path), default=None,
              help="A timeline `render run --trace` wrote: each track's busy time goes in the page.")
@click.option("--job", "job_file", metavar="JOB.toml", type=click.Path(path_type=Path), default=None,
              help="The job file: its settings go in the page.")
def report(outdir: Path, dest: Path | None, trace_path: Path | None, job_file: Path | None) -> None:
    """Write one self-contained HTML page of what the runs under OUTDIR did: frames over
    time, stage utilisation, energy, GPU-seconds and cost per frame, the outputs' check."""
    from pipeline.errors import JobError
    from pipeline.files.manifest import MANIFEST_NAME
    from pipeline.report import write_report

    if not (outdir / MANIFEST_NAME).is_file():
        raise JobError("OUTDIR", str(outdir), f"has no {MANIFEST_NAME}; expected a render output root")
    dest = dest or outdir.resolve().with_name(outdir.resolve().name + "-report.html")
    if dest.resolve().is_relative_to(outdir.resolve()):
        raise JobError("--output", str(dest), "is inside OUTDIR, where every file needs a manifest record "
                                              "(render verify would flag the page); put it beside OUTDIR")
    write_report(outdir, dest, trace_path, job_file, warn=lambda line: click.echo(f"warning: {line}", err=True))
    click.echo(f"wrote {dest}")


@cli.group()
def watermark() -> None:
    """Inspect the invisible watermark."""


@watermark.command("verify")
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", default=None, help="The watermark key the job used (default: the job default, "
              "'framefarm'). Prefer --key-env or --key-file: a command line is visible to other users.")
@click.option("--key-env", metavar="NAME", default=None, help="Read the key from this environment variable.")
@click.option("--key-file", metavar="PATH", type=click.Path(path_type=Path), default=None,
              help="Read the key from this file.")
@click.option("--expect", metavar="PAYLOAD", default=None,
              help="Count a file as marked only if it carries exactly this payload.")
@click.option("--max-frames", type=click.IntRange(1, 100_000), default=48, show_default=True,
              help="Video: frames read and combined.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file on stdout, as a list (an unreadable file's says why in \"error\").")
def watermark_verify(files: tuple[Path, ...], key: str | None, key_env: str | None, key_file: Path | None,
                     expect: str | None, max_frames: int, as_json: bool) -> None:
    """Look for the watermark in frames (PNG 8- or 16-bit, EXR, JPEG) or videos (MP4, MOV,
    MKV: up to --max-frames frames, their evidence combined). Prints found or not, the
    payload and a p-value: the chance that an unmarked input scores as high. Every file is
    checked and gets its line. Exit 1 if a file carries no mark (or not the --expect
    payload); 2 if a file could not be read."""
    import json

    from pipeline.errors import JobError
    from pipeline.watermark.code import BadPayload, payload_bytes
    from pipeline.watermark.detect import P_THRESHOLD

    secret = _verify_key(key, key_env, key_file)
    if expect is not None:
        try:
            payload_bytes(expect)
        except BadPayload as err:
            raise JobError("--expect", expect, str(err)) from None
        except UnicodeEncodeError:
            raise JobError("--expect", "(not UTF-8)", "expected UTF-8 text of at most 8 bytes") from None
    results: list[dict[str, Any]] = []
    unreadable: list[JobError] = []
    missing = 0
    for path in files:   # every file gets its verdict: one unreadable file does not hide the others'
        try:
            found = _detect_in_file(path, max_frames, secret)
        except JobError as err:
            unreadable.append(err)
            results.append({"file": str(path), "found": False, "error": err.allowed})
            if not as_json:
                click.echo(f"{path}: {err.allowed}")
            continue
        ok = found.found and (expect is None or found.payload == expect)
        missing += not ok
        results.append({"file": str(path), "found": ok, "payload": found.payload, "p_value": found.p_value,
                        "threshold": P_THRESHOLD, "frames": found.frames, "period": round(found.period, 3)})
        if not as_json:
            where = f"{found.frames} frame(s), p = {found.p_value:.2g}"
            if ok:
                click.echo(f"{path}: watermark found, payload {found.payload!r} ({where})")
            elif found.found:
                click.echo(f"{path}: watermark found with payload {found.payload!r}, not {expect!r} ({where})")
            else:
                click.echo(f"{path}: no watermark ({where}; found means p <= {P_THRESHOLD:g})")
    if as_json:
        click.echo(json.dumps(results, indent=1))
    _verify_verdict(len(files), unreadable, missing)


def _detect_in_file(path: Path, max_frames: int, secret: str) -> Detection:
    """The watermark evidence in one file; JobError naming the file when it cannot be read."""
    from pipeline.config.given_files import not_a_regular_file
    from pipeline.errors import JobError
    from pipeline.files.pictures import read_pictures
    from pipeline.watermark.detect import detect_frames

    problem = not_a_regular_file(path)   # a directory is one; a FIFO would block the reader
    if problem is not None:
        raise JobError("FILE", str(path), problem)
    try:
        return detect_frames(read_pictures(path, max_frames), secret)
    except Exception as err:
        raise JobError("FILE", str(path), f"cannot be read as an image or video ({type(err).__name__})") from None


def _verify_verdict(total: int, unreadable: Sequence[FramefarmError], missing: int) -> None:
    """The exit of `watermark verify`: 2 if a file could not be read, 1 if one carries no
    mark, with one line that sums up (each file has had its own)."""
    from pipeline.errors import UnreadableInputs

    unmarked = f"{missing} of {total} file(s) carry no watermark for this key"
    if len(unreadable) == 1 and total == 1:
        raise unreadable[0]
    if unreadable:
        raise UnreadableInputs(f"FILE: {len(unreadable)} of {total} file(s) cannot be read (why is on each "
                               "one's line above)" + (f"; {unmarked}" if missing else ""))
    if missing:
        raise FramefarmError(unmarked)


def _verify_key(key: str | None, key_env: str | None, key_file: Path | None) -> str:
    """The key from exactly one of the options (or the default); its text is never shown."""
    from pipeline.config.job import DEFAULT_KEY
    from pipeline.config.secret import key_from_env, key_from_file
    from pipeline.errors import JobError

    given = [name for name, value in (("--key", key), ("--key-env", key_env), ("--key-file", key_file))
             if value is not None]
    if len(given) > 1:
        raise JobError(given[1], "(not shown)", "give only one of --key, --key-env and --key-file")
    if key_env is not None:
        return key_from_env(key_env, "--key-env")
    if key_file is not None:
        return key_from_file(key_file, "--key-file")
    if key == "":   # an empty --key (an unset shell variable) must not quietly check with the default
        raise JobError("--key", "", "the key is empty; give the job's key, or leave --key out for the default")
    return DEFAULT_KEY if key is None else key


QUEUE_OPTION = click.option(
    "--queue", "queue_url", metavar="URL", envvar="FRAMEFARM_QUEUE", required=True,
    help="sqlite:///ABSOLUTE/PATH/farm.db or sqlite:RELATIVE/PATH/farm.db (one host; a relative path is "
         "read against the working directory), or redis://[USER:PASSWORD@]host:port/db, rediss://... "
         "(default: $FRAMEFARM_QUEUE). Only submit and worker create a SQLite queue.")


@cli.command()
@click.argument("job_file", metavar="JOB.toml", type=click.Path(path_type=Path))
@QUEUE_OPTION
@click.option("--chunk", default=1, show_default=True, type=click.IntRange(1, 10_000),
              help="Frames per task.")
@click.option("--priority", default=0, show_default=True, type=click.IntRange(-100, 100),
              help="Higher runs first.")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Leases of a task (failures and lost workers) before it is dead-lettered.")
@click.option("--frames", "frames_text", metavar="FRAMES", default=None,
              help="Queue only these frames of the shot, as `render run --frames` reads them (1001-1100, "
                   "1001-1100x4, 1001,1010,1020-1030); frame files only, no video.")
@click.option("--idempotency-key", metavar="KEY", default=None,
              help="Queue the job once per KEY: submitting again with a KEY the queue has seen queues nothing "
                   "and prints the id of the job queued then (a retried submit does not queue the shot twice).")
@click.option("--submitted-by", metavar="NAME", default=None,
              help="Who queued the job, as the monitor shows it (default: the OS user); the host is stored too.")
@click.option("--preview", default=0, show_default=True, type=click.IntRange(0, 100),
              help="Render N frames spread over the shot (first, last, between) before the rest, so a bad shot "
                   "is seen early.")
def submit(job_file: Path, queue_url: str, chunk: int, priority: int, max_attempts: int, frames_text: str | None,
           idempotency_key: str | None, submitted_by: str | None, preview: int) -> None:
    """Check JOB.toml like `render run` does, store it and queue its frames; print the job id
    (on stdout, alone) and the queue it went to (on stderr)."""
    from workers.submit import submit as submit_to_queue

    done = submit_to_queue(job_file, queue_url, chunk=chunk, priority=priority, max_attempts=max_attempts,
                           idempotency_key=idempotency_key, frames_text=frames_text, submitted_by=submitted_by,
                           preview=preview)
    if done.existing:
        click.echo(f"job {done.job_id} was queued earlier with this idempotency key on {done.queue}; "
                   "nothing queued now", err=True)
    else:
        click.echo(f"queued job {done.job_id}: {done.frames} frame(s) in {done.tasks} task(s) on {done.queue}",
                   err=True)
    click.echo(done.job_id)


@cli.command()
@QUEUE_OPTION
@click.option("--device", metavar="DEVICE", default=None, help="cuda:N or cpu (default: first GPU, else CPU).")
@click.option("--gpus", type=click.Choice(["all"]), default=None,
              help="Start one worker process per GPU (spawned, one device each).")
@click.option("--output-root", metavar="DIR", type=click.Path(path_type=Path), required=True,
              help="Refuse jobs whose outputs fall outside DIR.")
@click.option("--model-root", "model_roots", metavar="DIR", type=click.Path(path_type=Path), multiple=True,
              required=True, help="Refuse jobs whose model or pipeline lies outside DIR (repeatable).")
@click.option("--input-root", "input_roots", metavar="DIR", type=click.Path(path_type=Path), multiple=True,
              help="Refuse jobs whose latents or preset file lie outside DIR (repeatable; default: the "
                   "--model-root folders).")
@click.option("--slots", default=2, show_default=True, type=click.IntRange(1, 8),
              help="Tasks in flight at once, so the GPU has work while a task's last frames are written.")
@click.option("--lease", "lease_s", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Lease length in seconds; renewed every third of it while a task renders.")
@click.option("--max-job-failures", default=3, show_default=True, type=click.IntRange(1, 100),
              help="After a job failed this many times on this worker, the queue blocklists the worker "
                   "on it until `render requeue` (shown by `render status`).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--exit-when-idle", is_flag=True, help="Stop once the queue has no task left for this worker.")
@click.option("--name", default="", help="Worker name in status output (default: host/pid/device).")
@click.option("--traces", is_flag=True,
              help="Write each task's timeline (as `render run --trace`) to OUTPUT_ROOT-traces/ beside the "
                   "job's output root.")
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Write a 256-px JPEG of each frame to a .thumbnails folder beside it, for `render monitor`.")
def worker(queue_url: str, device: str | None, gpus: str | None, output_root: Path, model_roots: tuple[Path, ...],
           input_roots: tuple[Path, ...], slots: int, lease_s: float, max_job_failures: int,
           metrics_port: int | None, exit_when_idle: bool,
           name: str, traces: bool, thumbnails: bool) -> None:
    """Consume frame tasks until told to stop. SIGTERM drains: frames in flight finish,
    the rest of their tasks is released to other workers at once.

    Jobs outside --output-root, the --model-roots or the --input-roots are refused: their tasks are released
    untouched for other workers. A worker that refuses every job it sees exits with
    status 2 and one line naming the option."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if gpus == "all":
        from workers.gpus import run_per_gpu

        sys.exit(run_per_gpu(sys.argv[1:]))
    from workers.worker import WorkerConfig, run_worker

    state = run_worker(WorkerConfig(queue_url=queue_url, output_root=output_root, model_roots=model_roots,
                                    input_roots=input_roots,
                                    device=device, name=name, lease_s=lease_s, slots=slots,
                                    max_job_failures=max_job_failures, metrics_port=metrics_port,
                                    exit_when_idle=exit_when_idle, traces=traces, thumbnails=thumbnails))
    if state.error is not None:
        raise state.error


@cli.command()
@click.argument("job_id", metavar="[JOB]", required=False)
@QUEUE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(job_id: str | None, queue_url: str, as_json: bool) -> None:
    """Frames done, leased, pending, failed and cancelled per job; failed frames with
    their last error; workers blocklisted on a job; workers with their last heartbeat
    (gone when it is too old). Names the queue; refuses one that does not exist."""
    from workers.status import show_status

    click.echo(show_status(queue_url, job_id, as_json=as_json))


@cli.command()
@click.argument("job_id", metavar="JOB")
@QUEUE_OPTION
@click.option("--failed", is_flag=True, help="Only failed (dead-lettered) tasks; default: every unfinished task.")
def requeue(job_id: str, queue_url: str, failed: bool) -> None:
    """Queue a job's failed (or all unfinished) tasks again, with fresh attempts, and lift
    every worker's blocklisting of the job."""
    from workers.status import existing_job, guarded

    queue = existing_job(queue_url, job_id)
    with guarded(queue):
        [before] = queue.status(job_id)
        count = queue.requeue(job_id, failed_only=failed)
    lifted = f"; workers {', '.join(b['worker'] for b in before.blocked)} may take it again" if before.blocked else ""
    click.echo(f"requeued {count} task(s) of {job_id} in {queue.where}{lifted}")


@cli.command()
@click.argument("job_id", metavar="JOB")
@QUEUE_OPTION
def cancel(job_id: str, queue_url: str) -> None:
    """Drop a job's pending tasks; workers stop its leased ones at the next frame boundary
    and publish nothing more for it."""
    from workers.status import existing_job, guarded

    queue = existing_job(queue_url, job_id)
    with guarded(queue):
        count = queue.cancel(job_id)
    click.echo(f"cancelled {count} task(s) of {job_id} in {queue.where}")


@cli.command()
@QUEUE_OPTION
@click.option("--bind", "bind", metavar="HOST:PORT", default="127.0.0.1:8470", show_default=True,
              help="Where to listen. A non-loopback address needs --token.")
@click.option("--token", envvar="FRAMEFARM_MONITOR_TOKEN", default=None, metavar="TOKEN",
              help="Needed for actions (requeue, cancel, priority, pause, resume, drain), and for reading "
                   "when not bound to loopback (default: $FRAMEFARM_MONITOR_TOKEN).")
def monitor(queue_url: str, bind: str, token: str | None) -> None:
    """Serve a web page and a JSON API (under /api/) that show the farm's jobs, tasks and
    workers and steer them; Ctrl-C stops it."""
    from workers.monitor.serve import serve

    serve(queue_url, bind, token)


@cli.command()
@click.argument("job_file", metavar="JOB.toml", type=click.Path(path_type=Path))
@click.option("--chunk", default=8, show_default=True, type=click.IntRange(1, 10_000),
              help="Frames per task (the farm may size chunks differently; a clip is one task).")
@click.option("--output", "-o", "output", metavar="FILE", type=click.Path(path_type=Path), default=None,
              help="Write the template to FILE (YAML), its paths' defaults relative to FILE's folder (as OpenJD "
                   "reads them). Default: stdout, without defaults for the paths.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(0, 64),
              help="GPUs a host must have (host requirement amount.worker.gpu); 0: none, and the Device "
                   "parameter defaults to cpu.")
@click.option("--gpu-memory-gib", type=click.FloatRange(0.5, 4096), default=None,
              help="GPU memory a host must have (amount.worker.gpu.memory). Default: the job's "
                   "tuning.vram_budget_gib, which bounds the decode; give more for a job that generates.")
@click.option("--no-chunk-extension", is_flag=True,
              help="Give each task its range as a STRING parameter instead of the TASK_CHUNKING "
                   "extension's CHUNK[INT], for a runtime without that extension.")
def openjd(job_file: Path, chunk: int, output: Path | None, gpus: int, gpu_memory_gib: float | None,
           no_chunk_extension: bool) -> None:
    """Export JOB.toml as an Open Job Description template (jobtemplate-2023-09) for the
    farms studios already run (AWS Deadline Cloud, `openjd run`).

    The job is checked as `render run` checks it (exit 2 on bad input, nothing written). A
    Frames step renders chunks of frames (`render run --frames ... --resume`) in a render
    process kept for the session, and a Video step, after it, builds the MP4 from the
    published frames. The job file's text is embedded in the template (referenced by
    path instead when it holds '{{', which a template would read as an expression)."""
    from workers.openjd import export_template

    text = export_template(job_file, chunk=chunk, gpus=gpus, gpu_memory_gib=gpu_memory_gib,
                           chunk_extension=not no_chunk_extension, saved_in=None if output is None else output.parent)
    if output is None:
        click.echo(text, nl=False)
        return
    from pipeline.files.publish import publish_bytes

    publish_bytes(output, text.encode())
    click.echo(f"wrote {output}", err=True)


@cli.group()
def session() -> None:
    """The render process an OpenJD session keeps: `start` in the environment's onEnter,
    `stop` in its onExit; tasks hand it runs with `render run --session DIR`."""


@session.command("start")
@click.option("--dir", "folder", metavar="DIR", type=click.Path(path_type=Path), required=True,
              help="The session's working directory: the server's socket and log go there.")
@click.option("--idle-exit", "idle_exit_s", default=600.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Seconds without a run after which the server exits by itself (a session that ended "
                   "without its onExit must not keep the GPU).")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for the server to be ready.")
def session_start(folder: Path, idle_exit_s: float, timeout_s: float) -> None:
    """Start the session's render server in the background and wait until it is ready."""
    from workers.session import start_server

    click.echo(start_server(folder, idle_exit_s=idle_exit_s, timeout_s=timeout_s))


@session.command("stop")
@click.option("--dir", "folder", metavar="DIR", type=click.Path(path_type=Path), required=True,
              help="The session's working directory.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for a run in progress to stop at a frame boundary before the server is "
                   "killed.")
def session_stop(folder: Path, timeout_s: float) -> None:
    """Stop the session's render server: a run in progress stops at a frame boundary."""
    from workers.session import stop_server

    click.echo(stop_server(folder, timeout_s=timeout_s))


@session.command("serve", hidden=True)
@click.option("--dir", "folder", type=click.Path(path_type=Path), required=True)
@click.option("--idle-exit", "idle_exit_s", default=600.0, type=float)
def session_serve(folder: Path, idle_exit_s: float) -> None:
    """The server itself, in the foreground (`render session start` runs it)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    from workers.session_server import serve

    serve(folder, idle_exit_s)


def main() -> None:
    try:
        # Not cli.main(): it turns Ctrl-C into a blank line and Abort ("error: aborted")
        with cli.make_context("render", sys.argv[1:]) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as done:   # --help, --version
        sys.exit(done.exit_code)
    except click.exceptions.Abort:   # a prompt declined
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()} (see 'render --help')", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except FramefarmError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # before the pipeline started: nothing was written yet
        click.echo("error: interrupted before rendering started; nothing was written", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
