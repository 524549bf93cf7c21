"""Writes scalar metrics to `metrics.jsonl` (one JSON object per line) and TensorBoard events.

Only process 0 writes: in a multi-host run every process holds the same (replicated) metrics, and
one copy is what a reader wants. Each JSONL line is flushed as it is written, so a crashed run keeps
every line logged before the crash.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in metrics.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self._tb.add_scalar(name, value, int(step))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
