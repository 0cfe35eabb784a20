"""`render worker --gpus all`: one worker process per GPU, each pinned to its device.

Processes are started fresh (subprocess, never fork: CUDA does not survive a fork),
and SIGTERM / Ctrl-C are passed on so every worker drains.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import torch


def run_per_gpu(argv: list[str]) -> int:
    count = torch.cuda.device_count()
    if count == 0:
        from pipeline.errors import JobError

        raise JobError("--gpus", "all", "no CUDA device on this machine; use --device cpu")
    base = without_gpus_option(argv)
    children = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *base, "--device", f"cuda:{index}"])
                for index in range(count)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


def without_gpus_option(argv: list[str]) -> list[str]:
    """argv less `--gpus all` / `--gpus=all` (and nothing else: `--name all` stays)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out
