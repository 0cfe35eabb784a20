"""The closing summary of a run: what was made, how fast, and where the time went."""

from __future__ import annotations

from pipeline.plan import Plan
from pipeline.run import RunReport, run_record


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
    lines.append(energy_line(plan, report))
    outputs = []
    if plan.frame_format is not None and plan.frame_paths:
        outputs.append(f"{len(plan.frame_paths)} {plan.frame_format.name.upper()} under {plan.root}")
    for video in plan.videos_to_write:
        outputs.append(f"video {video.path}")
    outputs.append(f"manifest {plan.root / 'manifest.jsonl'}")
    lines.append("outputs: " + "; ".join(outputs))
    return "\n".join(lines)


def energy_line(plan: Plan, report: RunReport) -> str:
    """Joules, GPU-seconds and money, each per frame; "not measured" where there is no figure."""
    record = run_record(plan, report)

    def figure(total: float | None, each: float | None, unit: str, digits: int = 1) -> str:
        if total is None:
            return f"{unit}: not measured"
        return f"{unit}: {total:.{digits}f}" + (f" ({each:.{digits + 2}f} a frame)" if each is not None else "")

    parts = [figure(record["energy_j"], record["j_per_frame"], "energy J"),
             figure(record["gpu_s"], record["gpu_s_per_frame"], "GPU-seconds")]
    if "cost" in record:
        parts.append(figure(record["cost"], record["cost_per_frame"], f"cost {record['currency']}".rstrip(), 4))
    return "; ".join(parts) + ("" if plan.device.type == "cuda" else f" (on {plan.device.type})")
