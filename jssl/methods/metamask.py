"""MetaMask (Li et al., NeurIPS 2022, arXiv 2209.07902; docs/methods.md section 3).

A mask M = sigmoid(m) (m: one logit per backbone feature, initialised to 0) multiplies the
backbone features h before two heads, a Barlow Twins projector and a contrastive projector:

    backbone -> h -> h * M -> BT projector          -> L_BT(lambda)
                          -> contrastive projector -> L_NTXent(T)
    L = L_BT + w * L_NTXent                                        (w = 10, T = 0.07)

One train step on one mini-batch (the same two augmented views throughout), as the official
code (jiangmengli/MetaMask) does:

1. network update: SGD-momentum on theta with grad_theta L (M held fixed: the gradient that
   reaches m here is discarded);
2. meta update of m at the updated theta through `mask_hypergradient`, with the contrastive
   term alone as the objective (only it drives the mask in the official code): one virtual
   SGD-momentum step theta' = theta - eta (mu buf + grad_theta L_c(theta, M) + wd theta) with
   the network's momentum buffer and current learning rate, then d/dm L_c(theta', M);
3. an SGD-momentum step of m on its own schedule (the network's cosine shape, peak
   `config.metamask.lr`).

The meta forward passes use BatchNorm in train mode (batch statistics, as the network
update) but never write the running statistics. The mask logits and their optimizer state
live in `TrainState.extras` (sharded, donated, checkpointed like everything else); the
mask's learning rate is a function of `state.step`. `embed` returns the masked features, so
k-NN and the linear probe see what the official monitor sees. `config.metamask.enabled =
False` is the same network and losses without any mask: the baseline.

Where this differs from the official code (our choices): the meta passes do not touch the
running statistics at all (the official first meta pass updates them once more); the heads'
last BatchNorm is affine-free (`Projector(last_bn=True)`; lightly's has an affine one); the
mask's learning rate follows the network's schedule per step, not per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import augment, losses, models
from jssl.config import compute_dtype, config_group, eval_transform
from jssl.errors import ConfigError
from jssl.export import feature_mask
from jssl.methods.common import (
    DataInfo,
    Method,
    TrainState,
    check_view_sizes,
    global_norm,
    init_state,
    load_init_from,
    make_views,
    method_of,
    require_group,
    step_metrics,
    variables,
)
from jssl.optim import build_optimizer, decay_mask, learning_rate_schedule

__all__ = [
    "MODES",
    "PRETEXTS",
    "MetaMaskModel",
    "mask_hypergradient",
    "metamask_config",
    "Setup",
    "setup",
    "init",
    "make_inputs",
    "network_update",
    "meta_problem",
    "meta_update",
    "update",
    "build",
    "validate",
    "mask_values",
    "MASK_QUANTILES",
]

MODES = ("exact", "first_order", "finite_difference")
# config.loss.name: the one objective this method trains (checked by jssl.config.validate).
PRETEXTS = ("barlow_twins+nt_xent",)
# Logged every step (metrics "mask_q00" ... "mask_q100"): the mask's profile over training.
MASK_QUANTILES = (0, 5, 10, 25, 50, 75, 90, 95, 100)
# Folded into the init key for a random initial mask (`metamask.init_std`): the network's
# initialisation and the run's keys stay those of the same seed without it.
MASK_INIT_SALT = 0x6D61736B


# --- The hypergradient --------------------------------------------------------------------


def _tree_scale_add(a, b, s):
    return jax.tree_util.tree_map(lambda x, y: x + s * y, a, b)


def _per_leaf(value, params):
    """`value` for every leaf of `params`: a pytree shaped like params, or one number."""
    if jax.tree_util.tree_structure(value) == jax.tree_util.tree_structure(params):
        return value
    return jax.tree_util.tree_map(lambda _: value, params)


def mask_hypergradient(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    mask: Any,
    velocity: Any,
    *,
    lr,
    momentum,
    weight_decay,
    mode: str = "exact",
    radius: float = 0.01,
    tangent_loss_fn: Callable[[Any, Any], jax.Array] | None = None,
) -> Any:
    r"""Gradient with respect to `mask` of the loss after one SGD-momentum step of `params`.

    With :math:`g = \nabla_\theta L(\theta, m)`, the step is PyTorch's SGD (weight decay added
    to the gradient, then momentum):

    .. math:: v' = \mu v + g + \lambda \theta, \qquad \theta'(m) = \theta - \eta v'

    and the meta-objective is :math:`F(m) = L(\theta'(m), m)`. Its gradient is

    .. math:: \frac{dF}{dm} = \partial_m L(\theta', m)
              - \eta\, \partial_m \big\langle \nabla_\theta L(\theta, m), u \big\rangle,
              \qquad u = \nabla_\theta L(\theta', m).

    Modes:
      * ``"exact"``: the formula above, second-order term included, by automatic
        differentiation. The mixed term is the gradient in m of the directional derivative
        of L along u in θ (forward over reverse): ``jax.grad`` in m of ``jax.jvp`` in θ. What
        does not depend on m (MetaMask's backbone: the mask sits after it) is only pushed
        forward with its tangent, never differentiated in reverse, so the step costs one
        gradient at θ, one at θ' and about a forward pass with tangents (``jax.grad`` of F
        through the unrolled step, reverse over reverse, gives the same numbers and cost
        3.1-3.5x the base step against 2.4-3.2x: README, docs/bench/metamask_cpu.jsonl).
      * ``"first_order"``: :math:`\partial_m L(\theta', m)` with θ' held fixed.
      * ``"finite_difference"``: the official code's construction (Li et al. 2022,
        jiangmengli/MetaMask ``_hessian_vector_product``): the mixed term by central
        differences, :math:`[\nabla_m L(\theta + r u) - \nabla_m L(\theta - r u)] / 2r` with
        :math:`r = \text{radius} / \lVert u \rVert`.

    `velocity` (the momentum buffer) and the weight decay do not depend on the mask; no
    gradient flows into them. Pure and jit-able; any pytrees.

    Args:
      loss_fn: ``loss_fn(params, mask) -> scalar``.
      params: pytree θ.
      mask: pytree m (what the gradient is taken with respect to).
      velocity: pytree shaped like `params`, the momentum buffer v (zeros before any step).
      lr: η (a number or a traced scalar, e.g. a schedule's value).
      momentum: μ.
      weight_decay: λ, one number or a pytree of numbers shaped like `params`.
      mode: "exact", "first_order" or "finite_difference".
      radius: the finite-difference step length along u (0.01 in the official code).
      tangent_loss_fn: "exact" only: the same function as `loss_fn`, built from operations
        that forward-mode differentiation accepts, for the directional derivative (None:
        `loss_fn` itself). jssl's CPU convolution (`jssl.models.conv`) has a custom
        reverse rule only, so MetaMask passes its loss through convolutions with JAX's own
        rules here (`models.conv_module(forward_mode=True)`).

    Returns:
      A pytree shaped like `mask`: dF/dm.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, m: jnp.sum((p * m - 1.0) ** 2)
      >>> g = mask_hypergradient(loss, jnp.ones(2), jnp.full(2, 0.5), jnp.zeros(2), lr=0.1,
      ...                        momentum=0.9, weight_decay=0.0)
      >>> g.shape
      (2,)

    References:
      Li et al., "MetaMask: Revisiting Dimensional Confounder for Self-Supervised
      Learning", NeurIPS 2022, https://arxiv.org/abs/2209.07902
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    wd = _per_leaf(weight_decay, params)
    g = jax.grad(loss_fn)(params, mask)
    new = jax.lax.stop_gradient(
        jax.tree_util.tree_map(
            lambda p, v, gi, lam: p - lr * (momentum * v + gi + lam * p), params, velocity, g, wd
        )
    )
    if mode == "first_order":
        return jax.grad(loss_fn, argnums=1)(new, mask)
    direct, u = jax.grad(lambda m, p: loss_fn(p, m), argnums=(0, 1))(mask, new)
    if mode == "exact":
        along = tangent_loss_fn or loss_fn

        def directional(m):  # <grad_theta L(theta, m), u>, with m the only variable
            return jax.jvp(lambda p: along(p, m), (params,), (u,))[1]

        mixed = jax.grad(directional)(mask)
        return jax.tree_util.tree_map(lambda d, x: d - lr * x, direct, mixed)
    # finite_difference
    r = radius / jnp.maximum(global_norm(u), jnp.finfo(jnp.result_type(float)).tiny)
    grad_m = jax.grad(loss_fn, argnums=1)
    plus = grad_m(_tree_scale_add(params, u, r), mask)
    minus = grad_m(_tree_scale_add(params, u, -r), mask)
    return jax.tree_util.tree_map(lambda d, a, b: d - lr * (a - b) / (2.0 * r), direct, plus, minus)


# --- Config -------------------------------------------------------------------------------


def metamask_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.metamask` group (configs/metamask.py adds it); defaults are the official
    code's (lr 1e-3, momentum 0.9, wd 5e-4 for the mask)."""
    return config_group(
        "metamask_config",
        dict(
            enabled=True,  # False: no mask and no meta update (the baseline network)
            mode="exact",  # mask_hypergradient mode
            lr=1e-3,  # the mask's peak learning rate (not scaled with the batch)
            momentum=0.9,
            weight_decay=5e-4,
            sigmoid=True,  # M = sigmoid(m), m = 0 at init; False: M = m, m = 1 (--disable-sigmoid)
            fd_radius=0.01,  # finite_difference mode: step length along the gradient
            # Controls (jssl/studies/metamask.py): learn=False keeps the mask at its initial
            # value (no meta update: a fixed mask); init_std > 0 draws the initial logits
            # from N(init, init_std) (a random mask) with a key folded from the init key.
            learn=True,
            init_std=0.0,
        ),
        overrides,
    )


def validate(config: ml_collections.ConfigDict) -> None:
    def require(ok, field, message):
        if not ok:
            raise ConfigError(f"config.{field}: {message}")

    require_group(config, "metamask", "jssl.methods.metamask.metamask_config")
    mm = config.metamask
    require(
        isinstance(mm.enabled, bool),
        "metamask.enabled",
        f"must be True or False, got {mm.enabled!r}",
    )
    require(
        mm.mode in MODES,
        "metamask.mode",
        f"unknown mode {mm.mode!r}; choose one of {', '.join(MODES)}",
    )
    require(
        isinstance(mm.lr, (int, float)) and mm.lr > 0,
        "metamask.lr",
        f"must be a positive number, got {mm.lr!r}",
    )
    require(
        0.0 <= mm.momentum < 1.0, "metamask.momentum", f"must be in [0, 1), got {mm.momentum!r}"
    )
    require(mm.weight_decay >= 0, "metamask.weight_decay", f"must be >= 0, got {mm.weight_decay!r}")
    check_view_sizes(config, ("view1", "view2"))
    require(mm.fd_radius > 0, "metamask.fd_radius", f"must be > 0, got {mm.fd_radius!r}")
    require(
        isinstance(mm.learn, bool), "metamask.learn", f"must be True or False, got {mm.learn!r}"
    )
    require(
        isinstance(mm.init_std, (int, float)) and mm.init_std >= 0,
        "metamask.init_std",
        f"must be a number >= 0 (0: every logit at its initial value), got {mm.init_std!r}",
    )
    require(
        config.loss.name in PRETEXTS,
        "loss.name",
        f"MetaMask trains {PRETEXTS[0]!r}, got {config.loss.name!r}",
    )
    require(
        config.loss.temperature > 0,
        "loss.temperature",
        f"must be > 0, got {config.loss.temperature!r}",
    )
    require(
        config.loss.contrastive_weight >= 0,
        "loss.contrastive_weight",
        f"must be >= 0, got {config.loss.contrastive_weight!r}",
    )
    # The virtual step reproduces the network's optimizer: plain SGD with momentum.
    require(
        config.optimizer.name == "sgd",
        "optimizer.name",
        f"MetaMask's virtual step is SGD-momentum; set 'sgd', got {config.optimizer.name!r}",
    )
    require(
        not config.optimizer.clip_grad_norm,
        "optimizer.clip_grad_norm",
        "MetaMask's virtual step does not clip; set 0",
    )
    require(
        int(config.augment.num_small_crops) == 0,
        "augment.num_small_crops",
        "MetaMask uses two views; set 0",
    )
    for field in ("predictor_dim", "num_prototypes"):
        require(config.model[field] == 0, f"model.{field}", "MetaMask has none; set 0")
    require(
        config.ema.base_momentum == 0, "ema.base_momentum", "MetaMask has no momentum target; set 0"
    )
    require(config.queue_size == 0, "queue_size", "MetaMask has no queue; set 0")
    for field in ("contrastive_hidden_dims", "contrastive_dim"):
        require(
            field in config.model,
            f"model.{field}",
            "missing (the contrastive projector); see configs/metamask.py",
        )
    require(
        int(config.model.contrastive_dim) > 0,
        "model.contrastive_dim",
        f"must be a positive integer, got {config.model.contrastive_dim!r}",
    )


# --- Model ----------------------------------------------------------------------------------


class MetaMaskModel(nn.Module):
    """Backbone, Barlow Twins projector and contrastive projector on masked features.

    `__call__(x, mask, train)` gives {"h": backbone features (N, F), "z": BT projection,
    "c": contrastive projection}; `mask` (F,) multiplies h before both heads (None: no mask).
    `contrastive` runs the backbone and the contrastive head only (the meta passes).
    """

    backbone: nn.Module
    projector: nn.Module
    contrastive_projector: nn.Module

    def _masked(self, x, mask, train):
        h = self.backbone(x, train=train)
        return h, (h if mask is None else h * mask.astype(h.dtype))

    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool) -> dict:
        h, hm = self._masked(x, mask, train)
        return {
            "h": h,
            "z": self.projector(hm, train=train),
            "c": self.contrastive_projector(hm, train=train),
        }

    def contrastive(self, x: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        return self.contrastive_projector(self._masked(x, mask, train)[1], train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)


def build_model(config: ml_collections.ConfigDict, *, forward_mode: bool = False) -> MetaMaskModel:
    """The network of `config`; `forward_mode=True`: the same network (same parameters, same
    forward computation) with convolutions that `jax.jvp` accepts (`models.conv_module`)."""
    dtype = compute_dtype(config)
    m = config.model

    def projector(hidden, out):
        return models.Projector(
            hidden_dims=tuple(hidden),
            out_dim=out,
            use_bn=m.projector_bn,
            last_bn=m.projector_last_bn,
            activation=m.projector_activation,
            dtype=dtype,
        )

    return MetaMaskModel(
        backbone=models.backbone_from_config(m, dtype, forward_mode=forward_mode),
        projector=projector(m.projector_hidden_dims, m.projector_dim),
        contrastive_projector=projector(m.contrastive_hidden_dims, m.contrastive_dim),
    )


def _mask_fn(sigmoid: bool):
    return jax.nn.sigmoid if sigmoid else (lambda m: m)


def mask_values(state, config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The mask M (F,) of a TrainState, or of a checkpoint tree restored on the host
    (`jssl.checkpoint.restore_host`), as a NumPy array; None for the unmasked baseline
    (`jssl.export.feature_mask`: the exported encoder applies the same mask)."""
    return feature_mask(state, config)


# --- Method ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of MetaMask for one config (`setup(config)`)."""

    config: ml_collections.ConfigDict
    model: MetaMaskModel
    # The same network with convolutions that forward-mode differentiation accepts (same
    # forward computation, so XLA shares the forward pass): the exact hypergradient's
    # directional derivative runs through it (mask_hypergradient's tangent_loss_fn).
    tangent_model: MetaMaskModel
    tx: optax.GradientTransformation
    schedule: optax.Schedule  # the network's learning rate
    mask_tx: optax.GradientTransformation
    mask_schedule: optax.Schedule  # the mask's: the network's shape, its own peak
    views: tuple
    transform: Mapping[str, Any]
    loaded: tuple | None = None  # (params, batch_stats) of `model.init_from`'s backbone

    @property
    def enabled(self) -> bool:
        return bool(self.config.metamask.enabled)

    def mask_fn(self, logits):
        return _mask_fn(self.config.metamask.sigmoid)(logits)

    def current_mask(self, state: TrainState):
        return self.mask_fn(state.extras["mask_logits"]) if self.enabled else None


def setup(config: ml_collections.ConfigDict) -> Setup:
    validate(config)
    mm = config.metamask
    tx, schedule = build_optimizer(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    mask_opt = ml_collections.ConfigDict(config.optimizer.to_dict())
    mask_opt.lr, mask_opt.scale_lr_with_batch = float(mm.lr), False
    mask_schedule = learning_rate_schedule(
        mask_opt, total_steps=config.total_steps, batch_size=config.batch_size
    )
    mask_tx = optax.chain(
        optax.add_decayed_weights(mm.weight_decay), optax.sgd(mask_schedule, momentum=mm.momentum)
    )
    return Setup(
        config=config,
        model=build_model(config),
        tangent_model=build_model(config, forward_mode=True),
        tx=tx,
        schedule=schedule,
        mask_tx=mask_tx,
        mask_schedule=mask_schedule,
        views=(config.augment.view1, config.augment.view2),
        transform=eval_transform(config),
        loaded=load_init_from(config),
    )


def init(s: Setup, rng: jax.Array) -> TrainState:
    size = s.config.data.image_size
    feature_dim = s.model.backbone.num_features

    def extras(params, batch_stats, keys):
        if not s.enabled:
            return {}
        mm = s.config.metamask
        logits = jnp.full((feature_dim,), 0.0 if mm.sigmoid else 1.0, jnp.float32)
        if mm.init_std:  # a random mask (the fixed-random-mask control)
            noise = jax.random.normal(jax.random.fold_in(rng, MASK_INIT_SALT), (feature_dim,))
            logits = logits + float(mm.init_std) * noise
        return {"mask_logits": logits, "mask_opt_state": s.mask_tx.init(logits)}

    return init_state(
        s.model,
        s.tx,
        rng,
        jnp.zeros((2, size, size, 3), jnp.float32),
        None,
        extras=extras,
        backbone=s.loaded,
    )


def make_inputs(s: Setup, state: TrainState, batch: dict) -> list[jax.Array]:
    """The two augmented views of the batch (the one mini-batch of all three updates)."""
    return make_views(state, batch["image"], s.views)


def network_update(s: Setup, state: TrainState, inputs: Sequence[jax.Array]):
    """Step 1: SGD-momentum on the network with the mask held fixed (`state.step` is not
    advanced). Returns (state, metrics)."""
    mask = s.current_mask(state)
    mask = None if mask is None else jax.lax.stop_gradient(mask)
    lo = s.config.loss

    def loss_fn(params):
        batch_stats, outs = state.batch_stats, []
        for x in inputs:  # one pass per view, each with its own batch statistics
            out, upd = s.model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                mask,
                train=True,
                mutable=["batch_stats"],
            )
            batch_stats = upd["batch_stats"]
            outs.append(out)
        bt = losses.barlow_twins(
            outs[0]["z"],
            outs[1]["z"],
            lambd=lo.lambd,
            scale=lo.scale,
            unbiased=lo.unbiased,
            eps=lo.eps,
        )
        ntx = losses.nt_xent(outs[0]["c"], outs[1]["c"], temperature=lo.temperature)
        return bt + lo.contrastive_weight * ntx, (batch_stats, bt, ntx, outs[0]["h"])

    (loss, (batch_stats, bt, ntx, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = step_metrics(loss, grads, params, h, s.schedule(state.step))
    metrics.update(bt_loss=bt, nt_xent_loss=ntx)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def meta_problem(s: Setup, state: TrainState, inputs: Sequence[jax.Array]) -> dict:
    """The meta-objective of `meta_update` at `state`, as `mask_hypergradient`'s arguments:
    {"loss_fn": L_c(params, mask_logits) (the contrastive term on the views, BatchNorm in
    train mode, statistics never written), "tangent_loss_fn": the same through
    `tangent_model`, "velocity": the network's momentum buffer, "weight_decay": per parameter}."""
    batch_stats = state.batch_stats
    opt = s.config.optimizer
    temperature = s.config.loss.temperature

    def meta_loss(params, logits, model=s.model):
        mask = s.mask_fn(logits)
        zs = [
            model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                mask,
                train=True,
                mutable=["batch_stats"],
                method=MetaMaskModel.contrastive,
            )[0]
            for x in inputs
        ]
        return losses.nt_xent(*zs, temperature=temperature)

    wd = opt.weight_decay
    if opt.exclude_bias_and_norm:
        wd = jax.tree_util.tree_map(lambda keep: wd if keep else 0.0, decay_mask(state.params))
    return {
        "loss_fn": meta_loss,
        "tangent_loss_fn": functools.partial(meta_loss, model=s.tangent_model),
        # The network's momentum buffer after its update.
        "velocity": optax.tree_utils.tree_get(state.opt_state, "trace"),
        "weight_decay": wd,
    }


def meta_update(s: Setup, state: TrainState, inputs: Sequence[jax.Array], lr):
    """Steps 2-3: the mask's hypergradient at the state's parameters through a virtual
    SGD-momentum step of learning rate `lr` (`meta_problem`), then the mask's own
    SGD-momentum step."""
    extras = state.extras
    mm = s.config.metamask
    problem = meta_problem(s, state, inputs)
    logits = extras["mask_logits"]
    hyper = mask_hypergradient(
        problem["loss_fn"],
        state.params,
        logits,
        problem["velocity"],
        lr=lr,
        momentum=s.config.optimizer.momentum,
        weight_decay=problem["weight_decay"],
        mode=mm.mode,
        radius=mm.fd_radius,
        tangent_loss_fn=problem["tangent_loss_fn"] if mm.mode == "exact" else None,
    )
    updates, mask_opt_state = s.mask_tx.update(hyper, extras["mask_opt_state"], logits)
    logits = optax.apply_updates(logits, updates)
    mask = s.mask_fn(logits)
    qs = jnp.percentile(mask, jnp.asarray(MASK_QUANTILES, jnp.float32))
    metrics = {
        "hypergrad_norm": global_norm(hyper),
        "mask_lr": s.mask_schedule(state.step),
        "mask_mean": jnp.mean(mask),
        "mask_min": jnp.min(mask),
        "mask_max": jnp.max(mask),
        "mask_std": jnp.std(mask),
    }
    metrics.update({f"mask_q{q:02d}": qs[i] for i, q in enumerate(MASK_QUANTILES)})
    extras = {**extras, "mask_logits": logits, "mask_opt_state": mask_opt_state}
    return state.replace(extras=extras), metrics


def update(s: Setup, state: TrainState, inputs: Sequence[jax.Array]):
    """The whole step on augmented views: network update, then the mask's meta update."""
    new, metrics = network_update(s, state, inputs)
    if s.enabled and s.config.metamask.learn:
        new, meta_metrics = meta_update(s, new, inputs, s.schedule(state.step))
        metrics.update(meta_metrics)
    return new.replace(step=state.step + 1), metrics


def embed(s: Setup, state: TrainState, images: jax.Array) -> jax.Array:
    """The masked backbone features (what the official k-NN monitor reads)."""
    x = augment.center_view(images, **s.transform)
    h = s.model.apply(variables(state), x, train=False, method=MetaMaskModel.features).astype(
        jnp.float32
    )
    mask = s.current_mask(state)
    return h if mask is None else h * mask


def build(config: ml_collections.ConfigDict, data: DataInfo, mesh=None) -> Method:
    """MetaMask's pure functions for this config."""
    return method_of(setup(config), init=init, make_inputs=make_inputs, update=update, embed=embed)
