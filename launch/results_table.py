"""Run every zoo config on the embedded data over several seeds; write the results table.

  python launch/results_table.py --out docs/results.md --seeds 0 1 2 [--steps N] [--methods a b]

The rows are the shipped configs that declare `ZOO` (`jssl.config.zoo()`): a new method's
config puts it in the table, with its reference number; a row "<config>:<preset>" (from the
config's `ZOO["presets"]`, e.g. "dino:vit") runs that preset of the config.

Each row is `python -m jssl.main --config configs/<method>.py --workdir <runs>/<method>_s<seed>
--config.seed=<seed> [--config.total_steps=N]`, run one after another; a finished workdir is
reused (its results.json read), so an interrupted table resumes. The table reports the mean
and the spread (sample standard deviation) over seeds of the k-NN and linear-probe test
accuracies, with the command that reproduces each row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from jssl import config as jc
from jssl import io, train
from jssl.studies.common import stats


def _config_arg(row: str) -> str:
    name, preset = jc.split_row(row)
    return jc.config_file(name) + (f":{preset}" if preset else "")


def _command(method: str, seed: int, workdir: str, steps: int | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "jssl.main",
        "--config",
        _config_arg(method),
        "--workdir",
        workdir,
        f"--config.seed={seed}",
        "--config.progress=False",
        "--config.eval.random_init_baseline=False",
    ]
    if steps:
        cmd.append(f"--config.total_steps={steps}")
    return cmd


def run(method: str, seed: int, runs: str, steps: int | None) -> dict | None:
    """The results of one run (reused when its results.json exists); None if it failed."""
    workdir = os.path.join(runs, f"{method.replace(':', '_')}_s{seed}")
    config = jc.load_file(*jc.split_row(method))
    if steps:
        config.total_steps = steps
    results = train.finished_results(workdir, config)
    if results is None:
        start = time.perf_counter()
        done = subprocess.run(_command(method, seed, workdir, steps), check=False)
        print(
            f"{method} seed {seed}: {time.perf_counter() - start:.0f} s"
            + ("" if done.returncode == 0 else f" FAILED (exit {done.returncode})"),
            flush=True,
        )
        results = train.finished_results(workdir, config) if done.returncode == 0 else None
    return results


def _cell(values: list[float]) -> str:
    s = stats([100 * v for v in values])
    if len(values) == 1:
        return f"{s['mean']:.1f} (1 seed)"
    return f"{s['mean']:.1f} ± {s['std']:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--runs", default="runs/table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override total_steps")
    zoo = jc.zoo()
    parser.add_argument("--methods", nargs="+", default=list(zoo), choices=list(zoo))
    args = parser.parse_args(argv)

    rows, raw = [], {}
    for method in args.methods:
        results = [
            r
            for r in (run(method, seed, args.runs, args.steps) for seed in args.seeds)
            if r is not None
        ]
        if not results:
            rows.append(f"| {method} | failed | failed | - | - | see the log |")
            continue
        if len(results) < len(args.seeds):
            method_note = f" ({len(results)} of {len(args.seeds)} seeds ran)"
        else:
            method_note = ""
        knn = [r["eval"]["knn_accuracy"] for r in results]
        lin = [r["eval"]["linear_accuracy"] for r in results]
        secs = stats([r["train_time_s"] for r in results])["mean"]
        raw[method] = {"knn": knn, "linear": lin, "train_time_s": secs}
        steps = f" --config.total_steps={args.steps}" if args.steps else ""
        name, preset = jc.split_row(method)
        command = (
            f"`python -m jssl.main --config configs/{name}.py{':' + preset if preset else ''} "
            f"--workdir runs/{method.replace(':', '_')} "
            f"--config.seed=S{steps}`"
        )
        solo = zoo[method].get("reference")
        note = f" ({zoo[method]['note']})" if zoo[method].get("note") else ""
        rows.append(
            f"| {method}{note}{method_note} | {_cell(knn)} | {_cell(lin)} | {secs:.0f} | "
            f"{solo if solo else '-'} | {command} |"
        )

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    table = (
        "| method | k-NN test acc. % | linear probe test acc. % | train s/run | "
        "solo-learn CIFAR-10 top-1 % (reference) | command (S = seed) |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    io.write_text(args.out, table)
    io.write_json(
        os.path.splitext(args.out)[0] + ".json",
        {"seeds": args.seeds, "steps": args.steps, "results": raw},
    )
    print(table)


if __name__ == "__main__":
    main()
