"""Joint SSL + supervised optimisation through one backbone: Functional Knowledge Transfer
(Chhipa et al., ICIP 2023, arXiv 2304.01354; METHODS.md section 2).

One shared backbone f, a projector g for a pretext loss of the zoo, a linear classifier c on
a clean (un-augmented: resized and centre-cropped) view of the labelled images:

    L = CE(c(f(x_clean)), y) + lambda * L_SSL(g(f(aug1(u))), g(f(aug2(u))))

one backward pass and one optimizer step per train step, nothing frozen. The labelled batch
(`config.joint.labelled_batch_size`) comes from a seeded, class-balanced
`config.joint.labelled_fraction` of the train split; the unlabelled batch
(`config.batch_size`) from the rest of it (the whole split when the fraction is 1).
`lambda = 0` is supervised training alone. The pretext is any `pretrain.PRETEXTS` entry that
needs no method state (no momentum target, queue or prototypes); the paper's is SimCLR's
NT-Xent at temperature 0.5, and `config.loss.normalize=False` feeds raw projections as the
official code does. Evaluation adds the classifier's validation and test accuracy
(`predict`) to the frozen-feature k-NN and linear probe.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jssl import augment, models
from jssl.data import pipeline
from jssl.evaluate import few_label_subset
from jssl.methods import pretrain
from jssl.methods.common import DataInfo, Method, TrainState, step_metrics
from jssl.optim import build_optimizer

__all__ = ["JointModel", "PRETEXTS", "build", "build_parts", "joint_config", "labelled_split"]

PRETEXTS = {name: p for name, p in pretrain.PRETEXTS.items() if not p.needs}


def joint_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.joint` group (configs/fkt.py adds it); defaults are the paper's."""
    c = ml_collections.ConfigDict(dict(
        ssl_weight=1.0,  # lambda
        labelled_fraction=1.0,  # 0.01, 0.1, 1.0: seeded class-balanced subset of the train split
        labelled_batch_size=64,  # global
        subset_seed=0,  # the labelled subset's seed (fixed across training seeds)
    ))
    for key, value in overrides.items():
        if key not in c:
            raise KeyError(f"joint_config: unknown field {key!r}")
        c[key] = value
    return c


class JointModel(nn.Module):
    """Backbone, projector and classifier. `__call__` gives {"h", "z"} (the SSL branch),
    `classify` the logits of the classifier on the backbone's features."""

    backbone: nn.Module
    projector: nn.Module
    classifier: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> dict:
        h = self.backbone(x, train=train)
        return {"h": h, "z": self.projector(h, train=train)}

    def classify(self, x: jax.Array, train: bool) -> jax.Array:
        return self.classifier(self.backbone(x, train=train))

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)

    def init_all(self, x: jax.Array, train: bool) -> tuple[dict, jax.Array]:
        return self(x, train), self.classify(x, train)


def labelled_split(source, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) indices of `source`: a seeded class-balanced `fraction`, and
    the rest (all of it when the rest is empty)."""
    labels = pipeline.source_labels(source)
    labelled = few_label_subset(labels, fraction, seed=seed, num_classes=source.num_classes)
    rest = np.setdiff1d(np.arange(len(labels)), labelled)
    return labelled, (rest if rest.size else np.arange(len(labels)))


def _with_backbone(variables: dict, params: dict, batch_stats: dict, path: str) -> dict:
    """`variables` with the backbone's parameters and statistics replaced by loaded ones,
    which must have the same structure and shapes (ConfigError naming the first mismatch)."""
    from jssl.config import ConfigError

    out = dict(variables)
    for collection, new in (("params", params), ("batch_stats", batch_stats)):
        if collection not in variables or "backbone" not in variables[collection]:
            continue
        old = variables[collection]["backbone"]
        old_shapes = jax.tree_util.tree_map(jnp.shape, old)
        new_shapes = jax.tree_util.tree_map(np.shape, new)
        if old_shapes != new_shapes:
            raise ConfigError(f"config.model.init_from: the backbone in {path} does not match "
                              f"config.model ({collection} differ in structure or shapes); "
                              "use the same backbone, width and stem")
        out[collection] = {**variables[collection],
                           "backbone": jax.tree_util.tree_map(
                               lambda o, n: jnp.asarray(n, o.dtype), old, new)}
    return out


def _validate(config: ml_collections.ConfigDict, pretext: pretrain.Pretext,
              num_devices: int = 1) -> None:
    from jssl.config import ConfigError

    if "joint" not in config:
        raise ConfigError("config.joint: missing; joint configs add it with "
                          "jssl.methods.joint.joint_config()")
    j = config.joint
    if pretext.needs:
        raise ConfigError(f"config.loss.name: {config.loss.name!r} needs "
                          f"{', '.join(sorted(pretext.needs))}, which the joint method does not "
                          "keep; choose a stateless pretext (nt_xent, barlow_twins, vicreg, ...)")
    if not 0.0 < j.labelled_fraction <= 1.0:
        raise ConfigError(f"config.joint.labelled_fraction: must be in (0, 1], got "
                          f"{j.labelled_fraction!r}")
    if j.ssl_weight < 0:
        raise ConfigError(f"config.joint.ssl_weight: must be >= 0, got {j.ssl_weight!r}")
    b = j.labelled_batch_size
    if not (isinstance(b, int) and b > 0 and b % num_devices == 0):
        raise ConfigError(f"config.joint.labelled_batch_size: {b!r} must be a positive multiple "
                          f"of the {num_devices} devices")
    if config.data.train_split == config.eval.val_split:
        raise ConfigError(f"config.data.train_split: {config.data.train_split!r} is also the "
                          "validation split (model selection); train on a disjoint split")


def build(config: ml_collections.ConfigDict, data: DataInfo) -> Method:
    """The joint method's pure functions for this config."""
    return build_parts(config, data)[0]


def build_parts(config: ml_collections.ConfigDict, data: DataInfo):
    """(Method, loss_terms, make_inputs): `loss_terms(params, batch_stats, views, clean,
    labels) -> (ce, ssl, aux)` the objective's two terms, `make_inputs(state, batch) ->
    (views, clean, labels)` the step's inputs (for tests of the gradients)."""
    if config.loss.name not in PRETEXTS:
        raise ValueError(f"config.loss.name: unknown loss {config.loss.name!r}; choose one of "
                         f"{', '.join(sorted(PRETEXTS))}")
    pretext = PRETEXTS[config.loss.name]
    _validate(config, pretext)
    j = config.joint
    ssl_model = pretrain.build_model(config)
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    model = JointModel(backbone=ssl_model.backbone, projector=ssl_model.projector,
                       classifier=models.Classifier(data.num_classes, dtype=dtype))
    kw = pretrain.loss_kwargs(config)
    tx, schedule = build_optimizer(config.optimizer, total_steps=config.total_steps,
                                   batch_size=config.batch_size)
    views = [config.augment.view1, config.augment.view2]
    size = config.data.image_size
    mean, std = tuple(views[0].mean), tuple(views[0].std)
    lam = float(j.ssl_weight)

    loaded = None
    if config.model.get("init_from"):
        from jssl.checkpoint import load_backbone

        loaded = load_backbone(config.model.init_from)

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        dummy = jnp.zeros((2, size, size, 3), jnp.float32)
        variables = models.init_variables(model, init_rng, dummy, train=False,
                                          method=JointModel.init_all)
        params = variables["params"]
        if loaded is not None:
            variables = _with_backbone(variables, *loaded, config.model.init_from)
            params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=state_rng)

    def loss_terms(params, batch_stats, inputs, clean, labels):
        """(CE, L_SSL, aux): the two terms of the objective, separately differentiable."""
        online = []
        for x in inputs:
            out, upd = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                   train=True, mutable=["batch_stats"])
            batch_stats = upd["batch_stats"]
            online.append(out)
        # Without views (lambda = 0) the step is supervised training exactly: no SSL forward
        # touches the BatchNorm statistics.
        ssl = pretext.loss(online, None, {}, None, **kw)[0] if online else jnp.zeros(())
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, clean,
                                  train=True, mutable=["batch_stats"], method=JointModel.classify)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return ce, ssl, {"batch_stats": upd["batch_stats"], "logits": logits,
                         "h": online[0]["h"] if online else logits}

    def clean_view(images: jax.Array) -> jax.Array:
        return augment.center_view(images, size=size, mean=mean, std=std)

    def make_inputs(state: TrainState, batch: dict):
        if lam == 0:
            return [], clean_view(batch["labelled_image"]), batch["labelled_label"]
        rng = jax.random.fold_in(state.rng, state.step)
        keys = jax.random.split(rng, len(views))
        inputs = [augment.augment_view(k, batch["image"], v) for k, v in zip(keys, views)]
        return inputs, clean_view(batch["labelled_image"]), batch["labelled_label"]

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        inputs, clean, labels = make_inputs(state, batch)

        def loss_fn(params):
            ce, ssl, aux = loss_terms(params, state.batch_stats, inputs, clean, labels)
            return ce + lam * ssl, (aux["batch_stats"], ce, ssl, aux["logits"], aux["h"])

        (loss, (batch_stats, ce, ssl, logits, h)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = step_metrics(loss, grads, params, h, schedule(state.step))
        metrics.update(ce_loss=ce, ssl_loss=ssl, train_accuracy=jnp.mean(
            (jnp.argmax(logits, -1) == labels).astype(jnp.float32)))
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    def variables(state):
        return {"params": state.params, "batch_stats": state.batch_stats}

    def embed(state: TrainState, images: jax.Array) -> jax.Array:
        h = model.apply(variables(state), clean_view(images), train=False,
                        method=JointModel.features)
        return h.astype(jnp.float32)

    def predict(state: TrainState, images: jax.Array) -> jax.Array:
        return model.apply(variables(state), clean_view(images), train=False,
                           method=JointModel.classify).astype(jnp.float32)

    def calibrate(state: TrainState, images: jax.Array) -> TrainState:
        _, upd = model.apply(variables(state), clean_view(images), train=True,
                             mutable=["batch_stats"], method=JointModel.init_all)
        return state.replace(batch_stats=upd["batch_stats"])

    def batches(source, mesh):
        _validate(config, pretext, mesh.size)
        labelled, unlabelled = labelled_split(source, j.labelled_fraction, j.subset_seed)
        return pipeline.JointBatches(pipeline.SubsetSource(source, unlabelled),
                                     pipeline.SubsetSource(source, labelled),
                                     batch_size=config.batch_size,
                                     labelled_batch_size=j.labelled_batch_size,
                                     seed=config.seed, mesh=mesh)

    method = Method(init=init, train_step=train_step, embed=embed, calibrate=calibrate,
                    predict=predict, batches=batches)
    return method, loss_terms, make_inputs
