"""Training methods: each builds the pure functions (`Method`) the one train loop runs.

The registry maps `config.method` to a module with `validate(config)` and
`build(config, data_info, mesh) -> Method` (docs/adding_a_method.md). Every list of
methods, losses and configs elsewhere (the config checks, the tests, the results table) is
derived from it.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

import jax
import jax.numpy as jnp

from jssl import models
from jssl.errors import ConfigError
from jssl.methods.common import DataInfo, Method, TrainState

__all__ = [
    "REGISTRY",
    "build",
    "validate",
    "loss_names",
    "module",
    "DataInfo",
    "Method",
    "TrainState",
]

# method name -> module path; modules are imported on use.
REGISTRY = {
    "pretrain": "jssl.methods.pretrain",
    "puzzle": "jssl.methods.puzzle",
    "joint": "jssl.methods.joint",
    "metamask": "jssl.methods.metamask",
    "fusion": "jssl.methods.fusion",
    "transfer": "jssl.methods.transfer",
    "mae": "jssl.methods.mae",
    "finetune": "jssl.methods.finetune",
}


def module(method: str) -> ModuleType:
    return importlib.import_module(REGISTRY[method])


def loss_names(method: str) -> list[str]:
    """The `config.loss.name` values a method accepts (its PRETEXTS), [] if it has none."""
    if method not in REGISTRY:
        return []
    return sorted(getattr(module(method), "PRETEXTS", {}))


def validate(config) -> None:
    """The method's own checks of `config` (ConfigError, one line); `jssl.config.validate`
    checks the fields every config has. Stochastic depth (`model.drop_path`) needs a
    method that hands the model a "dropout" PRNG stream (`STOCHASTIC_DEPTH = True`), a
    frozen patch embedding a ViT and a method that keeps it (`FREEZE_PATCH_EMBED = True`),
    the online linear probe a method that trains it (`ONLINE_PROBE = True`), crops cut on
    the host (`data.crop_on="host"`) a method that takes them (`HOST_CROPS = True`)."""
    m = module(config.method)
    if config.data.crop_on == "host" and not getattr(m, "HOST_CROPS", False):
        driven = ", ".join(n for n in REGISTRY if getattr(module(n), "HOST_CROPS", False))
        raise ConfigError(
            f"config.data.crop_on: the {config.method} method crops on the device only "
            f"(methods that take host crops: {driven}); set 'device' or 'auto'"
        )
    if config.online_probe.enabled and not getattr(m, "ONLINE_PROBE", False):
        driven = ", ".join(n for n in REGISTRY if getattr(module(n), "ONLINE_PROBE", False))
        raise ConfigError(
            f"config.online_probe.enabled: the {config.method} method does not train an "
            f"online probe (methods that do: {driven}); set False"
        )
    if config.model.get("drop_path", 0.0) and not getattr(m, "STOCHASTIC_DEPTH", False):
        driven = ", ".join(n for n in REGISTRY if getattr(module(n), "STOCHASTIC_DEPTH", False))
        raise ConfigError(
            f"config.model.drop_path: the {config.method} method does not drive stochastic "
            f"depth yet (methods that do: {driven}); set 0"
        )
    if config.model.get("freeze_patch_embed", False):
        cls = models.BACKBONES.get(config.model.backbone, (None,))[0]
        if cls is not models.ViT or not getattr(m, "FREEZE_PATCH_EMBED", False):
            raise ConfigError(
                "config.model.freeze_patch_embed: a ViT's patch embedding is frozen by the "
                f"pretrain method only (got method {config.method!r}, backbone "
                f"{config.model.backbone!r}); set False"
            )
    m.validate(config)


def build(config, data_info: DataInfo, mesh=None) -> Method:
    """The method's Method; with `config.dtype == "float64"` its state (parameters, BatchNorm
    statistics, optimizer state, method state) is born float64 (needs jax_enable_x64)."""
    method = module(config.method).build(config, data_info, mesh)
    if config.dtype == "float64":
        method = dataclasses.replace(method, init=_float64_init(method.init))
    return method


def _float64_init(init):
    def init64(rng):
        return jax.tree_util.tree_map(
            lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
            init(rng),
        )

    return init64
