"""Scalars to `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.

TensorBoard files are written with tensorboardX, which needs no TensorFlow (clu's writers
import it); images (the end-of-run plots, jssl.plots) go to its Images tab. Only process 0
writes; other processes get a writer that does nothing. Every file goes through
`jssl.paths`: with a `gs://` workdir the event files are written in a local temporary
directory and copied to `<workdir>/tensorboard/` after every write (no Cloud Storage
client needed), and the JSON lines files are rewritten whole (a bucket cannot append).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import jax
from tensorboardX import SummaryWriter  # TensorFlow-free

from jssl import io, paths

__all__ = ["MetricWriter", "METRICS_FILE", "EVAL_FILE"]

METRICS_FILE = "metrics.jsonl"  # training scalars, one object per logged step
EVAL_FILE = "eval.jsonl"  # evaluation scalars, one object per evaluation


class MetricWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self._tb = None
        self._tb_local = None  # a gs:// workdir: the local directory the events go to first
        if not self.enabled:
            return
        paths.makedirs(workdir)
        # A resumed run recomputes the steps after its checkpoint: drop their old lines so
        # the files read like the log of one uninterrupted run.
        for name in (METRICS_FILE, EVAL_FILE):
            path = os.path.join(workdir, name)
            if not paths.exists(path):
                continue
            with paths.open_file(path) as f:
                kept = [
                    line
                    for line in f
                    if _step_of(line) is not None and _step_of(line) <= resume_step
                ]
            io.write_text(path, "".join(kept))
        # purge_step: TensorBoard hides the earlier events of steps the resumed run redoes
        # (no step shown twice after a resume).
        logdir = os.path.join(workdir, "tensorboard")
        if paths.is_remote(workdir):
            # This writer's event file goes up whole after each write; a resumed run's
            # earlier files stay in the bucket (TensorBoard reads every file of the dir).
            self._tb_local = tempfile.mkdtemp(prefix="jssl-tensorboard-")
        self._tb = SummaryWriter(
            logdir=self._tb_local or logdir,
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, scalars: dict, *, file: str = METRICS_FILE) -> None:
        """Append one JSON object {"step": step, **scalars} to `file`; scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _to_json(v) for k, v in scalars.items()})
        paths.append_text(os.path.join(self.workdir, file), json.dumps(row) + "\n")
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, int(step))
        self._flush()

    def _flush(self) -> None:
        self._tb.flush()
        if self._tb_local is None:
            return
        logdir = os.path.join(self.workdir, "tensorboard")
        for name in os.listdir(self._tb_local):
            local = os.path.join(self._tb_local, name)
            io.write_with(os.path.join(logdir, name), lambda tmp: shutil.copyfile(local, tmp))

    def write_image(self, step: int, tag: str, image) -> None:
        """One (H, W, 3) uint8 image to TensorBoard's Images tab under `tag` (e.g. a plot)."""
        if not self.enabled:
            return
        self._tb.add_image(tag, image, int(step), dataformats="HWC")
        self._flush()

    def close(self) -> None:
        if self._tb is not None:
            self._flush()
            self._tb.close()
            self._tb = None
        if self._tb_local is not None:
            shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb_local = None


def _to_json(v):
    v = float(v) if not isinstance(v, (str, bool)) else v
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def _step_of(line: str):
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
