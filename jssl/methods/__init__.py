"""Training methods: each builds the pure functions (`Method`) the one train loop runs.

The registry maps `config.method` to a module with `build(config, data_info) -> Method`.
"""
from __future__ import annotations

import importlib

from jssl.methods.common import DataInfo, Method, TrainState

__all__ = ["REGISTRY", "build", "loss_names", "DataInfo", "Method", "TrainState"]

# method name -> module path; modules are imported on use.
REGISTRY = {
    "pretrain": "jssl.methods.pretrain",
    "puzzle": "jssl.methods.puzzle",
    "joint": "jssl.methods.joint",
    "metamask": "jssl.methods.metamask",
    "fusion": "jssl.methods.fusion",
    "transfer": "jssl.methods.transfer",
}


def loss_names(method: str) -> list[str]:
    """The `config.loss.name` values a method accepts (its PRETEXTS), [] if it has none."""
    if method not in REGISTRY:
        return []
    module = importlib.import_module(REGISTRY[method])
    return sorted(getattr(module, "PRETEXTS", {}))


def build(config, data_info: DataInfo) -> Method:
    module = importlib.import_module(REGISTRY[config.method])
    return module.build(config, data_info)
