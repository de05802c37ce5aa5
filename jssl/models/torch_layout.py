"""jssl backbones under PyTorch's names and tensor layouts (torchvision and timm ResNets).

`to_torch(module, variables)` gives the state dict of the PyTorch twin of a jssl backbone;
`from_torch(module, state_dict)` the jssl variables of one. Pure NumPy, no torch: the
files are read and written by `jssl.export`.

The twins. A jssl ResNet with the "imagenet" stem and 64 filters is, tensor for tensor,
`torchvision.models.resnet18/34/50()` and `timm.create_model("resnet18/34/50")` (their
ResNets share the names below), with the classifier `fc` left out: build the PyTorch model
with `fc = nn.Identity()` (timm: `num_classes=0`). The "cifar" stem (a 3x3 stride-1 first
convolution, no max pooling) is the same network with two modules changed:
`conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and `maxpool = nn.Identity()`
(`CIFAR_STEM_PYTORCH`). Other backbones (ConvNet, AlexNets, narrower ResNets) have no twin.

Names: `conv1`, `bn1`, then `layer{stage}.{block}.conv{n}` / `.bn{n}` and
`.downsample.0` / `.downsample.1` for a projected shortcut; BatchNorm as `weight`, `bias`,
`running_mean`, `running_var` and `num_batches_tracked` (written as 0: PyTorch's BatchNorm
reads it only when its momentum is None, and jssl does not count). Layouts: a Flax kernel
(kh, kw, in, out) is a PyTorch weight (out, in, kh, kw); images are NHWC in jssl and NCHW
in PyTorch, which the caller handles.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jssl.models.resnet import ResNet

__all__ = ["twin", "to_torch", "from_torch", "CIFAR_STEM_PYTORCH", "TorchLayoutError"]

# What turns torchvision's ResNet into the twin of a jssl ResNet with the "cifar" stem.
CIFAR_STEM_PYTORCH = (
    "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)\n"
    "model.maxpool = torch.nn.Identity()\n"
)

_DEPTHS = {(2, 2, 2, 2, "basic"): 18, (3, 4, 6, 3, "basic"): 34, (3, 4, 6, 3, "bottleneck"): 50}


class TorchLayoutError(ValueError):
    """A backbone without a twin, or a state dict that does not fit (one line, naming it)."""


def twin(module) -> str:
    """The PyTorch constructor of `module`'s twin, e.g. "resnet50"; TorchLayoutError (one
    line saying what to do instead) when it has none."""
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


def _entries(module: ResNet, params: Mapping) -> list[tuple[str, tuple[str, ...], str]]:
    """(torch prefix, Flax path, "conv" | "bn") of every layer, in PyTorch's order."""
    twin(module)
    out = [("conv1", ("Conv_0",), "conv"), ("bn1", ("BatchNorm_0",), "bn")]
    name = "Bottleneck" if module.block == "bottleneck" else "BasicBlock"
    convs = 3 if module.block == "bottleneck" else 2
    k = 0
    for stage, blocks in enumerate(module.stage_sizes):
        for b in range(blocks):
            block = f"{name}_{k}"
            prefix = f"layer{stage + 1}.{b}"
            for n in range(convs):
                out.append((f"{prefix}.conv{n + 1}", (block, f"Conv_{n}"), "conv"))
                out.append((f"{prefix}.bn{n + 1}", (block, f"BatchNorm_{n}"), "bn"))
            if f"Conv_{convs}" in params.get(block, {}):
                out.append((f"{prefix}.downsample.0", (block, f"Conv_{convs}"), "conv"))
                out.append((f"{prefix}.downsample.1", (block, f"BatchNorm_{convs}"), "bn"))
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


def to_torch(module, variables: Mapping) -> dict[str, np.ndarray]:
    """The PyTorch state dict (name -> NumPy array, PyTorch layout) of `module`'s twin
    holding `variables` ({"params", "batch_stats"} of the backbone)."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    out: dict[str, np.ndarray] = {}
    for prefix, path, kind in _entries(module, params):
        if kind == "conv":
            kernel = np.asarray(_get(params, path)["kernel"])
            out[f"{prefix}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        else:
            p, s = _get(params, path), _get(stats, path)
            out[f"{prefix}.weight"] = np.asarray(p["scale"])
            out[f"{prefix}.bias"] = np.asarray(p["bias"])
            out[f"{prefix}.running_mean"] = np.asarray(s["mean"])
            out[f"{prefix}.running_var"] = np.asarray(s["var"])
            out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


# Tensors of a PyTorch ResNet checkpoint that are not the backbone's: skipped on import.
SKIPPED = ("fc.weight", "fc.bias")


def from_torch(module, state_dict: Mapping, expected: Mapping, *, source: str) -> dict:
    """The jssl variables of `module` from the PyTorch state dict of its twin.

    `expected`: the backbone's variables (or their shapes: `jax.eval_shape` of its init),
    which fix the names and shapes; `source` names the file in errors. The classifier
    (`fc.weight`, `fc.bias`) is skipped and `num_batches_tracked` is not read; any other
    tensor missing, extra, or of another shape is a TorchLayoutError naming it.
    """
    params, stats = expected["params"], expected.get("batch_stats", {})
    tensors = {k: v for k, v in state_dict.items() if k not in SKIPPED}
    used: set[str] = set()
    out: dict = {"params": {}, "batch_stats": {}}

    def take(name: str, want: tuple[int, ...], perm: tuple[int, ...] | None = None):
        if name not in tensors:
            raise TorchLayoutError(
                f"{source}: tensor {name} is missing (a {twin(module)} state dict has it)"
            )
        value = np.asarray(tensors[name])
        torch_shape = tuple(want[i] for i in perm) if perm else want
        if value.shape != torch_shape:
            hint = (
                f" (model.stem {module.stem!r}: 'imagenet' is the 7x7 first convolution, "
                "'cifar' the 3x3)"
                if name == "conv1.weight"
                else ""
            )
            raise TorchLayoutError(
                f"{source}: tensor {name} has shape {value.shape}; this jssl "
                f"{twin(module)} expects {torch_shape}{hint}"
            )
        used.add(name)
        value = value.transpose(np.argsort(perm)) if perm else value
        return np.ascontiguousarray(value.astype(np.float32))

    for prefix, path, kind in _entries(module, params):
        if kind == "conv":
            want = tuple(_get(params, path)["kernel"].shape)
            _set(out["params"], (*path, "kernel"), take(f"{prefix}.weight", want, (3, 2, 0, 1)))
        else:
            p, s = _get(params, path), _get(stats, path)
            _set(out["params"], (*path, "scale"), take(f"{prefix}.weight", p["scale"].shape))
            _set(out["params"], (*path, "bias"), take(f"{prefix}.bias", p["bias"].shape))
            _set(
                out["batch_stats"], (*path, "mean"), take(f"{prefix}.running_mean", s["mean"].shape)
            )
            _set(out["batch_stats"], (*path, "var"), take(f"{prefix}.running_var", s["var"].shape))
            used.add(f"{prefix}.num_batches_tracked")
    extra = sorted(set(tensors) - used)
    if extra:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        raise TorchLayoutError(
            f"{source}: tensor {extra[0]}{more} is not part of a {twin(module)} backbone; give "
            "the state dict of the backbone (the classifier fc.* may stay)"
        )
    return out
