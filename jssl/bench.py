"""Benchmarks: `python -m jssl.bench --method barlow_twins ...` prints one JSON line.

The train step is timed on device-resident data (random uint8 images put on the mesh
once), after compilation, with `block_until_ready` around each step; the median is
reported. `--augment` also times the on-device augmentation alone and the full step
with augmentation. `--torch PATH` runs PyTorch's version of the same step
(benchmarks/torch_barlow_step.py) in a subprocess, alternating with jssl's timing
`--repeats` times in one run, and reports the ratio of medians: these machines are shared
and noisy, so only ratios measured together mean anything. `flops_per_step` counts the
matmul and convolution FLOPs of the step (`count_flops`); `mfu` divides the achieved FLOP/s
by the device's data-sheet peak (`--peak-tflops` to give another).

`--method dino|mocov3|mae` times the method's own ViT recipe (`RECIPES`: DINO's ViT-S/16
multi-crop with its 65,536-way head, MoCo v3's ViT, MAE's ViT-B/16 with 75% masking and the
512-wide decoder) at the flags' batch, image size, backbone, `--patch-size` and dtype.

The Barlow Twins step mirrors the PyTorch reference: ResNet backbone, 3-layer 2048
projector with BatchNorm, `barlow_twins(unbiased=True, eps=0)` (torch's z.std(0)), SGD
momentum 0.9, lr 0.1, weight decay 1e-4 on every parameter, `--batch` images per view.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from jax.extend import core

from jssl import methods, parallel, train
from jssl.config import load_file
from jssl.errors import ConfigError

__all__ = ["bench_pretrain", "bench_recipe", "count_flops", "parser", "main"]


def sized_config(args):
    """configs/<--method>.py (default preset) with the common bench flags' sizes: batch, image
    size, backbone, stem, width, conv_impl, dtype."""
    try:
        c = load_file(args.method)  # the shipped configs/<method>.py, in any installation
    except ConfigError as e:
        raise SystemExit(f"jssl.bench: --method {args.method}: {e}") from None
    c.batch_size = args.batch
    c.data.image_size = c.augment.view1.crop_size = c.augment.view2.crop_size = args.image_size
    c.model.backbone = args.backbone
    c.model.stem = args.stem
    c.model.num_filters = args.width
    c.model.conv_impl = args.conv_impl
    c.dtype = args.dtype
    return c


def _pretrain_config(args):
    c = sized_config(args)
    c.model.projector_hidden_dims = (args.proj, args.proj)
    c.model.projector_dim = args.proj
    c.model.projector_bn = True
    if args.method == "barlow_twins":
        c.loss.lambd, c.loss.scale, c.loss.unbiased, c.loss.eps = 0.0051, 1.0, True, 0.0
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.scale_lr_with_batch = False
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.exclude_bias_and_norm = False  # torch's SGD decays every parameter
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.total_steps = args.steps + args.warmup
    return c


def _time_steps(fn, state, *args, steps: int, warmup: int):
    """Run `state, _ = fn(state, *args)` warmup + steps times; per-step seconds (post warm-up)."""
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = fn(state, *args)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return state, times


# --method -> (config file, preset) of the ViT recipes `bench_recipe` times.
RECIPES = {
    "dino": ("dino", "imagenet_vit"),
    "mocov3": ("mocov3", "cifar10_vit"),
    "mae": ("mae", "imagenet"),
}


def _recipe_config(args):
    """The method's own recipe (RECIPES: DINO's ViT-S/16 multi-crop, MAE's ViT-B/16 with 75%
    masking, MoCo v3's ViT) at the bench flags' sizes: `--batch` images, `--image-size`, the
    backbone, dtype; DINO's small crops scaled with the image (96 of 224 px), rounded to
    whole patches."""
    name, preset = RECIPES[args.method]
    c = load_file(name, preset)
    c.batch_size = args.batch
    c.model.backbone = args.backbone
    c.dtype = args.dtype
    size = args.image_size
    p = c.model.patch_size = args.patch_size
    c.data.image_size = size
    c.augment.view1.crop_size = c.augment.view2.crop_size = size
    if c.augment.num_small_crops:
        c.augment.small_view.crop_size = max(p, round(size * 96 / 224 / p) * p)
    c.total_steps = max(c.total_steps, args.steps + args.warmup + 1)
    return c


def bench_recipe(args) -> dict:
    out = bench_pretrain(args, _recipe_config(args))
    out.update(patch_size=args.patch_size, recipe=":".join(RECIPES[args.method]))
    return out


def bench_pretrain(args, config=None) -> dict:
    """Time `config`'s update (default: the Barlow Twins / SimCLR mirror of the PyTorch
    reference, `_pretrain_config`) on device-resident data."""
    config = config or _pretrain_config(args)
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    info = methods.DataInfo(num_classes=10, image_shape=(args.image_size, args.image_size, 3))
    method = methods.build(config, info, mesh)
    update = method.update

    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, size=(args.batch, args.image_size, args.image_size, 3), dtype=np.uint8
    )
    batch = jax.device_put({"image": images, "label": np.zeros(args.batch, np.int32)}, data)
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
    views_fn = jax.jit(method.make_inputs, in_shardings=(repl, data), out_shardings=data)
    views = views_fn(state, batch)
    update_fn = jax.jit(
        update, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0
    )

    t = time.perf_counter()
    compiled = update_fn.lower(state, views).compile()
    compile_s = time.perf_counter() - t
    flops = count_flops(update, state, views)
    out_xla_flops = _flops(compiled)
    del compiled

    out = {
        "impl": "jssl",
        "method": args.method,
        "backbone": args.backbone,
        "width": args.width,
        "stem": args.stem,
        "batch": args.batch,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "conv_impl": args.conv_impl,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "compile_s": round(compile_s, 3),
        "jax": jax.__version__,
    }
    if out_xla_flops:
        out["xla_cost_flops_per_step"] = out_xla_flops
    step_times, torch_runs = [], []
    for _ in range(args.repeats):
        state, times = _time_steps(update_fn, state, views, steps=args.steps, warmup=args.warmup)
        step_times.extend(times)
        if args.torch:
            torch_runs.append(_run_torch(args))
    med = statistics.median(step_times)
    out.update(step_s_median=round(med, 4), img_per_s=round(args.batch / med, 2))
    if flops:
        out.update(flops_per_step=flops, tflop_per_s=round(flops / med / 1e12, 3))
        peak = args.peak_tflops or _peak_tflops(jax.devices()[0], args.dtype)
        if peak:
            out.update(
                peak_tflop_per_s=peak,
                mfu=float(f"{flops / med / 1e12 / (peak * jax.device_count()):.4g}"),
            )
    if torch_runs:
        torch_med = statistics.median(r["step_s_median"] for r in torch_runs)
        out.update(
            torch_step_s_median=round(torch_med, 4),
            torch_img_per_s=round(args.batch / torch_med, 2),
            torch_threads=torch_runs[0].get("threads"),
            speed_vs_torch=round(torch_med / med, 3),
        )
    if args.augment:

        def aug_only(s, b):
            return s, views_fn(s, b)

        _, aug_times = _time_steps(aug_only, state, batch, steps=args.steps, warmup=1)
        step_fn = jax.jit(
            method.train_step,
            in_shardings=(repl, data),
            out_shardings=(repl, repl),
            donate_argnums=0,
        )
        state, full_times = _time_steps(step_fn, state, batch, steps=args.steps, warmup=1)
        aug_med = statistics.median(aug_times)
        full_med = statistics.median(full_times)
        out.update(
            augment_img_per_s=round(args.batch / aug_med, 2),
            step_with_augment_img_per_s=round(args.batch / full_med, 2),
            augment_share_of_step=round(aug_med / full_med, 3),
        )
    return out


# Dense peak TFLOP/s per chip from the vendors' data sheets (no sparsity), by device kind.
_PEAKS = {
    "bfloat16": {
        "H100": 989.4,
        "H200": 989.4,
        "A100": 312.0,
        "TPU v4": 275.0,
        "TPU v5 lite": 197.0,
        "TPU v5": 459.0,
        "TPU v6 lite": 918.0,
    },
    # float32 matmuls and convolutions run in TF32 on NVIDIA tensor cores at JAX's
    # default precision, so the TF32 dense peak is the honest denominator there.
    "float32": {"H100": 494.7, "H200": 494.7, "A100": 156.0},
}


def _peak_tflops(device, dtype: str) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in _PEAKS.get(dtype, {}).items():
        if name in kind:
            return peak
    return None


def _flops(compiled) -> int | None:
    """FLOPs of one compiled step by XLA's cost analysis, or None where the backend has none.
    On GPUs it leaves out the convolutions that run as cuDNN calls: use `count_flops`."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have no cost model
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return int(flops) if flops and flops > 0 else None


def _eqn_flops(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        k = int(np.prod([lhs[d] for d in lhs_contract], dtype=np.int64))
        return 2 * int(np.prod(eqn.outvars[0].aval.shape, dtype=np.int64)) * k
    if name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        rhs = eqn.invars[1].aval.shape
        # Per output element: the kernel's spatial taps times its input features per group.
        taps = int(np.prod([rhs[d] for d in dn.rhs_spec[2:]], dtype=np.int64))
        cin = rhs[dn.rhs_spec[1]]
        out = int(np.prod(eqn.outvars[0].aval.shape, dtype=np.int64))
        # An input dilation (the input gradient of a strided convolution) multiplies by
        # inserted zeros: only 1 / prod(lhs_dilation) of the taps do work.
        zeros = int(np.prod(eqn.params["lhs_dilation"], dtype=np.int64))
        return 2 * out * taps * cin // max(1, eqn.params["batch_group_count"]) // zeros
    return 0


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        for sub in core.jaxprs_in_params(eqn.params):
            total += _jaxpr_flops(sub)
    return total


def count_flops(fn, *args) -> int:
    """Matrix FLOPs (2 per multiply-add) of the matmuls and convolutions `fn(*args)` runs,
    forward, backward and update included, read off its jaxpr: the model FLOPs behind an
    MFU figure, the same on every backend. Elementwise work is not counted. Loops
    (scan/while) count one iteration."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _run_torch(args) -> dict:
    cmd = [
        sys.executable,
        args.torch,
        "--batch",
        str(args.batch),
        "--image",
        str(args.image_size),
        "--proj",
        str(args.proj),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"jssl.bench: the torch reference failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --method -> a function of the parsed args returning the JSON record, or "module:function"
# (imported on use: the k-means benchmark needs scikit-learn and faiss, the bench extra).
BENCHES = {
    "barlow_twins": bench_pretrain,
    "simclr": bench_pretrain,
    "dino": bench_recipe,
    "mocov3": bench_recipe,
    "mae": bench_recipe,
    "metamask": "jssl.bench_metamask:bench",
    "kmeans": "jssl.bench_kmeans:bench",
    "input": "jssl.bench_input:bench",
}


def _resolve(entry):
    if isinstance(entry, str):
        module, name = entry.split(":")
        return getattr(importlib.import_module(module), name)
    return entry


def _cpu_devices(count: int) -> None:
    """Ask XLA for `count` CPU devices (one core each) unless XLA_FLAGS sets a count; takes
    effect only before JAX starts its backends (the JSON line reports the devices used)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def parser() -> argparse.ArgumentParser:
    """The command line's flags."""
    p = argparse.ArgumentParser(prog="python -m jssl.bench", description=__doc__.split("\n")[0])
    p.add_argument("--method", default="barlow_twins", choices=sorted(BENCHES))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--width", type=int, default=64, help="backbone num_filters (64: standard)")
    p.add_argument("--patch-size", type=int, default=16, help="ViT patch side (dino, mae, mocov3)")
    p.add_argument("--batch", type=int, default=64, help="images per view (global)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--proj", type=int, default=2048, help="projector width")
    p.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    p.add_argument(
        "--repeats", type=int, default=1, help="timing blocks (alternating with --torch)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "tapped"])
    p.add_argument("--augment", action="store_true", help="also time on-device augmentation")
    p.add_argument("--torch", metavar="PATH", help="PyTorch reference script to alternate with")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="per-device peak for the MFU figure (default: the data sheet's for "
        "H100/H200/A100/TPU v4-v6 in the run's dtype)",
    )
    p.add_argument("--out", metavar="FILE", help="also append the JSON line to FILE")
    # MetaMask (--method metamask): the hypergradient mode(s) to time beside the base step.
    p.add_argument(
        "--modes",
        default="exact,first_order,finite_difference",
        help="metamask: comma-separated mask_hypergradient modes",
    )
    # k-means (--method kmeans): data size, dimension, clusters, Lloyd iterations.
    p.add_argument("--n", type=int, default=200_000, help="kmeans: points")
    p.add_argument("--d", type=int, default=128, help="kmeans: dimension")
    p.add_argument("--k", type=int, default=1000, help="kmeans: clusters")
    p.add_argument("--iters", type=int, default=10, help="kmeans: Lloyd iterations")
    p.add_argument(
        "--gemm-size",
        type=int,
        default=4096,
        help="kmeans: side of the square float32 product that measures the GEMM ceiling",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="kmeans on CPU: XLA devices to shard the points over, one per core (default: "
        "every core, as scikit-learn's and faiss's threads use); XLA_FLAGS' device count wins",
    )
    # The input pipeline (--method input): the JPEG folder, views per image, host workers.
    p.add_argument(
        "--data", help="input: folder:PATH (class folders of JPEGs) or make:PATH[:N] (write N)"
    )
    p.add_argument("--views", type=int, default=2, help="input: random resized crops per image")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="input: host workers")
    p.add_argument(
        "--backend",
        default="threads",
        choices=["grain", "threads"],
        help="input: the host crops' workers (data.backend)",
    )
    p.add_argument(
        "--other-backend", action="store_true", help="input: also time the other backend"
    )
    p.add_argument(
        "--step",
        action="store_true",
        help="input: also time the train step fed by the pipeline against a resident batch",
    )
    p.add_argument(
        "--step-config",
        default="barlow_twins",
        help="input --step: the config file whose imagenet preset is timed",
    )
    p.add_argument(
        "--step-backbone", default="", help="input --step: another backbone (default: the preset's)"
    )
    p.add_argument(
        "--step-proj", type=int, default=0, help="input --step: head width (0: the preset's)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.cpu_devices is not None and args.cpu_devices < 1:
        raise SystemExit(
            f"jssl.bench: --cpu-devices {args.cpu_devices}: give a positive number of devices"
        )
    if args.gemm_size < 1:
        raise SystemExit(f"jssl.bench: --gemm-size {args.gemm_size}: give a positive matrix side")
    if args.method == "kmeans":
        _cpu_devices(args.cpu_devices or os.cpu_count() or 1)
    result = _resolve(BENCHES[args.method])(args)
    result.update(train.source_version())
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
