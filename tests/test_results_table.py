"""launch/results_table.py: the zoo table from finished runs (reused, nothing retrained),
its rows derived from the configs' ZOO entries."""

import importlib.util
import json
import os

import pytest

from jssl import config as jc
from tests.test_config import ROOT


def _script():
    spec = importlib.util.spec_from_file_location(
        "results_table", os.path.join(ROOT, "launch", "results_table.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished(runs, method, seed, knn, linear, steps):
    workdir = runs / f"{method}_s{seed}"
    workdir.mkdir(parents=True)
    (workdir / "results.json").write_text(
        json.dumps(
            {
                "final_step": steps,
                "train_time_s": 10.0 * (seed + 1),
                "eval": {"knn_accuracy": knn, "linear_accuracy": linear},
            }
        )
    )


def test_table_of_finished_runs(tmp_path, monkeypatch):
    table = _script()
    runs = tmp_path / "runs"
    for seed, (knn, lin) in enumerate([(0.80, 0.90), (0.70, 0.86)]):
        _finished(runs, "supcon", seed, knn, lin, steps=100)
        _finished(runs, "nnclr", seed, knn / 2, lin / 2, steps=100)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(table.subprocess, "run", no_training)
    out = tmp_path / "docs" / "results.md"
    table.main(
        [
            "--out",
            str(out),
            "--runs",
            str(runs),
            "--seeds",
            "0",
            "1",
            "--steps",
            "100",
            "--methods",
            "supcon",
            "nnclr",
        ]
    )
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| method | k-NN test acc. % | linear probe test acc. %")
    supcon, nnclr = lines[2], lines[3]
    # mean ± sample std over the seeds, in %; the reference column from the config's ZOO.
    assert supcon.startswith("| supcon (uses the labels) | 75.0 ± 7.1 | 88.0 ± 2.8 | 15 | 93.82 |")
    assert nnclr.startswith("| nnclr | 37.5 ± 3.5 | 44.0 ± 1.4 | 15 | 91.88 |")
    assert "--config.total_steps=100" in nnclr
    saved = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["results"]["nnclr"]["knn"] == [0.4, 0.35]


def test_a_run_of_another_length_is_not_reused(tmp_path, monkeypatch):
    """A results.json of a 50-step run does not answer for the 100-step table: it trains
    (here: the command it would run is recorded)."""
    table = _script()
    runs = tmp_path / "runs"
    _finished(runs, "simclr", 0, 0.5, 0.6, steps=50)
    commands = []

    def fake_run(cmd, check):
        commands.append(cmd)
        return type("Done", (), {"returncode": 1})()

    monkeypatch.setattr(table.subprocess, "run", fake_run)
    assert table.run("simclr", 0, str(runs), 100) is None
    (cmd,) = commands
    assert cmd[cmd.index("--config") + 1] == jc.config_file("simclr")
    assert "--config.total_steps=100" in cmd and "--config.seed=0" in cmd


def test_the_methods_are_the_zoo():
    table = _script()
    with pytest.raises(SystemExit):
        table.main(["--methods", "fkt"])  # not a zoo config: argparse refuses it
