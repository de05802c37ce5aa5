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

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import losses, models, puzzles
from jssl.augment import augment_view
from jssl.config import compute_dtype, config_group, eval_transform
from jssl.errors import ConfigError
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    check_view_sizes,
    classifier_update,
    init_state,
    load_init_from,
    method_of,
    refuse_unread,
    require_group,
    step_key,
)
from jssl.optim import build_optimizer

__all__ = [
    "PRETEXTS",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "update",
    "build",
    "puzzle_config",
    "tile_size",
    "validate",
    "single_view_unread",
]

# loss name -> the loss of `jssl.losses` on (logits, labels)
PRETEXTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "rotation": losses.rotation,
    "jigsaw": losses.jigsaw,
    "jigsaw_pp": losses.jigsaw_pp,
}


def puzzle_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.puzzle` group (the puzzle configs add it; the defaults are the papers')."""
    return config_group(
        "puzzle_config",
        dict(
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
        ),
        overrides,
    )


def tile_size(config: ml_collections.ConfigDict) -> int:
    p = config.puzzle
    cell = (p.input_size or config.data.image_size) // p.grid
    return p.tile_size or int(round(cell * 64 / 85))


def single_view_unread(config: ml_collections.ConfigDict) -> dict:
    """The fields a classification method on one augmented view never reads (for
    `refuse_unread`): the second view, multi-crop, the momentum target, queues, predictors
    and prototypes."""
    return {
        "augment.view2": (
            config.augment.view1,
            "set it equal to augment.view1 (jssl.config.one_view); this method trains on one view",
        ),
        "augment.num_small_crops": (0, "set 0 (one view)"),
        "ema.base_momentum": (0.0, "set 0 (no momentum target)"),
        "queue_size": (0, "set 0 (no queue)"),
        "model.predictor_dim": (0, "set 0 (no predictor)"),
        "model.num_prototypes": (0, "set 0 (no prototypes)"),
    }


def validate(config: ml_collections.ConfigDict) -> None:
    require_group(config, "puzzle", "jssl.methods.puzzle.puzzle_config")
    p = config.puzzle
    if config.loss.name not in PRETEXTS:
        raise ConfigError(
            f"config.loss.name: unknown puzzle loss {config.loss.name!r}; choose "
            f"one of {', '.join(sorted(PRETEXTS))}"
        )
    refuse_unread(config, "puzzle", single_view_unread(config))
    if config.loss.name == "rotation":  # the view itself goes through the backbone
        check_view_sizes(config, ("view1",))
    if config.loss.name == "rotation":
        return
    if not (isinstance(p.grid, int) and p.grid >= 2):
        raise ConfigError(f"config.puzzle.grid: must be an integer >= 2, got {p.grid!r}")
    tiles = p.grid * p.grid
    if not 1 <= p.num_permutations <= (limit := int(np.prod(np.arange(1, tiles + 1)))):
        raise ConfigError(
            f"config.puzzle.num_permutations: must be in [1, {limit}], got {p.num_permutations!r}"
        )
    size = p.input_size or config.data.image_size
    t = tile_size(config)
    cell = size // p.grid
    largest = cell - 2 * p.color_shift  # the shifted channel windows stay inside the cell
    if not 1 <= t <= largest:
        raise ConfigError(
            f"config.puzzle.tile_size: tiles of {t} px from {cell}-px cells "
            f"(input_size {size}, grid {p.grid}, color_shift {p.color_shift}) "
            f"must be in [1, {largest}]; raise puzzle.input_size or set puzzle.tile_size"
        )
    if config.loss.name != "rotation" and (error := models.input_size_error(config.model, t)):
        raise ConfigError(
            f"config.puzzle.tile_size: tiles of {t} px {error.replace('is ', 'are ', 1)} "
            f"(tiles are cut from {cell}-px cells: raise puzzle.input_size or set puzzle.tile_size)"
        )
    if config.loss.name == "jigsaw_pp" and not 0 <= p.max_intruders < tiles:
        raise ConfigError(
            f"config.puzzle.max_intruders: must be in [0, {tiles - 1}], got {p.max_intruders!r}"
        )


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of a puzzle pretext for one config (`setup(config)`)."""

    config: ml_collections.ConfigDict
    model: models.BackboneHead
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    view: Mapping[str, Any]  # the augmentation before the puzzle is cut
    permutations: Any  # (P, T) int array for jigsaw / jigsaw_pp; None for rotation
    transform: Mapping[str, Any]
    loaded: tuple | None = None  # (params, batch_stats) of `model.init_from`'s backbone


def setup(config: ml_collections.ConfigDict) -> Setup:
    validate(config)
    name, p, m = config.loss.name, config.puzzle, config.model
    dtype = compute_dtype(config)
    if name == "rotation":
        num_classes, perms = 4, None
    else:
        perms = jnp.asarray(
            puzzles.permutation_set(p.num_permutations, p.grid * p.grid, seed=p.permutation_seed)
        )
        num_classes = p.num_permutations
    head = models.Projector(
        hidden_dims=tuple(m.projector_hidden_dims),
        out_dim=num_classes,
        use_bn=m.projector_bn,
        dtype=dtype,
    )
    model = models.BackboneHead(backbone=models.backbone_from_config(m, dtype), head=head)
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    view = config.augment.view1.to_dict()
    if name != "rotation":
        view["crop_size"] = p.input_size or config.data.image_size
    return Setup(
        config=config,
        model=model,
        loss_fn=PRETEXTS[name],
        tx=tx,
        schedule=schedule,
        view=view,
        permutations=perms,
        transform=eval_transform(config),
        loaded=load_init_from(config),
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    c = s.config
    if c.loss.name == "rotation":
        dummy = jnp.zeros((2, c.data.image_size, c.data.image_size, 3), jnp.float32)
    else:
        t = tile_size(c)
        dummy = jnp.zeros((2, c.puzzle.grid**2, t, t, 3), jnp.float32)
    return init_state(s.model, s.tx, rng, dummy, backbone=s.loaded)


def make_inputs(s: Setup, state: TrainState, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(model input, pretext labels) of the batch's images; keys from (seed, step) only."""
    name, p = s.config.loss.name, s.config.puzzle
    view_key, puzzle_key = jax.random.split(step_key(state))
    x = augment_view(view_key, batch["image"], s.view)
    if name == "rotation":
        return puzzles.rotation_batch(x)
    kw = dict(
        grid=p.grid,
        tile_size=tile_size(s.config),
        jitter=p.jitter,
        normalize_tiles=p.normalize_tiles,
        color_shift=p.color_shift,
        grayscale_prob=p.grayscale_prob,
    )
    if name == "jigsaw":
        return puzzles.jigsaw_tiles(puzzle_key, x, s.permutations, **kw)
    return puzzles.jigsaw_pp_tiles(
        puzzle_key, x, s.permutations, max_intruders=p.max_intruders, **kw
    )


def update(s: Setup, state: TrainState, inputs: tuple) -> tuple[TrainState, dict]:
    x, labels = inputs
    return classifier_update(
        s.model, s.tx, s.schedule, s.loss_fn, state, x, labels, accuracy_name="pretext_accuracy"
    )


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """The puzzle method's pure functions for this config."""
    return method_of(setup(config), init=init, make_inputs=make_inputs, update=update)
