"""The layer order of docs/design.md, visible in the imports: no module of jssl imports a
module of a higher layer (function-level imports included), and no two modules import each
other. Plus the style checks: ruff's linter and formatter pass on the whole tree."""

import ast
import os
import subprocess
import sys

import pytest

from tests.test_config import ROOT

# docs/design.md, "Layers": module prefix -> layer (the longest matching prefix wins).
LAYERS = {
    "jssl.errors": 0,
    "jssl.parallel": 0,
    "jssl.io": 0,
    "jssl.losses": 1,
    "jssl.augment": 2,
    "jssl.puzzles": 2,
    "jssl.hog": 2,
    "jssl.models": 3,
    "jssl.config": 4,
    "jssl.data": 4,
    "jssl.optim": 4,
    "jssl.cluster": 4,
    "jssl.evaluate": 5,
    "jssl.checkpoint": 5,
    "jssl.export": 5,
    "jssl.metric_writer": 5,
    "jssl.plots": 5,
    "jssl.methods": 6,
    "jssl.train": 7,
    "jssl.teachers": 7,
    "jssl.studies": 8,
    "jssl.bench": 8,
    "jssl.main": 8,
}


def layer(module):
    best = None
    for prefix, lay in LAYERS.items():
        if module == prefix or module.startswith(prefix + ".") or module.startswith(prefix + "_"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, lay)
    return None if best is None else best[1]


def jssl_imports():
    """{module: {imported jssl module or attribute path}} over every file of jssl/."""
    edges = {}
    for root, _, files in os.walk(os.path.join(ROOT, "jssl")):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(root, f)
            mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
            targets = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    assert node.level == 0, f"{mod}: relative import"
                    targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            edges[mod] = {t for t in targets if t.startswith("jssl")}
    return edges


def test_no_module_imports_a_higher_layer():
    edges = jssl_imports()
    assert "jssl.methods.common" in edges and "jssl.errors" in edges
    bad = sorted(
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, ts in edges.items()
        for t in ts
        if layer(m) is not None
        and layer(t) is not None
        and layer(t) > layer(m)
        and not t.startswith(m)
    )
    assert not bad, "\n".join(bad)


def test_no_two_modules_import_each_other():
    edges = jssl_imports()

    def resolve(t):  # an imported attribute path -> the module that defines it
        while t and t not in edges:
            t = t.rpartition(".")[0]
        return t

    graph = {m: {resolve(t) for t in ts} - {"", m} for m, ts in edges.items()}
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a in graph
            for b in graph[a]
            if a in graph.get(b, ()) and not (a.startswith(b) or b.startswith(a))
        }
    )
    assert not cycles, cycles


def test_the_layer_check_can_fail():
    assert layer("jssl.data.pipeline") == 4 and layer("jssl.train") == 7
    assert layer("jssl.bench_kmeans") == 8 and layer("jssl.configs.simclr") is None


@pytest.mark.parametrize(
    "args", [["check"], ["format", "--check"]], ids=["ruff-check", "ruff-format"]
)
def test_ruff(args):
    """The linter and the formatter pinned in the test extra pass on the whole tree
    (`ruff check .` and `ruff format .` fix what they can)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
