"""Helpers shared by the studies: a finished run's results, and mean/spread over seeds."""
from __future__ import annotations

import json
import os
import statistics

from jssl import train

__all__ = ["load_results", "stats"]


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
