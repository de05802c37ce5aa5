"""Helpers shared by the studies: running their sub-runs (a finished run is reused), and
mean / spread / paired differences over seeds."""

from __future__ import annotations

import statistics
import time

from jssl import train
from jssl.errors import ConfigError

__all__ = ["run_all", "stats", "paired"]


def stats(values: list[float]) -> dict:
    """{"mean", "std" (sample standard deviation; 0.0 for one value), "values"}."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired(a: list[float], b: list[float]) -> dict:
    """`stats` of the differences a_i - b_i (paired by seed), and "higher": how many are > 0."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired differences need two equally long non-empty lists, got "
            f"{len(a)} and {len(b)} values"
        )
    d = stats([x - y for x, y in zip(a, b)])
    return {**d, "higher": sum(x > 0 for x in d["values"])}


def run_all(runs: list[dict], label) -> dict:
    """{workdir: results} of every run (dicts with "workdir", "config", optional "needs"), in
    order: a finished run (`train.finished_results`) is reused, any other run is trained
    (resuming from its checkpoint) with one progress line `[i/n] <label(run)> -> <workdir>`
    and its time. A run whose "needs" workdir has not finished is a ConfigError naming both."""
    results = {}
    for i, r in enumerate(runs):
        done = train.finished_results(r["workdir"], r["config"])
        if done is None:
            t0 = time.perf_counter()
            print(f"[{i + 1}/{len(runs)}] {label(r)} -> {r['workdir']}", flush=True)
            if r.get("needs") and train.finished_results(r["needs"]) is None:
                raise ConfigError(f"{r['workdir']} needs the finished run {r['needs']}")
            done = train.train_and_evaluate(r["config"], r["workdir"])
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
        results[r["workdir"]] = done
    return results
