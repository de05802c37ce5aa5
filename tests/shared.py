"""Helpers the test files share: smoke configs, metrics files, and the finished runs that
several files read (built once per test session, whatever worker process asks first).

Training the same smoke run in many tests cost most of the suite's time (each run compiles
its step, evaluation and random-init baseline). `SHARED_RUNS` names the few runs the suite
reads; the `shared_run` fixture (tests/conftest.py) builds each at most once per session
into a directory every pytest-xdist worker sees, under a file lock, and hands tests its
(config, workdir). Tests only read it; a test that changes a run (resume, a second start,
--mode=eval) copies it first (`copy_run`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

from jssl import config as jc

# name -> (config file, overrides of its smoke preset). Four steps, every step logged, a
# checkpoint every two: what the train-loop, resume, CLI, multi-host, export and plot tests
# need of a finished run.
SHARED_RUNS = {
    "barlow_twins": (
        "barlow_twins",
        {"total_steps": 4, "log_every": 1, "checkpoint_every": 2, "plots": True},
    ),
    "simclr": (
        "simclr",
        {
            "total_steps": 4,
            "log_every": 1,
            "checkpoint_every": 2,
            "eval.random_init_baseline": False,
        },
    ),
}


def smoke(name: str = "barlow_twins", **overrides):
    """configs/<name>.py:smoke without the random-init baseline, with dotted overrides
    (`smoke("simclr", **{"eval.max_examples": 64})`)."""
    c = jc.load_file(name, "smoke")
    c.eval.random_init_baseline = False
    for k, v in overrides.items():
        target = c
        *path, last = k.split(".")
        for p in path:
            target = target[p]
        target[last] = v
    return c


def shared_config(name: str):
    file, overrides = SHARED_RUNS[name]
    c = smoke(file, **overrides)
    c.eval.random_init_baseline = overrides.get("eval.random_init_baseline", True)
    return c


def read_metrics(workdir: str, file: str = "metrics.jsonl") -> list[dict]:
    with open(os.path.join(workdir, file)) as f:
        return [json.loads(line) for line in f]


def copy_run(workdir: str, dest) -> str:
    """A private copy of a shared run, to change."""
    shutil.copytree(workdir, dest)
    return str(dest)


def build_shared(root: str, name: str) -> tuple:
    """(config, workdir) of the shared run `name` under `root`, trained by the first caller
    of the session (an exclusive lock on `root/<name>.lock` while it trains)."""
    from jssl import train

    os.makedirs(root, exist_ok=True)
    workdir = os.path.join(root, name)
    config = shared_config(name)
    with open(os.path.join(root, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if train.finished_results(workdir, config) is None:
                train.train_and_evaluate(config, workdir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return config, workdir
