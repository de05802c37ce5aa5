"""Scalars to `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.

TensorBoard files are written with tensorboardX, which needs no TensorFlow (clu's writers
import it); images (the end-of-run plots, jssl.plots) go to its Images tab. Only process 0
writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os

import jax
from tensorboardX import SummaryWriter  # TensorFlow-free

from jssl import io

__all__ = ["MetricWriter", "METRICS_FILE", "EVAL_FILE"]

METRICS_FILE = "metrics.jsonl"  # training scalars, one object per logged step
EVAL_FILE = "eval.jsonl"  # evaluation scalars, one object per evaluation


class MetricWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        # A resumed run recomputes the steps after its checkpoint: drop their old lines so
        # the files read like the log of one uninterrupted run.
        for name in (METRICS_FILE, EVAL_FILE):
            path = os.path.join(workdir, name)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                kept = [
                    line
                    for line in f
                    if _step_of(line) is not None and _step_of(line) <= resume_step
                ]
            io.write_text(path, "".join(kept))
        # purge_step: TensorBoard hides the earlier events of steps the resumed run redoes
        # (no step shown twice after a resume).
        self._tb = SummaryWriter(
            logdir=os.path.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, scalars: dict, *, file: str = METRICS_FILE) -> None:
        """Append one JSON object {"step": step, **scalars} to `file`; scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _to_json(v) for k, v in scalars.items()})
        with open(os.path.join(self.workdir, file), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def write_image(self, step: int, tag: str, image) -> None:
        """One (H, W, 3) uint8 image to TensorBoard's Images tab under `tag` (e.g. a plot)."""
        if not self.enabled:
            return
        self._tb.add_image(tag, image, int(step), dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_json(v):
    v = float(v) if not isinstance(v, (str, bool)) else v
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def _step_of(line: str):
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
