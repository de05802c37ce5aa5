"""Classification pretexts: rotation (Gidaris et al. 2018), jigsaw (Noroozi & Favaro 2016)
and Jigsaw++ (Noroozi et al. 2018).

The labels come from the input builders of `jssl.puzzles`, not from the data:

* rotation: every image of the batch in all four rotations (0/90/180/270 degrees), the
  backbone's features, an MLP head, 4-way cross-entropy.
* jigsaw / jigsaw_pp: a grid x grid puzzle of jittered tiles shuffled by one of P
  permutations of maximal Hamming distance (Jigsaw++: up to `max_intruders` tiles replaced
  by tiles of other images, the label unchanged); a siamese tile encoder (the backbone,
  weights shared over the tiles), the tile features concatenated in puzzle order, an MLP
  head, P-way cross-entropy.

The head's hidden widths are `config.model.projector_hidden_dims` (the "projector" of a
classification pretext is its head); puzzle fields live in `config.puzzle`. Evaluation
embeds whole images with the backbone alone, as for every other method.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import augment, losses, models, puzzles
from jssl.methods.common import (DataInfo, Method, TrainState, backbone_from_config,
                                 classifier_update)
from jssl.optim import build_optimizer

__all__ = ["PuzzleModel", "PRETEXTS", "build", "puzzle_config", "tile_size"]

# loss name -> the loss of `jssl.losses` on (logits, labels)
PRETEXTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "rotation": losses.rotation,
    "jigsaw": losses.jigsaw,
    "jigsaw_pp": losses.jigsaw_pp,
}


def puzzle_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.puzzle` group (the puzzle configs add it; the defaults are the papers')."""
    c = ml_collections.ConfigDict(dict(
        num_permutations=1000,  # Noroozi & Favaro's best setting (100 also common)
        permutation_seed=0,
        grid=3,
        tile_size=0,  # 0: round(cell * 64 / 85), the official 64-px tile in an 85-px cell
        input_size=0,  # side of the augmented crop cut into tiles; 0: data.image_size
        jitter=True,  # random tile position inside its cell
        normalize_tiles=True,  # per-tile zero mean, unit std
        color_shift=0,  # per-channel random shift in pixels (chromatic aberration)
        grayscale_prob=0.0,  # fraction of puzzles in grayscale (paper 0.7, code 0.5)
        max_intruders=2,  # Jigsaw++: 0..max_intruders tiles from other images
    ))
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"puzzle_config: unknown field {key!r}")
        c[key] = value
    return c


def tile_size(config: ml_collections.ConfigDict) -> int:
    p = config.puzzle
    cell = (p.input_size or config.data.image_size) // p.grid
    return p.tile_size or int(round(cell * 64 / 85))


class PuzzleModel(nn.Module):
    """Backbone and MLP head. `__call__` on (N, H, W, C) images (rotation) or on
    (N, T, t, t, C) tiles (jigsaw: the backbone runs on all N*T tiles, weights shared)."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if x.ndim == 5:
            n, t = x.shape[:2]
            h = self.backbone(x.reshape((n * t,) + x.shape[2:]), train=train)
            h_cat = h.reshape(n, t * h.shape[-1])  # tile features in puzzle order
            return h, self.head(h_cat, train=train)
        h = self.backbone(x, train=train)
        return h, self.head(h, train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def _validate(config: ml_collections.ConfigDict) -> None:
    from jssl.config import ConfigError

    if "puzzle" not in config:
        raise ConfigError("config.puzzle: missing; puzzle configs add it with "
                          "jssl.methods.puzzle.puzzle_config()")
    p = config.puzzle
    if config.loss.name not in PRETEXTS:
        raise ConfigError(f"config.loss.name: unknown puzzle loss {config.loss.name!r}; choose "
                          f"one of {', '.join(sorted(PRETEXTS))}")
    if config.loss.name == "rotation":
        return
    if not (isinstance(p.grid, int) and p.grid >= 2):
        raise ConfigError(f"config.puzzle.grid: must be an integer >= 2, got {p.grid!r}")
    tiles = p.grid * p.grid
    if not 1 <= p.num_permutations <= (limit := int(np.prod(np.arange(1, tiles + 1)))):
        raise ConfigError(f"config.puzzle.num_permutations: must be in [1, {limit}], got "
                          f"{p.num_permutations!r}")
    size = p.input_size or config.data.image_size
    t = tile_size(config)
    minimum = 8 if config.model.backbone.startswith("resnet") else 4
    cell = size // p.grid
    largest = cell - 2 * p.color_shift  # the shifted channel windows stay inside the cell
    if not minimum <= t <= largest:
        raise ConfigError(f"config.puzzle.tile_size: tiles of {t} px from {cell}-px cells "
                          f"(input_size {size}, grid {p.grid}, color_shift {p.color_shift}) "
                          f"must be in [{minimum}, {largest}] for {config.model.backbone}; "
                          "raise puzzle.input_size or set puzzle.tile_size")
    if config.loss.name == "jigsaw_pp" and not 0 <= p.max_intruders < tiles:
        raise ConfigError(f"config.puzzle.max_intruders: must be in [0, {tiles - 1}], got "
                          f"{p.max_intruders!r}")


def build(config: ml_collections.ConfigDict, data: DataInfo) -> Method:
    """The puzzle method's pure functions for this config."""
    _validate(config)
    name = config.loss.name
    p = config.puzzle
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    m = config.model
    backbone = backbone_from_config(config, dtype)
    if name == "rotation":
        num_classes, perms = 4, None
    else:
        perms = jnp.asarray(puzzles.permutation_set(p.num_permutations, p.grid * p.grid,
                                                    seed=p.permutation_seed))
        num_classes = p.num_permutations
    head = models.Projector(hidden_dims=tuple(m.projector_hidden_dims), out_dim=num_classes,
                            use_bn=m.projector_bn, dtype=dtype)
    model = PuzzleModel(backbone=backbone, head=head)
    loss_fn = PRETEXTS[name]
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    size = config.data.image_size
    view = config.augment.view1.to_dict()
    if name != "rotation":
        view["crop_size"] = p.input_size or size
    mean, std = tuple(view["mean"]), tuple(view["std"])
    puzzle_kw = dict(grid=p.grid, tile_size=tile_size(config), jitter=p.jitter,
                     normalize_tiles=p.normalize_tiles, color_shift=p.color_shift,
                     grayscale_prob=p.grayscale_prob)

    def make_inputs(state: TrainState, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(model input, pretext labels); keys depend on (state.rng, state.step) only."""
        rng = jax.random.fold_in(state.rng, state.step)
        view_key, puzzle_key = jax.random.split(rng)
        x = augment.augment_view(view_key, images, view)
        if name == "rotation":
            return puzzles.rotation_batch(x)
        if name == "jigsaw":
            return puzzles.jigsaw_tiles(puzzle_key, x, perms, **puzzle_kw)
        return puzzles.jigsaw_pp_tiles(puzzle_key, x, perms, max_intruders=p.max_intruders,
                                       **puzzle_kw)

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        if name == "rotation":
            dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        else:
            t = tile_size(config)
            dummy = jnp.zeros((2, p.grid * p.grid, t, t, 3), jnp.float32)
        variables = models.init_variables(model, init_rng, dummy, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=state_rng)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x, labels = make_inputs(state, batch["image"])
        return classifier_update(model, tx, schedule, loss_fn, state, x, labels,
                                 accuracy_name="pretext_accuracy")

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        h = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                        train=False, method=PuzzleModel.features)
        return h.astype(jnp.float32)

    def calibrate(state: TrainState, images: jax.Array) -> TrainState:
        x = augment.center_view(images, size=size, mean=mean, std=std)
        _, updates = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                                 train=True, mutable=["batch_stats"], method=PuzzleModel.features)
        # Only the backbone ran: keep the head's statistics.
        return state.replace(batch_stats={**state.batch_stats, **updates["batch_stats"]})

    return Method(init=init, train_step=train_step, embed=embed, calibrate=calibrate)
