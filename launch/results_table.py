"""Run every method config on the embedded data over several seeds; write the results table.

  python launch/results_table.py --out docs/results.md --seeds 0 1 2 [--steps N] [--methods a b]

Each row is `python -m jssl.main --config configs/<method>.py --workdir <runs>/<method>_s<seed>
--config.seed=<seed> [--config.total_steps=N]`, run one after another; a finished workdir is
reused (its results.json read), so an interrupted table resumes. The table reports the mean
and the spread (sample standard deviation) over seeds of the k-NN and linear-probe test
accuracies, with the command that reproduces each row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ["simclr", "mocov2", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg", "swav",
           "dino", "wmse", "dcl", "supcon", "rotation", "jigsaw", "jigsaw_pp"]
# solo-learn's published CIFAR-10 top-1 (ResNet-18, 1000 epochs; README of
# github.com/vturrisi/solo-learn at 9187ea3). Reference only: jssl cannot train on CIFAR-10
# here (no download), and the embedded data set is a different task.
NOTES = {"supcon": " (uses the labels)"}  # shown after the method's name
SOLO_CIFAR10 = {"barlow_twins": 92.10, "byol": 92.58, "dino": 89.52, "mocov2": 92.94,
                "mocov3": 93.10, "simclr": 90.74, "simsiam": 90.51, "supcon": 93.82,
                "swav": 89.17, "vicreg": 92.07, "wmse": 88.67}


def _command(method: str, seed: int, workdir: str, steps: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "jssl.main", "--config", f"configs/{method}.py",
           "--workdir", workdir, f"--config.seed={seed}", "--config.progress=False",
           "--config.eval.random_init_baseline=False"]
    if steps:
        cmd.append(f"--config.total_steps={steps}")
    return cmd


def run(method: str, seed: int, runs: str, steps: int | None) -> dict | None:
    """The results of one run (reused when its results.json exists); None if it failed."""
    workdir = os.path.join(runs, f"{method}_s{seed}")
    results = os.path.join(workdir, "results.json")
    if not os.path.exists(results):
        start = time.perf_counter()
        done = subprocess.run(_command(method, seed, workdir, steps), check=False)
        print(f"{method} seed {seed}: {time.perf_counter() - start:.0f} s"
              + ("" if done.returncode == 0 else f" FAILED (exit {done.returncode})"), flush=True)
        if done.returncode != 0:
            return None
    with open(results) as f:
        return json.load(f)


def _cell(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f} (1 seed)"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--runs", default="runs/table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override total_steps")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()

    rows, raw = [], {}
    for method in args.methods:
        results = [r for r in (run(method, seed, args.runs, args.steps) for seed in args.seeds)
                   if r is not None]
        if not results:
            rows.append(f"| {method} | failed | failed | - | - | see the log |")
            continue
        if len(results) < len(args.seeds):
            method_note = f" ({len(results)} of {len(args.seeds)} seeds ran)"
        else:
            method_note = ""
        knn = [r["eval"]["knn_accuracy"] for r in results]
        lin = [r["eval"]["linear_accuracy"] for r in results]
        secs = statistics.mean(r["train_time_s"] for r in results)
        raw[method] = {"knn": knn, "linear": lin, "train_time_s": secs}
        steps = f" --config.total_steps={args.steps}" if args.steps else ""
        command = (f"`python -m jssl.main --config configs/{method}.py --workdir runs/{method} "
                   f"--config.seed=S{steps}`")
        solo = SOLO_CIFAR10.get(method)
        rows.append(f"| {method}{NOTES.get(method, '')}{method_note} | {_cell(knn)} | {_cell(lin)} | {secs:.0f} | "
                    f"{solo if solo else '-'} | {command} |")

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("| method | k-NN test acc. % | linear probe test acc. % | train s/run | "
                "solo-learn CIFAR-10 top-1 % (reference) | command (S = seed) |\n")
        f.write("|---|---|---|---|---|---|\n")
        f.write("\n".join(rows) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"seeds": args.seeds, "steps": args.steps, "results": raw}, f, indent=1)
    print(open(args.out).read())


if __name__ == "__main__":
    main()
