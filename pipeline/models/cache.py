"""Models kept loaded between runs of one process (a farm worker renders many tasks with
the same model): VAEs and generation pipelines, least recently used first out."""

from __future__ import annotations

import threading

import torch

from pipeline.models.generation import Pipeline, PipelineInfo, load_pipeline
from pipeline.models.vae import Vae, VaeInfo, load_vae


class ModelCache:
    """Loaded VAEs kept between runs of one process (a farm worker renders many tasks
    with the same model): keyed by folder, content hash, dtype, device and tiling; and
    beside them the generation pipelines (`pipelines`)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.pipelines = PipelineCache()  # generation pipelines, for jobs that generate
        self._models: dict[tuple, Vae] = {}
        self._lock = threading.Lock()  # two tasks in flight must not load the model twice
        self.loads = 0

    def get(self, info: VaeInfo, content_hash: str, dtype: str, device: torch.device,
            tiling: bool) -> Vae:
        key = (str(info.path), content_hash, dtype, str(device), tiling)
        with self._lock:
            model = self._models.pop(key, None)
            if model is None:
                model = load_vae(info, dtype, device, tiling)
                self.loads += 1
            self._models[key] = model  # most recently used last
            while len(self._models) > self.capacity:
                self._models.pop(next(iter(self._models)))
            return model


class PipelineCache:
    """Loaded pipelines kept between runs of one process (a farm worker): keyed by
    folder, fingerprint, dtype, device and scheduler; the least recently used goes."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._pipes: dict[tuple, Pipeline] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, info: PipelineInfo, dtype: str, device: torch.device, scheduler: str | None,
            graphs: bool = False) -> Pipeline:
        key = (str(info.path), info.fingerprint, dtype, str(device), scheduler, graphs)
        with self._lock:
            pipe = self._pipes.pop(key, None)
            if pipe is None:
                while len(self._pipes) >= self.capacity:  # free memory before loading the next
                    self._pipes.pop(next(iter(self._pipes)))
                pipe = load_pipeline(info, dtype, device, scheduler, graphs)
                self.loads += 1
            self._pipes[key] = pipe
            return pipe
