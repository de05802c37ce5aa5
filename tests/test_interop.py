"""Weights in and out of PyTorch (jssl.export, jssl.models.torch_layout) against the real
torchvision and timm: features equal both ways, strict loading, byte-exact round trips,
one-line errors, MetaMask's mask exported with its encoder.

torch, torchvision, timm and safetensors come with the `interop` extra
(`pip install -e '.[test,interop]'`). Without them these tests are skipped, unless
JSSL_INTEROP_TESTS=1 (CI sets it), where a missing package fails the run instead.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("JSSL_INTEROP_TESTS") == "1":
    import safetensors.numpy  # noqa: F401 - asked for: a missing package is a failure
    import timm
    import torch
    import torchvision
else:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")

from jssl import checkpoint, export, io, methods, models  # noqa: E402
from jssl.config import ConfigError  # noqa: E402
from jssl.models import torch_layout  # noqa: E402
from tests.shared import smoke  # noqa: E402

SIZE = 32  # images: tiny inputs, one forward each


def _images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _torch_twin(layout, name, stem, num_classes=None, **vit):
    if name.startswith("vit"):
        extra = dict(global_pool="avg", class_token=False) if vit.get("pool") == "gap" else {}
        model = timm.create_model(
            name, pretrained=False, num_classes=0, img_size=SIZE, patch_size=4, **extra
        )
        if num_classes is not None:
            model.head = torch.nn.Linear(num_classes, num_classes)
        return model.eval()
    if layout == "timm":
        model = timm.create_model(name, pretrained=False, num_classes=0)
    else:
        model = getattr(torchvision.models, name)()
        model.fc = torch.nn.Identity()
    if num_classes is not None:
        model.fc = torch.nn.Linear(num_classes, num_classes)
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model.eval()


def _randomize_bn(model, seed=0):
    """Running statistics away from (0, 1), so that they are exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            # Scales below 1 keep the features of a deep random network at about 1 (a
            # trained one's magnitude), where 1e-4 tests the layout, not float32 rounding.
            m.weight.data.copy_(0.4 + 0.6 * torch.rand(m.weight.shape, generator=g))
    return model


def _torch_features(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _normalised(images):
    """The float input both sides see (NHWC), as jssl's evaluation transform makes it."""
    return np.asarray((images / 255.0 - 0.5) / 0.25, np.float32)


TWINS = [
    ("torchvision", "resnet18", "imagenet"),
    ("torchvision", "resnet18", "cifar"),
    ("torchvision", "resnet34", "imagenet"),
    ("timm", "resnet50", "imagenet"),
    ("timm", "vit_tiny_patch16_224", "token"),
    ("timm", "vit_small_patch16_224", "gap"),
]


@pytest.mark.parametrize("layout,name,stem", TWINS)
def test_pytorch_weights_give_the_same_features_in_jssl_and_back(layout, name, stem):
    """Import: a PyTorch model's state dict into the jssl backbone gives its features (max
    abs difference <= 1e-4 after the final pooling); export of that gives back the same
    bytes for every tensor, and loads strictly into the PyTorch model. (For ViTs `stem`
    is the pooling; 32 px images in 4 px patches.)"""
    if name.startswith("vit"):
        model = _torch_twin(layout, name, None, pool=stem)
        module = models.build_backbone(name.split("_patch")[0], patch_size=4, pool=stem)
    else:
        model = _randomize_bn(_torch_twin(layout, name, stem))
        module = models.build_backbone(name, stem=stem, conv_impl="xla")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    init = functools.partial(module.init, train=False)
    expected = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))
    variables = torch_layout.from_torch(module, state, expected, source="test")
    x = _normalised(_images())
    ours = np.asarray(module.apply(variables, x, train=False))
    theirs = _torch_features(model, x)
    assert ours.shape == theirs.shape == (4, module.num_features) and np.std(theirs) > 0.01
    print(
        f"{layout} {name} {stem}: |features| max {np.max(np.abs(theirs)):.3g}, "
        f"max abs difference {np.max(np.abs(ours - theirs)):.2e}"
    )
    assert np.max(np.abs(ours - theirs)) <= 1e-4, np.max(np.abs(ours - theirs))

    back = torch_layout.to_torch(module, variables)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key
    fresh = _torch_twin(layout, name, stem, pool=stem)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_array_equal(_torch_features(fresh, x), theirs)


def _saved_run(tmp_path, method_config, seed=0):
    """A workdir holding one checkpoint of a freshly initialised run (random weights, BN
    statistics and, for MetaMask, mask logits moved away from their initial values)."""
    c = method_config
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    info = methods.DataInfo(num_classes=10, image_shape=(SIZE, SIZE, 3))
    method = methods.build(c, info, mesh)
    state = method.init(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)

    def jitter(path, x):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "mean":
            return jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype)
        if keys[-1] == "var":
            return jnp.asarray(0.5 + rng.random(x.shape), x.dtype)
        return x

    state = state.replace(batch_stats=jax.tree_util.tree_map_with_path(jitter, state.batch_stats))
    if "mask_logits" in state.extras:
        logits = jnp.asarray(rng.standard_normal(state.extras["mask_logits"].shape), jnp.float32)
        state = state.replace(extras={**state.extras, "mask_logits": logits})
    workdir = str(tmp_path / "run")
    ckpt = checkpoint.Checkpointer(workdir, c, keep=1)
    ckpt.save(1, state)
    ckpt.close()
    io.write_json(os.path.join(workdir, checkpoint.CONFIG_FILE), c.to_dict())
    return workdir, method, state


def _resnet_config(name="simclr", backbone="resnet18", **overrides):
    c = smoke(name, **overrides)
    c.model.backbone, c.model.num_filters, c.model.stem = backbone, 64, "cifar"
    c.model.patch_size = 4
    c.data.image_size = c.augment.view1.crop_size = c.augment.view2.crop_size = SIZE
    return c


@pytest.mark.parametrize("backbone,layout", [("resnet18", "torchvision"), ("vit_tiny", "timm")])
def test_export_cli_writes_what_the_generated_lines_load(tmp_path, backbone, layout):
    """`python -m jssl.export --format safetensors`: the file loads strictly with the lines
    written next to it (run as they are, in a fresh interpreter), and the PyTorch model
    then gives the run's own evaluation features."""
    c = _resnet_config(backbone=backbone)
    workdir, method, state = _saved_run(tmp_path, c)
    out = str(tmp_path / "encoder.safetensors")
    args = ["--workdir", workdir, "--format", "safetensors", "--layout", layout]
    assert export.main([*args, "--out", out, "--with-heads"]) == 0
    code = open(tmp_path / "encoder.py").read()
    images = _images()
    np.save(tmp_path / "images.npy", images)
    script = code + (
        "import numpy as np\n"
        "x = np.load('images.npy').astype(np.float32) / 255.0\n"
        f"x = (x - np.array({list(c.augment.view1.mean)}, np.float32)) / "
        f"np.array({list(c.augment.view1.std)}, np.float32)\n"
        "with torch.no_grad():\n"
        "    f = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()\n"
        "np.save('features.npy', f)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = np.load(tmp_path / "features.npy")
    ours = np.asarray(method.embed(state, jnp.asarray(images)))
    assert np.max(np.abs(ours - theirs)) <= 1e-4, np.max(np.abs(ours - theirs))
    # The heads are there under documented names; nothing is overwritten.
    from safetensors.numpy import load_file

    tensors = load_file(out)
    assert "heads.projector.Dense_0.weight" in tensors
    w = np.asarray(state.params["projector"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(tensors["heads.projector.Dense_0.weight"], w.T)
    size = os.path.getsize(out)
    assert export.main([*args, "--out", out]) == 2 and os.path.getsize(out) == size


def test_metamask_exports_its_mask_with_its_encoder(tmp_path):
    """Both formats give what MetaMask's evaluation computes (its masked features): the
    jssl encoder multiplies by the mask, the PyTorch twin has it as a diagonal fc."""
    c = _resnet_config("metamask")
    workdir, method, state = _saved_run(tmp_path, c)
    images = _images()
    want = np.asarray(method.embed(state, jnp.asarray(images)))
    mask = export.feature_mask(state, c)
    assert mask is not None and np.ptp(mask) > 0.1  # a mask that differs per feature

    module, variables = export.load_encoder(workdir)
    np.testing.assert_allclose(np.asarray(module.apply(variables, images)), want, atol=1e-5)
    unmasked = module.clone(masked=False)
    plain = {**variables, "params": {"backbone": variables["params"]["backbone"]}}
    assert np.max(np.abs(np.asarray(unmasked.apply(plain, images)) - want)) > 1e-3

    out, code = export.export_torch(workdir, str(tmp_path / "mm.safetensors"), layout="timm")
    assert "num_classes=0" in code and "torch.nn.Linear(512, 512)" in code
    from safetensors.numpy import load_file

    model = _torch_twin("timm", "resnet18", "cifar", num_classes=512)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(out).items()}, strict=True)
    x = (images / 255.0 - np.asarray(c.augment.view1.mean)) / np.asarray(c.augment.view1.std)
    theirs = _torch_features(model, x.astype(np.float32))
    assert np.max(np.abs(theirs - want)) <= 1e-4, np.max(np.abs(theirs - want))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_init_from_torchvision_weights(tmp_path, suffix):
    """`model.init_from=torchvision:PATH` starts the run's backbone from the state dict
    (classifier fc.* skipped), from a safetensors or a torch.save file."""
    model = _randomize_bn(torchvision.models.resnet18())  # with its 1000-class fc
    path = str(tmp_path / f"r18{suffix}")
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), path)
    c = _resnet_config("simclr")
    c.model.stem = "imagenet"
    c.model.init_from = f"torchvision:{path}"
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    method = methods.build(c, methods.DataInfo(10, (SIZE, SIZE, 3)), mesh)
    state = method.init(jax.random.PRNGKey(0))
    kernel = np.asarray(state.params["backbone"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(kernel, model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    var = np.asarray(state.batch_stats["backbone"]["BasicBlock_7"]["BatchNorm_1"]["var"])
    np.testing.assert_array_equal(var, model.layer4[1].bn2.running_var.numpy())
    # The optimizer and the projector start as usual: only the backbone is loaded.
    assert "projector" in state.params


def test_init_from_errors_name_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    state = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
    c = _resnet_config("simclr")
    c.model.stem = "imagenet"

    def error(tensors, spec_prefix="torchvision"):
        path = str(tmp_path / f"w{len(os.listdir(tmp_path))}.safetensors")
        save_file(tensors, path)
        c.model.init_from = f"{spec_prefix}:{path}"
        with pytest.raises(ConfigError) as e:
            export.load_init_from(c)
        assert "\n" not in str(e.value) and str(e.value).startswith("config.model.init_from: ")
        return str(e.value)

    missing = dict(state)
    del missing["layer2.0.bn1.running_var"]
    assert "tensor layer2.0.bn1.running_var is missing" in error(missing)
    assert "tensor extra.weight is not part of a resnet18" in error(
        {**state, "extra.weight": np.zeros(3, np.float32)}
    )
    c.model.stem = "cifar"  # torchvision's 7x7 stem into the CIFAR stem
    assert (
        "tensor conv1.weight has shape (64, 3, 7, 7); this jssl resnet18 expects (64, 3, 3, 3)"
        in error(state)
    )
    c.model.stem, c.model.num_filters = "imagenet", 32
    assert "no torchvision or timm twin" in error(state, "timm")
    c.model.num_filters = 64
    c.model.init_from = f"torchvision:{tmp_path / 'nowhere.pth'}"
    with pytest.raises(ConfigError, match=r"nowhere\.pth: no such file"):
        export.load_init_from(c)


def test_backbones_without_a_twin_are_one_line_errors(tmp_path):
    c = smoke("simclr")  # the tiny ResNet of the smoke preset
    workdir, _, _ = _saved_run(tmp_path, c)
    with pytest.raises(ConfigError, match="has no torchvision or timm twin.*--format msgpack"):
        export.export_torch(workdir, str(tmp_path / "x.safetensors"), layout="torchvision")
    assert not os.path.exists(tmp_path / "x.safetensors")
    # --format safetensors without --layout: one line, exit 2, nothing written.
    args = ["--workdir", workdir, "--out", str(tmp_path / "y"), "--format", "safetensors"]
    assert export.main(args) == 2 and not os.path.exists(tmp_path / "y")
