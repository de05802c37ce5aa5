"""Using what was trained: a run's encoder as a Flax module and its variables.

    module, variables = jssl.export.load_encoder("runs/barlow")      # a workdir
    module, variables = jssl.export.load_encoder("encoder.msgpack")  # an exported file
    features = module.apply(variables, images_uint8)                 # (N, F) float32

`module` is an `Encoder`: the run's evaluation transform (resize/centre crop to the
training image size, the run's normalisation) followed by its backbone, so its features
are the ones the run's k-NN and linear probe used (`Method.embed`) for every method whose
model has a `backbone` (pretrain, puzzle, joint, ...). Call it with `train=False` (the
default) for frozen features.

MetaMask's mask is part of its encoder (its evaluation reads the masked features): the
encoder multiplies the backbone's features by it (`params.feature_mask`).

Command line: `python -m jssl.export --workdir DIR --out encoder.msgpack [--step N]` writes
one msgpack file holding the architecture (the config fields that build it) and the
variables; `load_encoder` reads it back without the workdir.

PyTorch: `--format safetensors --layout torchvision|timm --out FILE [--with-heads]` writes
the backbone as the state dict of its torchvision / timm twin (`jssl.models.torch_layout`:
names, layouts, which backbones have one); `--config.model.init_from=torchvision:PATH` or
`timm:PATH` (a .safetensors or .pth state dict) starts a run from one (`load_init_from`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import types
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from jssl import augment, io, models, paths
from jssl.checkpoint import load_backbone, restore_host, saved_config
from jssl.config import compute_dtype, eval_transform, from_flat, get_field
from jssl.errors import ConfigError
from jssl.models import torch_layout

__all__ = [
    "Encoder",
    "Encoders",
    "load_encoder",
    "load_encoders",
    "export_encoder",
    "export_torch",
    "feature_mask",
    "load_init_from",
    "random_encoder",
    "write_encoder",
    "read_state_dict",
    "LAYOUTS",
    "main",
]

FORMAT = "jssl-encoder-1"
# The config fields that build an encoder (`models.backbone_from_config`, `compute_dtype`
# and `eval_transform`), besides the backbone's own (`models.CONFIG_FIELDS`); an exported
# file carries exactly these.
_ENCODER_FIELDS = (
    "model.backbone",
    "dtype",
    "data.image_size",
    "augment.view1.mean",
    "augment.view1.std",
)


def _encoder_field_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    cls = models.BACKBONES.get(config.get("model", {}).get("backbone"), (None,))[0]
    own = tuple(f"model.{f}" for f in models.CONFIG_FIELDS.get(cls, ()))
    return _ENCODER_FIELDS[:1] + own + _ENCODER_FIELDS[1:]


class Encoder(nn.Module):
    """uint8 images (N, H, W, C) -> backbone features (N, F) float32, in evaluation transform;
    `masked`: times a per-feature mask (`params.feature_mask`, MetaMask's)."""

    backbone: nn.Module
    size: int
    mean: Sequence[float]
    std: Sequence[float]
    masked: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = augment.center_view(images, size=self.size, mean=self.mean, std=self.std)
        h = self.backbone(x, train=train).astype(jnp.float32)
        if self.masked:
            h = h * self.param("feature_mask", nn.initializers.ones, h.shape[-1:], jnp.float32)
        return h


def _encoder_module(config: ml_collections.ConfigDict, masked: bool = False) -> Encoder:
    return Encoder(
        backbone=models.backbone_from_config(config.model, compute_dtype(config)),
        masked=masked,
        **eval_transform(config),
    )


def feature_mask(tree, config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The per-feature mask a run's evaluation multiplies the backbone features by, as a
    NumPy array (F,): MetaMask's M = sigmoid(m) (m itself with `metamask.sigmoid` False),
    from a TrainState or a checkpoint tree restored on the host; None when there is none."""
    extras = tree.extras if hasattr(tree, "extras") else tree.get("extras", {})
    if not extras or "mask_logits" not in extras:
        return None
    logits = jnp.asarray(np.asarray(extras["mask_logits"]), jnp.float32)
    sigmoid = config.get("metamask", {}).get("sigmoid", True)
    return np.asarray(jax.nn.sigmoid(logits) if sigmoid else logits)


def _from_workdir(workdir: str, step: int | None):
    config, variables, _ = _restore_encoder(workdir, step)
    return config, variables


def _restore_encoder(workdir: str, step: int | None):
    """(config, the encoder's variables, the whole checkpoint tree) of a run."""
    config = saved_config(workdir)
    for field in _encoder_field_names(config):
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
    mask = feature_mask(tree, config)
    if mask is not None:
        variables["params"]["feature_mask"] = mask
    return config, variables, tree


def _encoder_fields(config: ml_collections.ConfigDict) -> dict:
    return {
        field: (list(v) if isinstance(v := get_field(config, field), (tuple, list)) else v)
        for field in _encoder_field_names(config)
    }


def load_encoder(path: str, *, step: int | None = None) -> tuple[Encoder, dict]:
    """(module, variables) of the encoder in `path`: a jssl workdir (its latest checkpoint, or
    `step`) or a file written by `export_encoder`. Variables are NumPy arrays on the host."""
    if paths.isdir(path):
        config, variables = _from_workdir(path, step)
        return _encoder_module(config, "feature_mask" in variables["params"]), variables
    if not paths.isfile(path):
        raise ConfigError(f"{path}: no such workdir or exported encoder file")
    with paths.open_file(path, "rb") as f:
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
    return _encoder_module(config, "feature_mask" in variables["params"]), variables


def write_encoder(config: ml_collections.ConfigDict, variables: dict, out: str) -> str:
    """Write an encoder of `config`'s architecture with `variables` ({"params": {"backbone":
    ...}, optional "batch_stats", optional "params"."feature_mask"}) to the msgpack file
    `out`, the format `load_encoder` reads; refuses to overwrite an existing file."""
    if paths.exists(out):
        raise ConfigError(f"{out} exists; choose another path (nothing was overwritten)")
    blob: dict[str, Any] = {
        "format": FORMAT,
        "config": json.dumps(_encoder_fields(config)),
        "variables": variables,
    }
    io.write_bytes(out, serialization.msgpack_serialize(blob))
    return out


def export_encoder(workdir: str, out: str, *, step: int | None = None) -> str:
    """Write the encoder of `workdir` (latest checkpoint, or `step`) to the msgpack file
    `out`; refuses to overwrite an existing file. Returns `out`."""
    if paths.exists(out):
        raise ConfigError(f"--out {out} exists; choose another path (nothing was overwritten)")
    config, variables = _from_workdir(workdir, step)
    return write_encoder(config, variables, out)


# --- PyTorch: safetensors state dicts of the torchvision / timm twins -----------------------

LAYOUTS = ("torchvision", "timm")
TORCH_FORMAT = "jssl-torch-1"


def export_torch(
    workdir: str,
    out: str,
    *,
    layout: str,
    with_heads: bool = False,
    step: int | None = None,
) -> tuple[str, str]:
    """Write the encoder of `workdir` as the safetensors state dict of its PyTorch twin.

    `layout` "torchvision" or "timm" (`jssl.models.torch_layout`: ResNet-18/34/50 with 64
    filters, the "cifar" stem being the twin with a 3x3 first convolution and no max
    pooling; ViT tiny/small/base/large, timm only). The features of the twin equal
    `Method.embed`'s: a MetaMask run's mask becomes the twin's `fc` (a ViT's `head`), a
    diagonal Linear(F, F) with zero bias. `with_heads`: the run's other
    parameters too (projector, predictor, prototypes, classifier), as `heads.<Flax path>`
    with Dense kernels as Linear weights (out, in) and BatchNorm under PyTorch's names.
    Next to `out` goes `<out>.py`: the lines that build the twin and load the file.
    Refuses to overwrite anything. Returns (out, the loading code).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    code_path = os.path.splitext(out)[0] + ".py"
    for path in (out, code_path):
        if paths.exists(path):
            raise ConfigError(
                f"--out: {path} exists; choose another path (nothing was overwritten)"
            )
    config, variables, tree = _restore_encoder(workdir, step)
    module = models.backbone_from_config(config.model)
    try:
        name = torch_layout.twin(module, layout)
        backbone = {
            "params": variables["params"]["backbone"],
            "batch_stats": variables.get("batch_stats", {}).get("backbone", {}),
        }
        tensors = torch_layout.to_torch(module, backbone)
    except torch_layout.TorchLayoutError as e:
        raise ConfigError(f"--workdir {workdir}: {e}") from None
    mask = variables["params"].get("feature_mask")
    mask_weight, mask_bias = torch_layout.mask_names(module)
    if mask is not None:
        tensors[mask_weight] = np.diag(np.asarray(mask, np.float32))
        tensors[mask_bias] = np.zeros(len(mask), np.float32)
    if with_heads:
        tensors.update(_heads(tree))
    code = torch_layout.pytorch_code(
        module,
        layout,
        image_size=config.data.image_size,
        num_classes=None if mask is None else len(mask),
    )
    code += (
        "from safetensors.torch import load_file\n"
        f'state = load_file("{os.path.basename(out)}")\n'
        + (
            'state = {k: v for k, v in state.items() if not k.startswith("heads.")}\n'
            if with_heads
            else ""
        )
        + "model.load_state_dict(state, strict=True)\nmodel.eval()\n"
    )
    metadata = {
        "format": TORCH_FORMAT,
        "layout": layout,
        "twin": name,
        "image_size": str(config.data.image_size),
        "feature_mask": mask_weight if mask is not None else "",
        "source": os.path.abspath(workdir),
    }
    save_file = _safetensors("--format safetensors").save_file
    io.write_with(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    io.write_text(code_path, code)
    return out, code


def _heads(tree: dict) -> dict[str, np.ndarray]:
    """The non-backbone parameters and statistics under `heads.<Flax path>` (PyTorch names)."""
    out = {}
    names = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    for collection in ("params", "batch_stats"):
        for path, x in jax.tree_util.tree_leaves_with_path(tree.get(collection, {})):
            keys = [str(getattr(k, "key", k)) for k in path]
            if keys[0] == "backbone":
                continue
            kernel = keys[-1] == "kernel"
            how = {2: "dense", 4: "conv"}.get(np.ndim(x), "copy") if kernel else "copy"
            keys[-1] = names.get(keys[-1], keys[-1])
            out["heads." + ".".join(keys)] = torch_layout.torch_tensor(x, how)
    return out


def _safetensors(what: str):
    """safetensors.numpy (with SafetensorError), an optional dependency (the interop
    extra): imported on use, a one-line ConfigError naming `what` needs it when missing."""
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file, save_file
    except ImportError:
        raise ConfigError(f"{what} needs safetensors: pip install 'jssl[interop]'") from None
    return types.SimpleNamespace(
        load_file=load_file, save_file=save_file, SafetensorError=SafetensorError
    )


def read_state_dict(path: str, *, field: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict on disk as NumPy arrays: a .safetensors file, or a
    .pth / .pt / .bin file of `torch.save` (needs torch; a dict with a "state_dict" or
    "model" entry is unwrapped). `field` names the option in errors."""
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: {path}: no such file")
    if path.endswith(".safetensors"):
        st = _safetensors(field)
        try:
            return st.load_file(path)
        except (st.SafetensorError, OSError, ValueError) as e:
            raise ConfigError(f"{field}: {path}: not a readable safetensors file ({e})") from None
    try:
        import torch  # heavy and optional (the interop extra): imported only for .pth files
    except ImportError:
        raise ConfigError(
            f"{field}: reading {path} needs torch (pip install 'jssl[interop]'), or give a "
            ".safetensors file"
        ) from None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConfigError(
            f"{field}: {path}: not a PyTorch state dict ({type(e).__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(torch.is_tensor(v) for v in blob.values()):
        raise ConfigError(f"{field}: {path}: not a state dict (a dict of tensors)")
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy()
        for k, v in blob.items()
    }


def load_init_from(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(params, batch_stats) of the backbone `config.model.init_from` names: the latest
    checkpoint of a jssl workdir, or `torchvision:PATH` / `timm:PATH`, the state dict of the
    backbone's PyTorch twin (`jssl.models.torch_layout`); host arrays. ConfigError (one line
    naming the field and the tensor) when it does not fit `config.model`."""
    spec = config.model.init_from
    layout, sep, path = spec.partition(":")
    if not sep or layout not in LAYOUTS:
        return load_backbone(spec)
    field = "config.model.init_from"
    module = models.backbone_from_config(config.model)
    size = config.data.image_size
    init = functools.partial(module.init, train=False)
    expected = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    try:
        torch_layout.twin(module, layout)
        variables = torch_layout.from_torch(
            module, read_state_dict(path, field=field), expected, source=f"{field}: {path}"
        )
    except torch_layout.TorchLayoutError as e:
        raise ConfigError(str(e) if str(e).startswith(field) else f"{field}: {e}") from None
    return variables["params"], variables["batch_stats"]


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


def first_difference(expected, loaded) -> str:
    """The first leaf whose shape differs between two trees, as one phrase."""
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
                f"config describes ({first_difference(expected, v)}); give the "
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


def random_encoder(config: ml_collections.ConfigDict, out: str, *, seed: int) -> str:
    """Write the encoder of `config`'s architecture at a seeded random initialisation to
    `out`, in `export_encoder`'s format (a random-init control, e.g. among the fusion
    study's encoders): nothing is trained, and BatchNorm keeps its initial statistics (mean
    0, variance 1), so in evaluation mode it is the identity times its initial scale.
    Refuses to overwrite an existing file. Returns `out`."""
    if paths.exists(out):
        raise ConfigError(f"{out} exists; choose another path (nothing was overwritten)")
    module = _encoder_module(config)
    dummy = jnp.zeros((1, module.size, module.size, 3), jnp.uint8)
    variables = module.init(jax.random.PRNGKey(int(seed)), dummy)
    return write_encoder(config, jax.tree_util.tree_map(np.asarray, dict(variables)), out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jssl.export",
        description="Export a run's encoder: a jssl msgpack file, or the safetensors state "
        "dict of its torchvision / timm twin.",
    )
    p.add_argument("--workdir", required=True, help="a jssl run's --workdir")
    p.add_argument("--out", required=True, help="file to write, e.g. encoder.msgpack")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", choices=("msgpack", "safetensors"), default="msgpack")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="with --format safetensors")
    p.add_argument("--with-heads", action="store_true", help="safetensors: projector and heads too")
    args = p.parse_args(argv)
    try:
        if args.format == "msgpack":
            if args.layout or args.with_heads:
                raise ConfigError("--layout and --with-heads go with --format safetensors")
            print(export_encoder(args.workdir, args.out, step=args.step))
            return 0
        if args.layout is None:
            raise ConfigError("--format safetensors needs --layout torchvision or --layout timm")
        out, _ = export_torch(
            args.workdir, args.out, layout=args.layout, with_heads=args.with_heads, step=args.step
        )
    except ConfigError as e:
        print(f"jssl.export: error: {e}", file=sys.stderr)
        return 2
    print(out)
    print(f"jssl.export: load it with the lines in {os.path.splitext(out)[0]}.py", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
