"""jssl backbones under PyTorch's names and tensor layouts (torchvision and timm).

`to_torch(module, variables)` gives the state dict of the PyTorch twin of a jssl backbone;
`from_torch(module, state_dict, expected)` the jssl variables of one; `pytorch_code`
the lines that build the twin. Pure NumPy, no torch: files are read and written by
`jssl.export`.

The twins. A jssl ResNet with the "imagenet" stem and 64 filters is, tensor for tensor,
`torchvision.models.resnet18/34/50()` and `timm.create_model("resnet18/34/50")` (their
ResNets share the names below), with the classifier `fc` left out: build the PyTorch model
with `fc = nn.Identity()` (timm: `num_classes=0`). The "cifar" stem (a 3x3 stride-1 first
convolution, no max pooling) is the same network with two modules changed:
`conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and `maxpool = nn.Identity()`
(`CIFAR_STEM_PYTORCH`). A jssl ViT is timm's `vit_{tiny,small,base,large}_patch16_224`
built with the run's `img_size` and `patch_size` (and `global_pool="avg",
class_token=False` for `pool="gap"`); timm only (torchvision's ViT names differ). Other
backbones (ConvNet, AlexNets, narrower ResNets, other ViT sizes) have no twin.

Names. ResNets: `conv1`, `bn1`, then `layer{stage}.{block}.conv{n}` / `.bn{n}` and
`.downsample.0` / `.downsample.1` for a projected shortcut; BatchNorm as `weight`, `bias`,
`running_mean`, `running_var` and `num_batches_tracked` (written as 0: PyTorch's BatchNorm
reads it only when its momentum is None, and jssl does not count). ViTs: `cls_token`,
`pos_embed`, `patch_embed.proj`, `blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 /
mlp.fc1 / mlp.fc2`, `norm` (or `fc_norm`). Layouts: a Flax convolution kernel (kh, kw,
in, out) is a PyTorch weight (out, in, kh, kw), a Dense kernel (in, out) a Linear weight
(out, in); images are NHWC in jssl and NCHW in PyTorch, which the caller handles.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jssl.models.resnet import ResNet
from jssl.models.vit import ViT

__all__ = [
    "twin",
    "to_torch",
    "from_torch",
    "pytorch_code",
    "torch_tensor",
    "CIFAR_STEM_PYTORCH",
    "SKIPPED",
    "TorchLayoutError",
]

# What turns torchvision's ResNet into the twin of a jssl ResNet with the "cifar" stem.
CIFAR_STEM_PYTORCH = (
    "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)\n"
    "model.maxpool = torch.nn.Identity()\n"
)

_DEPTHS = {(2, 2, 2, 2, "basic"): 18, (3, 4, 6, 3, "basic"): 34, (3, 4, 6, 3, "bottleneck"): 50}
_VIT_SIZES = {  # (width, depth, heads, mlp) -> timm's name
    (192, 12, 3, 768): "tiny",
    (384, 12, 6, 1536): "small",
    (768, 12, 12, 3072): "base",
    (1024, 24, 16, 4096): "large",
}

# Tensors of a PyTorch checkpoint that are not the backbone's: skipped on import.
SKIPPED = ("fc.weight", "fc.bias", "head.weight", "head.bias")


class TorchLayoutError(ValueError):
    """A backbone without a twin, or a state dict that does not fit (one line, naming it)."""


def twin(module, layout: str = "torchvision") -> str:
    """The PyTorch constructor name of `module`'s twin in `layout` ("torchvision" or
    "timm"), e.g. "resnet50" or "vit_small_patch16_224"; TorchLayoutError (one line saying
    what to do instead) when it has none."""
    if isinstance(module, ViT):
        size = _VIT_SIZES.get((module.width, module.depth, module.num_heads, module.mlp_dim))
        if size is None:
            raise TorchLayoutError(
                f"a ViT of width {module.width}, depth {module.depth} and {module.num_heads} "
                "heads has no timm twin (vit_tiny/small/base/large have); export it with "
                "--format msgpack"
            )
        if layout != "timm":
            raise TorchLayoutError(
                "jssl ViTs have timm twins (vit_*_patch16_224), not torchvision ones; use "
                "--layout timm (or timm:PATH)"
            )
        return f"vit_{size}_patch16_224"
    if not isinstance(module, ResNet):
        raise TorchLayoutError(
            f"the {type(module).__name__} backbone has no torchvision or timm twin; export it "
            "with --format msgpack (jssl.export.load_encoder reads it)"
        )
    depth = _DEPTHS.get((*module.stage_sizes, module.block))
    if depth is None or module.num_filters != 64:
        raise TorchLayoutError(
            f"a ResNet with stages {tuple(module.stage_sizes)} and {module.num_filters} "
            "filters has no torchvision or timm twin (they have 64 filters and the stages of "
            "ResNet-18, 34 or 50); export it with --format msgpack"
        )
    return f"resnet{depth}"


def pytorch_code(module, layout: str, *, image_size: int, num_classes: int | None = None) -> str:
    """The Python lines that build `model`, the twin of `module` in `layout`, ready for
    `load_state_dict(..., strict=True)`; `num_classes`: an fc of that many outputs (the
    feature mask, a diagonal Linear)."""
    name = twin(module, layout)
    if isinstance(module, ViT):
        extra = ', global_pool="avg", class_token=False' if module.pool == "gap" else ""
        code = (
            "import timm\nimport torch\n"
            f'model = timm.create_model("{name}", pretrained=False, num_classes=0, '
            f"img_size={image_size}, patch_size={module.patch_size}{extra})\n"
        )
    elif layout == "timm":
        code = (
            "import timm\nimport torch\n"
            f'model = timm.create_model("{name}", pretrained=False, num_classes=0)\n'
        )
    else:
        code = (
            "import torch\nimport torchvision\n"
            f"model = torchvision.models.{name}()\nmodel.fc = torch.nn.Identity()\n"
        )
    if num_classes is not None:
        head = "head" if isinstance(module, ViT) else "fc"
        code += f"model.{head} = torch.nn.Linear({num_classes}, {num_classes})\n"
    if isinstance(module, ResNet) and module.stem == "cifar":
        code += CIFAR_STEM_PYTORCH
    return code


def mask_names(module) -> tuple[str, str]:
    """The twin's (weight, bias) names of the final Linear that carries a feature mask."""
    return ("head.weight", "head.bias") if isinstance(module, ViT) else ("fc.weight", "fc.bias")


# An entry: (torch name, collection, Flax path, how): how is "conv" (kernel transposed to
# (out, in, kh, kw)), "dense" (kernel transposed to (out, in)) or "copy".
def _entries(module, params: Mapping) -> list[tuple[str, str, tuple[str, ...], str]]:
    twin(module, "timm")  # raises for a backbone without a twin
    out: list = []

    def bn(torch_prefix, path):
        out.extend(
            [
                (f"{torch_prefix}.weight", "params", (*path, "scale"), "copy"),
                (f"{torch_prefix}.bias", "params", (*path, "bias"), "copy"),
                (f"{torch_prefix}.running_mean", "batch_stats", (*path, "mean"), "copy"),
                (f"{torch_prefix}.running_var", "batch_stats", (*path, "var"), "copy"),
                (f"{torch_prefix}.num_batches_tracked", "counter", path, "copy"),
            ]
        )

    def conv(torch_name, path):
        out.append((torch_name, "params", path, "conv"))

    def ln(torch_prefix, path):
        out.append((f"{torch_prefix}.weight", "params", (*path, "scale"), "copy"))
        out.append((f"{torch_prefix}.bias", "params", (*path, "bias"), "copy"))

    def dense(torch_prefix, path):
        out.append((f"{torch_prefix}.weight", "params", (*path, "kernel"), "dense"))
        out.append((f"{torch_prefix}.bias", "params", (*path, "bias"), "copy"))

    if isinstance(module, ViT):
        if module.pool == "token":
            out.append(("cls_token", "params", ("cls_token",), "copy"))
        out.append(("pos_embed", "params", ("pos_embed",), "copy"))
        conv("patch_embed.proj.weight", ("patch_embed",))
        out.append(("patch_embed.proj.bias", "params", ("patch_embed_bias",), "copy"))
        for i in range(module.depth):
            b = f"blocks_{i}"
            ln(f"blocks.{i}.norm1", (b, "norm1"))
            dense(f"blocks.{i}.attn.qkv", (b, "attn", "qkv"))
            dense(f"blocks.{i}.attn.proj", (b, "attn", "proj"))
            ln(f"blocks.{i}.norm2", (b, "norm2"))
            dense(f"blocks.{i}.mlp.fc1", (b, "fc1"))
            dense(f"blocks.{i}.mlp.fc2", (b, "fc2"))
        ln(
            "norm" if module.pool == "token" else "fc_norm",
            ("norm" if module.pool == "token" else "fc_norm",),
        )
        return out

    conv("conv1.weight", ("Conv_0", "kernel"))
    bn("bn1", ("BatchNorm_0",))
    name = "Bottleneck" if module.block == "bottleneck" else "BasicBlock"
    convs = 3 if module.block == "bottleneck" else 2
    k = 0
    for stage, blocks in enumerate(module.stage_sizes):
        for b in range(blocks):
            block = f"{name}_{k}"
            prefix = f"layer{stage + 1}.{b}"
            for n in range(convs):
                conv(f"{prefix}.conv{n + 1}.weight", (block, f"Conv_{n}", "kernel"))
                bn(f"{prefix}.bn{n + 1}", (block, f"BatchNorm_{n}"))
            if f"Conv_{convs}" in params.get(block, {}):
                conv(f"{prefix}.downsample.0.weight", (block, f"Conv_{convs}", "kernel"))
                bn(f"{prefix}.downsample.1", (block, f"BatchNorm_{convs}"))
            k += 1
    return out


def _get(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


_TO_TORCH = {"conv": (3, 2, 0, 1), "dense": (1, 0), "copy": None}


def torch_tensor(value, how: str) -> np.ndarray:
    """A Flax array in PyTorch's layout: "conv" (kh, kw, in, out) -> (out, in, kh, kw),
    "dense" (in, out) -> (out, in), "copy" as it is."""
    value, perm = np.asarray(value), _TO_TORCH[how]
    return np.ascontiguousarray(value.transpose(perm) if perm else value)


def to_torch(module, variables: Mapping) -> dict[str, np.ndarray]:
    """The PyTorch state dict (name -> NumPy array, PyTorch layout) of `module`'s twin
    holding `variables` ({"params", "batch_stats"} of the backbone)."""
    params = variables["params"]
    out: dict[str, np.ndarray] = {}
    for name, collection, path, how in _entries(module, params):
        if collection == "counter":
            out[name] = np.zeros((), np.int64)
            continue
        out[name] = torch_tensor(_get(variables[collection], path), how)
    return out


def from_torch(module, state_dict: Mapping, expected: Mapping, *, source: str) -> dict:
    """The jssl variables of `module` from the PyTorch state dict of its twin.

    `expected`: the backbone's variables (or their shapes: `jax.eval_shape` of its init),
    which fix the names and shapes; `source` names the file in errors. The classifier
    (`fc.*`, `head.*`) is skipped and `num_batches_tracked` is not read; any other tensor
    missing, extra, or of another shape is a TorchLayoutError naming it.
    """
    tensors = {k: v for k, v in state_dict.items() if k not in SKIPPED}
    used: set[str] = set()
    out: dict = {"params": {}, "batch_stats": {}}
    for name, collection, path, how in _entries(module, expected["params"]):
        if collection == "counter":
            used.add(name)
            continue
        want = tuple(_get(expected[collection], path).shape)
        perm = _TO_TORCH[how]
        torch_shape = tuple(want[i] for i in perm) if perm else want
        if name not in tensors:
            raise TorchLayoutError(
                f"{source}: tensor {name} is missing (a {twin(module, 'timm')} state dict has it)"
            )
        value = np.asarray(tensors[name])
        if value.shape != torch_shape:
            hint = (
                f" (model.stem {module.stem!r}: 'imagenet' is the 7x7 first convolution, "
                "'cifar' the 3x3)"
                if name == "conv1.weight"
                else " (data.image_size and model.patch_size fix its grid)"
                if name == "pos_embed"
                else ""
            )
            raise TorchLayoutError(
                f"{source}: tensor {name} has shape {value.shape}; this jssl "
                f"{twin(module, 'timm')} expects {torch_shape}{hint}"
            )
        used.add(name)
        value = value.transpose(np.argsort(perm)) if perm else value
        _set(out[collection], path, np.ascontiguousarray(value.astype(np.float32)))
    extra = sorted(set(tensors) - used)
    if extra:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        raise TorchLayoutError(
            f"{source}: tensor {extra[0]}{more} is not part of a {twin(module, 'timm')} "
            "backbone; give the state dict of the backbone (the classifier fc.* / head.* "
            "may stay)"
        )
    return out
