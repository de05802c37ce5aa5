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
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from jssl import augment, io, models
from jssl.checkpoint import restore_host, saved_config
from jssl.config import compute_dtype, eval_transform, from_flat, get_field
from jssl.errors import ConfigError

__all__ = ["Encoder", "Encoders", "load_encoder", "load_encoders", "export_encoder", "main"]

FORMAT = "jssl-encoder-1"
# The config fields that build an encoder (`models.backbone_from_config`, `compute_dtype`
# and `eval_transform`); an exported file carries exactly these.
_ENCODER_FIELDS = (
    "model.backbone",
    "model.num_filters",
    "model.stem",
    "dtype",
    "data.image_size",
    "augment.view1.mean",
    "augment.view1.std",
)


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


def _encoder_module(config: ml_collections.ConfigDict) -> Encoder:
    return Encoder(
        backbone=models.backbone_from_config(config.model, compute_dtype(config)),
        **eval_transform(config),
    )


def _from_workdir(workdir: str, step: int | None):
    config = saved_config(workdir)
    for field in _ENCODER_FIELDS:
        try:
            get_field(config, field)
        except KeyError:
            raise ConfigError(
                f"{workdir}: its config lacks {field}; this run cannot be exported"
            ) from None
    _, tree = restore_host(workdir, step)
    params, stats = tree.get("params", {}), tree.get("batch_stats", {})
    if "backbone" not in params:
        raise ConfigError(
            f"{workdir}: the checkpoint has no backbone (top-level parameters: "
            f"{', '.join(sorted(params)) or 'none'})"
        )
    variables = {"params": {"backbone": params["backbone"]}}
    if stats.get("backbone"):
        variables["batch_stats"] = {"backbone": stats["backbone"]}
    return config, variables


def _encoder_fields(config: ml_collections.ConfigDict) -> dict:
    return {
        field: (list(v) if isinstance(v := get_field(config, field), (tuple, list)) else v)
        for field in _ENCODER_FIELDS
    }


def load_encoder(path: str, *, step: int | None = None) -> tuple[Encoder, dict]:
    """(module, variables) of the encoder in `path`: a jssl workdir (its latest checkpoint, or
    `step`) or a file written by `export_encoder`. Variables are NumPy arrays on the host."""
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
        raise ConfigError(
            f"{path}: not a jssl encoder file (format {FORMAT} expected); write "
            "one with python -m jssl.export"
        )
    config = from_flat(json.loads(blob["config"]))
    variables = jax.tree_util.tree_map(np.asarray, blob["variables"])
    return _encoder_module(config), variables


def export_encoder(workdir: str, out: str, *, step: int | None = None) -> str:
    """Write the encoder of `workdir` (latest checkpoint, or `step`) to the msgpack file
    `out`; refuses to overwrite an existing file. Returns `out`."""
    if os.path.exists(out):
        raise ConfigError(f"--out {out} exists; choose another path (nothing was overwritten)")
    config, variables = _from_workdir(workdir, step)
    blob: dict[str, Any] = {
        "format": FORMAT,
        "config": json.dumps(_encoder_fields(config)),
        "variables": variables,
    }
    io.write_bytes(out, serialization.msgpack_serialize(blob))
    return out


@dataclasses.dataclass(frozen=True)
class Encoders:
    """K restored encoders: `Encoder` modules, their variables (host NumPy), feature widths."""

    names: tuple[str, ...]
    paths: tuple[str, ...]
    modules: tuple[Any, ...]
    variables: tuple[dict, ...]
    widths: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.modules)

    def subset(self, indices: Sequence[int]) -> "Encoders":
        return Encoders(
            *(tuple(getattr(self, f.name)[i] for i in indices) for f in dataclasses.fields(self))
        )


def _first_difference(expected, loaded) -> str:
    exp = {
        jax.tree_util.keystr(p): tuple(x.shape)
        for p, x in jax.tree_util.tree_leaves_with_path(expected)
    }
    got = {
        jax.tree_util.keystr(p): tuple(np.shape(x))
        for p, x in jax.tree_util.tree_leaves_with_path(loaded)
    }
    for key in sorted(set(exp) | set(got)):
        if exp.get(key) != got.get(key):
            return (
                f"{key}: architecture {exp.get(key, 'absent')}, checkpoint {got.get(key, 'absent')}"
            )
    return "none"


def load_encoders(
    paths: Sequence[str], names: Sequence[str] = (), *, field: str = "config.fusion.encoders"
) -> Encoders:
    """Restore the encoders of `paths` (jssl workdirs or exported files), e.g. the frozen
    encoders of fusion.

    Raises ConfigError (one line naming `<field>[i]` and the path) when one is missing,
    holds no complete checkpoint or no backbone, or when its checkpoint does not fit the
    architecture its config describes.
    """
    modules, variables, widths = [], [], []
    for i, path in enumerate(paths):
        where = f"{field}[{i}]"
        try:
            module, v = load_encoder(path)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        dummy = jnp.zeros((1, module.size, module.size, 3), jnp.uint8)
        expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)
        if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(
            v
        ) or jax.tree_util.tree_map(lambda x: tuple(x.shape), expected) != jax.tree_util.tree_map(
            lambda x: tuple(np.shape(x)), v
        ):
            raise ConfigError(
                f"{where}: {path}: its checkpoint does not fit the encoder its "
                f"config describes ({_first_difference(expected, v)}); give the "
                "workdir of a complete, unmodified jssl run"
            )
        out = jax.eval_shape(module.apply, v, dummy)
        modules.append(module)
        variables.append(v)
        widths.append(int(out.shape[-1]))
    names = tuple(names) or tuple(os.path.basename(os.path.normpath(p)) for p in paths)
    return Encoders(
        names=names,
        paths=tuple(paths),
        modules=tuple(modules),
        variables=tuple(variables),
        widths=tuple(widths),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jssl.export", description="Export a run's encoder to one msgpack file."
    )
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
