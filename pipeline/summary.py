"""The closing summary of a run: what was made, how fast, and where the time went."""

from __future__ import annotations

from pipeline.plan import Plan
from pipeline.run import RunReport


def format_summary(plan: Plan, report: RunReport, total_s: float) -> str:
    shot = plan.job.shot
    lines = [
        f"rendered {report.frames} frame(s) of {shot.name} ({shot.width}x{shot.height}) on "
        f"{report.device} in {total_s:.1f} s: {report.fps:.2f} frames/s after a "
        f"{report.load_s:.1f} s model load"
        + (f"; {report.skipped} frame(s) already finished" if report.skipped else ""),
        "stage        busy s   waiting s   blocked s   (waiting: for input; blocked: on output)",
    ]
    for name, figures in report.stages.items():
        lines.append(f"{name:<10} {figures['busy_s']:>8.2f} {figures['waiting_s']:>11.2f} "
                     f"{figures['blocked_s']:>11.2f}")
    generate = report.stages.get("generate")
    if generate is not None and report.render_s > 0:
        lines.append(f"generation: {generate['busy_s']:.1f} s of {report.render_s:.1f} s "
                     f"({100 * generate['busy_s'] / report.render_s:.0f}% of the render)")
    busy = report.stages.get("decode", {}).get("gpu_busy_fraction")
    if busy is not None:
        lines.append(f"GPU compute stream busy {100 * busy:.1f}% from the first decode to the last")
    decode = report.stages.get("decode", {})
    if "tile_batches" in decode:
        lines.append(f"decode: {decode['tile_batches']} batch(es) of tiles, up to {decode['batch_size']} "
                     f"a batch; {decode['oom_splits']} re-split(s) after running out of memory")
    writers = plan.job.tuning.writers()
    if writers > 1:
        lines.append(f"(write times are summed over {writers} writer tasks)")
    outputs = []
    if plan.frame_format is not None and plan.frame_paths:
        outputs.append(f"{len(plan.frame_paths)} {plan.frame_format.name.upper()} under {plan.root}")
    for video in plan.videos_to_write:
        outputs.append(f"video {video.path}")
    outputs.append(f"manifest {plan.root / 'manifest.jsonl'}")
    lines.append("outputs: " + "; ".join(outputs))
    return "\n".join(lines)
