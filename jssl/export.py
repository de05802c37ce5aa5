"""Using what was trained: a run's encoder as a Flax module and its variables.

    module, variables = jssl.export.load_encoder("runs/barlow")      # a workdir
    module, variables = jssl.export.load_encoder("encoder.msgpack")  # an exported file
    features = module.apply(variables, images_uint8)                 # (N, F) float32

`module` is an `Encoder`: the run's evaluation transform (resize/centre crop to the
training image size, the run's normalisation) followed by its backbone, so its features
are the ones the run's k-NN and linear probe used (`Method.embed`) for every method whose
model has a `backbone` (pretrain, puzzle, joint, ...). Call it with `train=False` (the
default) for frozen features.

Command line: `python -m jssl.export --workdir DIR --out encoder.msgpack [--step N]` writes
one msgpack file holding the architecture (the config fields that build it) and the
variables; `load_encoder` reads it back without the workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import augment
from jssl.checkpoint import EXPERIMENT_FILE, restore_host
from jssl.config import ConfigError

__all__ = ["Encoder", "load_config", "load_encoder", "export_encoder", "main"]

FORMAT = "jssl-encoder-1"
# The config fields that build an encoder (jssl.methods.common.backbone_from_config and
# eval_transform); an exported file carries exactly these.
_ENCODER_FIELDS = ("model.backbone", "model.num_filters", "model.stem", "dtype",
                   "data.image_size", "augment.view1.mean", "augment.view1.std")


class Encoder(nn.Module):
    """uint8 images (N, H, W, C) -> backbone features (N, F) float32, in evaluation transform."""

    backbone: nn.Module
    size: int
    mean: Sequence[float]
    std: Sequence[float]

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = augment.center_view(images, size=self.size, mean=self.mean, std=self.std)
        return self.backbone(x, train=train).astype(jnp.float32)


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config of a jssl workdir, from its experiment.json (every field that
    identifies the run; run-control fields such as `eval` are absent)."""
    path = os.path.join(workdir, EXPERIMENT_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{workdir}: no {EXPERIMENT_FILE}; give the --workdir of a jssl run")
    try:
        with open(path) as f:
            flat = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    return ml_collections.ConfigDict(_unflatten(flat))


def _encoder_module(config: ml_collections.ConfigDict) -> Encoder:
    from jssl.methods.common import backbone_from_config, eval_transform

    return Encoder(backbone=backbone_from_config(config), **eval_transform(config))


def _from_workdir(workdir: str, step: int | None):
    config = load_config(workdir)
    for field in _ENCODER_FIELDS:
        try:
            value = config
            for part in field.split("."):
                value = value[part]
        except KeyError:
            raise ConfigError(f"{workdir}/{EXPERIMENT_FILE} lacks {field}; this run cannot be "
                              "exported") from None
    _, tree = restore_host(workdir, step)
    params, stats = tree.get("params", {}), tree.get("batch_stats", {})
    if "backbone" not in params:
        raise ConfigError(f"{workdir}: the checkpoint has no backbone (top-level parameters: "
                          f"{', '.join(sorted(params)) or 'none'})")
    variables = {"params": {"backbone": params["backbone"]}}
    if stats.get("backbone"):
        variables["batch_stats"] = {"backbone": stats["backbone"]}
    return config, variables


def _encoder_fields(config: ml_collections.ConfigDict) -> dict:
    flat = {}
    for field in _ENCODER_FIELDS:
        value = config
        for part in field.split("."):
            value = value[part]
        flat[field] = list(value) if isinstance(value, (tuple, list)) else value
    return flat


def load_encoder(path: str, *, step: int | None = None) -> tuple[Encoder, dict]:
    """(module, variables) of the encoder in `path`: a jssl workdir (its latest checkpoint, or
    `step`) or a file written by `export_encoder`. Variables are NumPy arrays on the host."""
    from flax import serialization

    if os.path.isdir(path):
        config, variables = _from_workdir(path, step)
        return _encoder_module(config), variables
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such workdir or exported encoder file")
    with open(path, "rb") as f:
        try:
            blob = serialization.msgpack_restore(f.read())
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
            raise ConfigError(f"{path}: not a jssl encoder file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a jssl encoder file (format {FORMAT} expected); write "
                          "one with python -m jssl.export")
    config = ml_collections.ConfigDict(_unflatten(json.loads(blob["config"])))
    variables = jax.tree_util.tree_map(np.asarray, blob["variables"])
    return _encoder_module(config), variables


def export_encoder(workdir: str, out: str, *, step: int | None = None) -> str:
    """Write the encoder of `workdir` (latest checkpoint, or `step`) to the msgpack file
    `out`; refuses to overwrite an existing file. Returns `out`."""
    from flax import serialization

    if os.path.exists(out):
        raise ConfigError(f"--out {out} exists; choose another path (nothing was overwritten)")
    config, variables = _from_workdir(workdir, step)
    blob: dict[str, Any] = {"format": FORMAT, "config": json.dumps(_encoder_fields(config)),
                            "variables": variables}
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(blob))
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jssl.export",
                                description="Export a run's encoder to one msgpack file.")
    p.add_argument("--workdir", required=True, help="a jssl run's --workdir")
    p.add_argument("--out", required=True, help="file to write, e.g. encoder.msgpack")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = p.parse_args(argv)
    try:
        out = export_encoder(args.workdir, args.out, step=args.step)
    except ConfigError as e:
        print(f"jssl.export: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
