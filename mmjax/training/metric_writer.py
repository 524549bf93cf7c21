"""Writes scalar metrics to `metrics.jsonl` (one JSON object per line) and TensorBoard events.

Only process 0 writes: in a multi-host run every process holds the same (replicated) metrics, and
one copy is what a reader wants.

The log stays valid JSON lines whatever happens to the process:
  - Each line goes to the file in one `write` call on a file opened for appending, so a process
    killed between two lines leaves whole lines only (a signal, even SIGKILL, ends the process
    between system calls, not in the middle of a write to a local file).
  - A line cut short anyway (power loss, a full disk) is removed when the next run opens the log.
  - A resumed run first drops the lines of steps after the checkpoint it resumes from: those steps
    are trained again, and the log keeps one line per step of the run that produced the final
    state (the rewrite goes through a temporary file and a rename). TensorBoard is told the same
    (`purge_step`), so its curves do not fold back on themselves either.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping

import jax

from mmjax.evaluation.report import write_text_atomically


class MetricWriter:
    """Appends `{"step": s, name: value, ...}` lines to `<workdir>/metrics.jsonl`.

    Args:
      workdir: the run folder.
      start_step: the step the run starts from (0 for a new run, the checkpoint's step when
        resuming); lines of later steps are removed first.
      enabled: write at all (default: process 0 only).
    """

    def __init__(self, workdir: str, start_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._fd: int | None = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            truncate_log(self.path, start_step)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            SummaryWriter = _import_summary_writer()
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in metrics.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self._tb.add_scalar(name, value, int(step))
        line = (json.dumps(row) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk takes part of a line: do not leave it half there
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(f"{self.path}: wrote {written} of {len(line)} bytes (is the disk full?)")

    def close(self) -> None:
        if self.enabled and self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._tb.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def truncate_log(path: str, after_step: int) -> None:
    """Drops the lines of `path` for steps after `after_step` and any line that is not whole JSON.

    A run that starts from scratch (`after_step` = 0) in a folder whose earlier run crashed before
    its first checkpoint clears the log: those steps were lost with it.
    """
    if not os.path.exists(path):
        return
    with open(path, "rb") as file:
        data = file.read()
    kept, dropped_partial, dropped_later = [], 0, 0
    for raw in data.splitlines(keepends=True):
        try:
            row = json.loads(raw)
            whole = raw.endswith(b"\n") and isinstance(row, dict)
        except ValueError:
            whole = False
        if not whole:
            dropped_partial += 1
        elif isinstance(row.get("step"), int) and row["step"] > after_step:
            dropped_later += 1
        else:
            kept.append(raw)
    if dropped_partial or dropped_later:
        write_text_atomically(path, b"".join(kept).decode("utf-8"))
    if dropped_partial:
        print(f"Warning: removed {dropped_partial} incomplete line(s) from {path} (cut short by a crash).",
              file=sys.stderr)


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports PyTorch, when it is installed, only to recognise torch tensors among the
    values it logs; that import takes longer (1.7 s) than the rest of the writer, at the start of
    every run. These are Python floats, so PyTorch is hidden from that one import (a later
    `import torch` elsewhere works as usual).
    """
    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter

