"""Studies: several runs of the one train loop compared in one command.

A config with a `study` field (e.g. `configs/fkt.py:compare`) is run by
`python -m jssl.main --config ... --workdir DIR` through `run(config, workdir)` of the
module named here instead of one training run. A study writes `DIR/results.json`, a
Markdown table and its plots into DIR, and reuses the finished runs in its sub-workdirs, so
an interrupted study resumes where it stopped. Studies sit above `jssl.train` (they call
it); nothing below imports them.
"""

from __future__ import annotations

import importlib

from jssl.errors import ConfigError

__all__ = ["REGISTRY", "run"]

# study name -> module with run(config, workdir) -> dict; imported on use.
REGISTRY = {
    "fkt": "jssl.studies.fkt",
    "metamask": "jssl.studies.metamask",
    "fusion": "jssl.studies.fusion",
    "transfer": "jssl.studies.transfer",
}


def run(config, workdir: str) -> dict:
    if config.study not in REGISTRY:
        raise ConfigError(
            f"config.study: unknown study {config.study!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    module = importlib.import_module(REGISTRY[config.study])
    return module.run(config, workdir)
