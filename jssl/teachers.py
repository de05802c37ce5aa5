"""Teachers of cluster-based knowledge transfer: images -> features to cluster.

Noroozi et al. (CVPR 2018, docs/methods.md section 5) cluster the features of a teacher over
the whole training set and train a student to classify the clusters. A teacher here is a
pure function of uint8 images (B, H, W, C) -> (B, F) float32, jit-able:

* `checkpoint_teacher(path, layer=...)`: any jssl run (its workdir, latest or chosen
  step) or an exported encoder file (`jssl.export`), in the run's evaluation transform.
  `layer=""` is the encoder's own output (the pooled backbone features `Method.embed`
  gives); a module path such as "backbone/BasicBlock_5" or "Conv_2" takes that module's
  output instead (Flax `capture_intermediates`), global-average pooled when it is a
  feature map. Convolution and BatchNorm outputs are pre-activation (the ReLU is not a
  module); `encoder_layers` lists the choices.
* `hog_teacher(...)`: handcrafted HOG descriptors (`jssl.hog`) of the raw images.

`extract_features` runs a teacher over a data source, sharded over the mesh, and
L2-normalises the rows (the usual choice before k-means; a flag). Nothing of a teacher
ever reaches the student but the cluster labels its features produce.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jssl import evaluate, export, hog, parallel
from jssl.config import config_group
from jssl.errors import ConfigError
from jssl.losses import l2_normalize

__all__ = [
    "Teacher",
    "checkpoint_teacher",
    "hog_teacher",
    "encoder_layers",
    "extract_features",
    "sharded_features",
    "teacher_config",
    "TEACHER_KINDS",
]

TEACHER_KINDS = ("config", "checkpoint", "hog")


def teacher_config(kind: str, **overrides) -> ml_collections.ConfigDict:
    """One entry of `config.teachers` (configs/transfer.py); the study reads every field.

    kind "config": pretrain `run` (a whole jssl config, e.g. configs/jigsaw_pp.py's) in the
    study's workdir first; "checkpoint": an existing run's workdir or exported encoder file
    at `path`; "hog": HOG descriptors of the raw images with the `hog` fields. `layer`
    ("" = the encoder's pooled output) applies to the first two kinds.
    """
    return config_group(
        "teacher_config",
        dict(
            kind=kind,
            run=None,  # kind "config": the teacher's own config
            path=config_dict.placeholder(str),  # kind "checkpoint"
            layer="",
            hog=ml_collections.ConfigDict(
                dict(
                    orientations=9,
                    pixels_per_cell=(4, 4),
                    cells_per_block=(2, 2),
                    block_norm="L2-Hys",
                    transform_sqrt=False,
                )
            ),
        ),
        overrides,
    )


@dataclasses.dataclass(frozen=True)
class Teacher:
    """`features(images uint8 (B, H, W, C)) -> (B, F) float32`, pure and jit-able."""

    name: str
    features: Callable[[jax.Array], jax.Array]


def _layer_path(layer: str) -> tuple[str, ...]:
    parts = tuple(p for p in layer.split("/") if p)
    return parts if not parts or parts[0] == "backbone" else ("backbone",) + parts


def _pool(y: jax.Array) -> jax.Array:
    y = y.astype(jnp.float32)
    return jnp.mean(y, axis=tuple(range(1, y.ndim - 1))) if y.ndim > 2 else y


def _captured(module, variables, images, keep):
    _, state = module.apply(
        variables, images, train=False, mutable=["intermediates"], capture_intermediates=keep
    )
    return state.get("intermediates", {})


def _flatten_intermediates(tree, prefix=()) -> dict[tuple[str, ...], jax.Array]:
    out = {}
    for key, value in tree.items():
        if key == "__call__":
            out[prefix] = value[0]
        elif isinstance(value, dict):
            out.update(_flatten_intermediates(value, prefix + (key,)))
    return out


def encoder_layers(path: str, image_shape: tuple[int, int, int]) -> list[str]:
    """The `layer` names of the encoder at `path` ("backbone/..." module paths whose output
    has a batch axis), for images of `image_shape` (H, W, C)."""
    module, variables = export.load_encoder(path)
    images = jnp.zeros((1, *image_shape), jnp.uint8)
    found = _flatten_intermediates(_captured(module, variables, images, True))
    return ["/".join(p) for p in sorted(found) if p and p[0] == "backbone"]


def checkpoint_teacher(
    path: str, *, layer: str = "", step: int | None = None, name: str | None = None
) -> Teacher:
    """The encoder of a jssl run (`path`: workdir or exported file), at `layer`."""
    module, variables = export.load_encoder(path, step=step)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    target = _layer_path(layer)

    if not target:

        def features(images):
            return module.apply(variables, images, train=False).astype(jnp.float32)
    else:

        def keep(mdl, method_name):
            return method_name == "__call__" and tuple(mdl.path) == target

        def features(images):
            found = _flatten_intermediates(_captured(module, variables, images, keep))
            if target not in found:
                raise ConfigError(
                    f"teacher layer {layer!r}: no such module in the encoder of "
                    f"{path}; see jssl.teachers.encoder_layers"
                )
            return _pool(found[target])

    return Teacher(name=name or f"{path}:{layer or 'features'}", features=features)


def hog_teacher(
    *,
    orientations: int = 9,
    pixels_per_cell=(4, 4),
    cells_per_block=(2, 2),
    block_norm: str = "L2-Hys",
    transform_sqrt: bool = False,
    name: str = "hog",
) -> Teacher:
    """HOG descriptors (`jssl.hog.hog`) of the raw uint8 images as a teacher."""
    kw = dict(
        orientations=int(orientations),
        pixels_per_cell=tuple(pixels_per_cell),
        cells_per_block=tuple(cells_per_block),
        block_norm=block_norm,
        transform_sqrt=bool(transform_sqrt),
    )
    hog.hog(np.zeros((1, 64, 64, 1), np.uint8), **kw)  # argument errors now, not under jit

    def features(images):
        return hog.hog(images, **kw)

    return Teacher(name=name, features=features)


def sharded_features(teacher: Teacher, mesh, *, normalize: bool = True):
    """`fn(_, images) -> (B, F)` jitted over `mesh` (batch on "data"): the teacher's
    features, rows L2-normalised when `normalize`; the signature of an `embed_fn` of
    `jssl.evaluate` (the first argument, a state, is ignored)."""

    def embed(_, images):
        f = teacher.features(images).astype(jnp.float32)
        return l2_normalize(f) if normalize else f

    data = parallel.batch_sharding(mesh)
    return jax.jit(embed, in_shardings=(parallel.replicated(mesh), data), out_shardings=data)


def extract_features(
    teacher: Teacher, source, *, batch_size: int, mesh, normalize: bool = True
) -> np.ndarray:
    """(N, F) float32 features of every example of `source`, in order, rows L2-normalised
    when `normalize` (the batches are sharded over `mesh`; the teacher compiles once)."""
    fn = sharded_features(teacher, mesh, normalize=normalize)
    features, _ = evaluate.extract_features(
        fn, jnp.zeros(()), source, batch_size=batch_size, mesh=mesh
    )
    return np.ascontiguousarray(features, dtype=np.float32)
