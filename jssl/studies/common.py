"""Helpers shared by the studies: running their sub-runs, a finished run's results, and
mean/spread over seeds."""
from __future__ import annotations

import json
import os
import statistics
import time

from jssl import train

__all__ = ["load_results", "run_all", "stats"]


def load_results(workdir: str) -> dict | None:
    """The results.json of the run in `workdir`, or None if it has not finished."""
    path = os.path.join(workdir, train.RESULTS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def stats(values: list[float]) -> dict:
    """{"mean", "std" (sample standard deviation; 0.0 for one value), "values"}."""
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def run_all(runs: list[dict], label) -> dict:
    """{workdir: results} of every run (dicts with "workdir", "config", optional "needs"), in
    order: a finished run's results.json is reused, any other run is trained (resuming from
    its checkpoint) with one progress line `[i/n] <label(run)> -> <workdir>` and its time. A
    run whose "needs" workdir has not finished is a ConfigError naming both."""
    from jssl.config import ConfigError

    results = {}
    for i, r in enumerate(runs):
        done = load_results(r["workdir"])
        if done is None:
            t0 = time.perf_counter()
            print(f"[{i + 1}/{len(runs)}] {label(r)} -> {r['workdir']}", flush=True)
            if r.get("needs") and load_results(r["needs"]) is None:
                raise ConfigError(f"{r['workdir']} needs the finished run {r['needs']}")
            done = train.train_and_evaluate(r["config"], r["workdir"])
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        results[r["workdir"]] = done
    return results
