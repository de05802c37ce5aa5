"""Helpers shared by the studies (docs/studies.md): running their sub-runs (a finished run
is reused), mean / spread / paired differences over seeds with t-based 95% intervals,
choosing a hyperparameter on validation, the verdict line, and the provenance (command,
device count, commit) every study records."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time

import jax
import ml_collections
from scipy import stats as scipy_stats

from jssl import train
from jssl.errors import ConfigError

__all__ = [
    "run_all",
    "stats",
    "paired",
    "t_interval",
    "choose",
    "verdict",
    "provenance",
    "check_seeds",
    "fmt_diff",
    "run_base",
]


def run_base(config):
    """The study config as a plain run's: an unlocked deep copy without the study fields
    (`study`, `compare`), the random-init evaluation off (arms turn it on where needed)."""
    c = ml_collections.ConfigDict(config.to_dict())
    del c["study"]
    del c["compare"]
    c.eval.random_init_baseline = False
    return c


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t-based interval mean ± t(1 - (1 - level) / 2, n - 1) * sd / sqrt(n) of `values`
    (docs/studies.md rule 5); (nan, nan) for fewer than 2 values."""
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    mean = statistics.mean(values)
    half = (
        float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    )
    return (mean - half, mean + half)


def stats(values: list[float]) -> dict:
    """{"mean", "std" (sample standard deviation; 0.0 for one value), "values"}."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired(a: list[float], b: list[float]) -> dict:
    """`stats` of the differences a_i - b_i (paired by seed), "higher": how many are > 0, and
    "ci": their t-based 95% interval [lo, hi] (`t_interval`)."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired differences need two equally long non-empty lists, got "
            f"{len(a)} and {len(b)} values"
        )
    d = stats([x - y for x, y in zip(a, b)])
    return {**d, "higher": sum(x > 0 for x in d["values"]), "ci": list(t_interval(d["values"]))}


def fmt_diff(d: dict, scale: float = 100.0, unit: str = "points") -> str:
    """'+1.23 [-0.45, +2.91] points (higher in 3 of 5)' for a `paired` result (values times
    `scale`, then `unit`)."""
    lo, hi = d["ci"]
    ci = f"[{scale * lo:+.2f}, {scale * hi:+.2f}]" if math.isfinite(lo) else "[no interval]"
    unit = f" {unit}" if unit else ""
    return f"{scale * d['mean']:+.2f} {ci}{unit} (higher in {d['higher']} of {len(d['values'])})"


def verdict(
    claim: str, d: dict, *, blocked: str | None = None, scale: float = 100.0, unit: str = "points"
) -> str:
    """The study's line for one claim "A is better than B", from the paired differences
    A - B (`paired`): "holds" when the 95% interval lies above 0, "does not hold" when it lies
    below 0, "inconclusive at this scale" when it contains 0, or when `blocked` (the reason a
    manipulation check failed) is given. The differences are printed times `scale`, in
    `unit` (`fmt_diff`)."""
    lo, hi = d["ci"]
    interval = f"A - B = {fmt_diff(d, scale, unit)}"
    if blocked:
        return f"Verdict: {claim}: inconclusive at this scale ({blocked}; {interval})."
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"Verdict: {claim}: inconclusive at this scale (fewer than 2 seeds; {interval})."
    if lo > 0:
        return f"Verdict: {claim}: holds (the 95% interval lies above 0; {interval})."
    if hi < 0:
        return f"Verdict: {claim}: does not hold (the 95% interval lies below 0; {interval})."
    return (
        f"Verdict: {claim}: inconclusive at this scale (the 95% interval contains 0; {interval})."
    )


def choose(grid: dict, scores: dict) -> tuple:
    """The grid value with the highest validation score: `grid` {label: value}, `scores`
    {label: score}; ties go to the first label in grid order. Returns (label, value)."""
    best = max(grid, key=lambda k: (scores[k], -list(grid).index(k)))
    return best, grid[best]


def check_seeds(seeds, field: str = "config.compare.seeds") -> tuple:
    """`seeds` as a tuple of distinct ints, or a ConfigError naming `field`."""
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{field}: must be a non-empty tuple of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{field}: {seeds!r} repeats a seed")
    return seeds


def provenance() -> dict:
    """What reruns a study (docs/studies.md rule 8): the command line, the device count and
    kind, and the commit of the jssl checkout (None outside a git checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("jssl", "main.py")):
        argv[0] = "-m jssl.main"
    return {
        "command": " ".join(["python"] + argv),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "commit": commit,
        "uncommitted_changes": dirty,
    }


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
