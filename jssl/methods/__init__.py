"""Training methods: each builds the pure functions (`Method`) the one train loop runs.

The registry maps `config.method` to a module with `build(config, data_info) -> Method`.
"""
from __future__ import annotations

import importlib

from jssl.methods.common import DataInfo, Method, TrainState

__all__ = ["REGISTRY", "build", "DataInfo", "Method", "TrainState"]

# method name -> module path; modules are imported on use.
REGISTRY = {
    "pretrain": "jssl.methods.pretrain",
}


def build(config, data_info: DataInfo) -> Method:
    module = importlib.import_module(REGISTRY[config.method])
    return module.build(config, data_info)
