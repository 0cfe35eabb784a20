"""Prometheus metrics of one worker: frames done and failed, task latency, queue depth,
and the GPU's utilisation and memory through NVML (pynvml, from nvidia-ml-py); the
last GPU reading (with its temperature) also goes out with the worker's heartbeat.

With no port the metrics are still counted (the worker reads them) but not served.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .tasks import TaskQueue

# The queue depth is the farm's, not this worker's: every worker of a farm reads it, so it is
# read at most this often (a Prometheus scrape is 15-60 s apart), not at each heartbeat.
QUEUE_DEPTH_EVERY_S = 15.0


class WorkerMetrics:
    def __init__(self, port: int | None, device: torch.device, queue: TaskQueue) -> None:
        self.registry = CollectorRegistry()
        self.queue = queue
        self.frames_done = Counter("framefarm_frames_done", "Frames rendered and published", registry=self.registry)
        self.tasks_failed = Counter("framefarm_tasks_failed", "Tasks that failed on this worker",
                                    registry=self.registry)
        self.task_seconds = Histogram("framefarm_task_seconds", "Wall time of a task, lease to ack",
                                      buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=self.registry)
        self.queue_depth = Gauge("framefarm_queue_pending_frames", "Frames waiting in the queue, all jobs",
                                 registry=self.registry)
        self.gpu_utilisation = Gauge("framefarm_gpu_utilisation", "GPU busy fraction (NVML), 0-1",
                                     registry=self.registry)
        self.gpu_memory = Gauge("framefarm_gpu_memory_bytes", "GPU memory in use (NVML)", registry=self.registry)
        # per job: what its tasks on this worker measured (NVML's energy counter, the GPU's wall time)
        self.energy = Counter("framefarm_energy_joules", "GPU energy of this worker's tasks, by job", ["job"],
                              registry=self.registry)
        self.gpu_seconds = Counter("framefarm_gpu_seconds", "GPU-seconds of this worker's tasks, by job", ["job"],
                                   registry=self.registry)
        self._nvml_handle = _nvml_handle(device)
        # the last NVML reading, sent with the heartbeat for `render monitor`; None without NVML (CPU)
        self.gpu: dict[str, float] | None = None
        self._depth_read: float | None = None   # time.monotonic() of the last queue-depth reading
        if port is not None:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def sample(self) -> None:
        """Refresh the gauges (called with each heartbeat, in a worker thread)."""
        now = time.monotonic()
        if self._depth_read is None or now - self._depth_read >= QUEUE_DEPTH_EVERY_S:
            self._depth_read = now
            self.queue_depth.set(self.queue.pending_frames())
        if self._nvml_handle is not None:
            import pynvml

            utilisation = pynvml.nvmlDeviceGetUtilizationRates(self._nvml_handle).gpu / 100
            memory = pynvml.nvmlDeviceGetMemoryInfo(self._nvml_handle)
            temperature = pynvml.nvmlDeviceGetTemperature(self._nvml_handle, pynvml.NVML_TEMPERATURE_GPU)
            self.gpu_utilisation.set(utilisation)
            self.gpu_memory.set(memory.used)
            self.gpu = {"utilisation": utilisation, "memory_used": memory.used, "memory_total": memory.total,
                        "temperature_c": temperature}


    def task_done(self, job_id: str, energy_j: float | None, gpu_s: float | None) -> None:
        """A task's figures; nothing where they were not measured (the CPU): never zero."""
        if energy_j is not None:
            self.energy.labels(job=job_id).inc(max(energy_j, 0.0))
        if gpu_s is not None:
            self.gpu_seconds.labels(job=job_id).inc(gpu_s)


def _nvml_handle(device: torch.device) -> Any:
    if device.type != "cuda":
        return None
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    return None
