"""The benchmark's FLOP counter and its JSON line (tiny sizes; timing is not tested)."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jssl
from jssl import bench
from jssl.models.conv import conv2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(x, w, stride=1):
    return lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_count_flops_matmul_and_batched():
    a, b = jnp.ones((5, 7)), jnp.ones((7, 6))
    assert bench.count_flops(lambda a, b: a @ b, a, b) == 2 * 5 * 7 * 6
    x, y = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 2))
    assert (
        bench.count_flops(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), x, y) == 2 * 3 * 5 * 7 * 2
    )
    # Inside jit (a nested jaxpr) it is counted once.
    assert bench.count_flops(jax.jit(lambda a, b: a @ b), a, b) == 2 * 5 * 7 * 6


@pytest.mark.parametrize("stride", [1, 2])
def test_count_flops_conv_forward_and_backward(stride):
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    ho = 8 // stride
    forward = 2 * 2 * ho * ho * 4 * (3 * 3 * 3)  # 2 * outputs * taps * input channels
    assert bench.count_flops(lambda x, w: _conv(x, w, stride), x, w) == forward
    grads = jax.grad(lambda x, w: _conv(x, w, stride).sum(), argnums=(0, 1))
    assert bench.count_flops(grads, x, w) == 3 * forward
    # The tapped weight gradient does the same multiply-adds (and no dead forward).
    tapped = jax.grad(
        lambda x, w: conv2d(x, w, stride=stride, padding="SAME").sum(), argnums=(0, 1)
    )
    assert bench.count_flops(tapped, x, w) == 3 * forward


@pytest.mark.slow
def test_bench_json_line(capsys):
    args = "--backbone convnet --width 4 --batch 8 --image-size 16 --proj 16 --steps 1"
    assert bench.main([*args.split(), "--warmup", "0", "--peak-tflops", "1.0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "img_per_s",
        "step_s_median",
        "compile_s",
        "devices",
        "backend",
        "flops_per_step",
        "mfu",
    ):
        assert key in out, key
    assert out["devices"] == jax.device_count() and out["backend"] == "cpu"
    assert out["flops_per_step"] > 0 and 0 < out["mfu"]
    # The source that was measured: this checkout's commit (a test run may be dirty).
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert out["commit"] in ((head, head + "+dirty") if head else (None,))
    assert out["jssl"] == jssl.__version__


def test_metamask_bench_times_every_mode_against_the_base_step(capsys):
    """`python -m jssl.bench --method metamask`: the base step and each mode timed in one
    run, ratios of their medians."""
    args = "--method metamask --modes first_order --backbone convnet --width 4 --batch 8"
    assert (
        bench.main([*args.split(), *"--image-size 16 --proj 16 --steps 1 --warmup 0".split()]) == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == "metamask" and out["modes"] == ["first_order"]
    assert out["step_s_median_first_order"] > 0 and out["base_step_s_median"] > 0
    assert out["ratio_first_order"] == pytest.approx(
        out["step_s_median_first_order"] / out["base_step_s_median"], rel=0.01
    )
    assert "ratio" not in out  # the headline ratio is the exact mode's, not timed here
    # XLA's FLOP count of each compiled step: the meta update adds work to the base step.
    assert out["xla_cost_flops_first_order"] > out["xla_cost_flops_base"] > 0
    assert out["flop_ratio_first_order"] == pytest.approx(
        out["xla_cost_flops_first_order"] / out["xla_cost_flops_base"], rel=0.01
    )
    with pytest.raises(SystemExit, match="--modes 'second_order': choose from exact"):
        bench.main(["--method", "metamask", "--modes", "second_order"])


def test_bench_finds_the_shipped_configs_by_name():
    """The benchmarks load configs/<method>.py from the package (any installation)."""
    from types import SimpleNamespace

    args = SimpleNamespace(
        method="simclr",
        batch=8,
        image_size=16,
        backbone="resnet18_tiny",
        stem="cifar",
        width=4,
        conv_impl="xla",
        dtype="float32",
    )
    c = bench.sized_config(args)
    assert (c.loss.name, c.batch_size, c.data.image_size) == ("nt_xent", 8, 16)
    with pytest.raises(SystemExit, match="--method nope: no config file configs/nope.py"):
        bench.sized_config(SimpleNamespace(**{**vars(args), "method": "nope"}))


def test_cpu_devices_asks_xla_for_one_device_per_core_unless_xla_flags_say(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    bench._cpu_devices(3)
    assert os.environ["XLA_FLAGS"] == (
        "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=3"
    )
    bench._cpu_devices(5)  # a count is already there: it wins
    assert os.environ["XLA_FLAGS"].endswith("device_count=3")
    monkeypatch.delenv("XLA_FLAGS")
    bench._cpu_devices(2)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    with pytest.raises(SystemExit, match="--cpu-devices 0: give a positive number"):
        bench.main(["--method", "kmeans", "--cpu-devices", "0"])
    with pytest.raises(SystemExit, match="--gemm-size 0: give a positive matrix side"):
        bench.main(["--method", "kmeans", "--gemm-size", "0"])


def test_vit_recipe_bench_times_the_methods_own_step(capsys):
    """`--method mae|dino|mocov3` times the method's recipe (MAE's masking and decoder,
    DINO's multi-crop) at the flags' sizes; DINO's small crops keep their 96 / 224 ratio in
    whole patches."""
    args = "--method mae --backbone vit_smoke --image-size 16 --patch-size 4 --batch 8"
    assert bench.main([*args.split(), "--steps", "1", "--warmup", "0", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["method"], out["recipe"], out["patch_size"]) == ("mae", "mae:imagenet", 4)
    assert out["step_s_median"] > 0 and out["flops_per_step"] > 0
    parse = bench.parser().parse_args
    dino = bench._recipe_config(
        parse("--method dino --backbone vit_small --image-size 224".split())
    )
    assert (dino.augment.small_view.crop_size, dino.augment.num_small_crops) == (96, 10)
    small = bench._recipe_config(
        parse("--method dino --backbone vit_smoke --image-size 32 --patch-size 4".split())
    )
    assert small.augment.small_view.crop_size == 12 and small.augment.view2.crop_size == 32
