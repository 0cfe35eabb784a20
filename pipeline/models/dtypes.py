"""The torch dtype of each precision a job may name (`pipeline.config.job.DTYPE_NAMES`)."""

from __future__ import annotations

import torch

from pipeline.config.job import DTYPE_NAMES

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
