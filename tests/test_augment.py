"""jssl.augment against independent NumPy / colorsys / scipy references (tiny images)."""

import colorsys
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import ndimage

from jssl import augment as A
from jssl.config import load_file

N, S = 8, 16
LUMA = np.array([0.299, 0.587, 0.114])


def _images(n=N, h=S, w=S, c=3, seed=0):
    return np.random.RandomState(seed).rand(n, h, w, c).astype(np.float32)


def _keys(n=N, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _batched(fn, **kw):
    """jit(vmap) of a per-image random op with fixed keyword arguments."""
    return jax.jit(jax.vmap(lambda k, x: fn(k, x, **kw)))


def _jit(fn, **kw):
    """jit with fixed keyword arguments (eager mode compiles every primitive: slower)."""
    return jax.jit(functools.partial(fn, **kw))


def _view(**overrides):
    view = A.solo_cifar_views("symmetric", crop_size=S)[0]
    view.update(solarize_prob=0.3)  # every op of the pipeline on
    view.update(overrides)
    return view


VIEW = _view()
# Shared by several tests so the CPU compiles each input shape/sharding once.
augment = jax.jit(lambda k, x: A.augment_view(k, x, VIEW))
augment_one = jax.jit(lambda k, x: A.augment_image(k, x, VIEW))


# --- Colour: references ---------------------------------------------------------------------


def _np_hue(img, shift):
    flat = img.reshape(-1, 3).astype(np.float64)
    out = [
        colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
        for h, s, v in (colorsys.rgb_to_hsv(*p) for p in flat)
    ]
    return np.asarray(out).reshape(img.shape)


def _np_jitter_op(i, img, f):
    luma = img @ LUMA
    if i == 0:
        return np.clip(img * f, 0, 1)
    if i == 1:
        return np.clip(f * img + (1 - f) * luma.mean(), 0, 1)
    if i == 2:
        return np.clip(f * img + (1 - f) * luma[..., None], 0, 1)
    return _np_hue(img, f)


def test_hsv_matches_colorsys_and_round_trips():
    rgb = np.concatenate(
        [
            _images(1).reshape(-1, 3),
            np.array(
                [
                    [0, 0, 0],
                    [1, 1, 1],
                    [0.5, 0.5, 0.5],
                    [1, 0, 0],
                    [0, 1, 0],
                    [0, 0, 1],
                    [1, 1, 0],
                    [0.2, 0.9, 0.9],
                ],
                np.float32,
            ),
        ]
    )
    hsv = np.asarray(jax.jit(A.rgb_to_hsv)(rgb))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in rgb.astype(np.float64)])
    hue_gap = np.abs(hsv[:, 0] - want[:, 0])
    np.testing.assert_allclose(np.minimum(hue_gap, 1 - hue_gap), 0, atol=1e-5)
    np.testing.assert_allclose(hsv[:, 1:], want[:, 1:], atol=1e-5)
    back = np.array([colorsys.hsv_to_rgb(*p) for p in want])
    to_rgb = jax.jit(A.hsv_to_rgb)
    np.testing.assert_allclose(to_rgb(want.astype(np.float32)), back, atol=1e-5)
    np.testing.assert_allclose(to_rgb(hsv), rgb, atol=1e-5)


def test_adjust_ops_match_numpy():
    img = _images(1)[0]
    for i, (op, f) in enumerate(
        [
            (A.adjust_brightness, 1.3),
            (A.adjust_contrast, 0.6),
            (A.adjust_saturation, 1.7),
            (A.adjust_hue, 0.27),
        ]
    ):
        np.testing.assert_allclose(
            jax.jit(op)(img, f), _np_jitter_op(i, img, f), atol=2e-5, err_msg=op.__name__
        )
    np.testing.assert_allclose(jax.jit(A.adjust_hue)(img, 0.0), img, atol=2e-6)
    gray = img[..., :1]  # one channel: saturation and hue do nothing
    assert A.adjust_saturation(gray, 0.1) is gray and A.adjust_hue(gray, 0.3) is gray


def test_color_jitter_matches_reference_in_sampled_order():
    kw = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "prob": 0.5}
    keys, imgs = _keys(16), _images(16)
    out = np.asarray(_batched(A.color_jitter, **kw)(keys, imgs))
    apply, factors, order = jax.vmap(lambda k: A.sample_color_jitter(k, **kw))(keys)
    apply, factors, order = map(np.asarray, (apply, factors, order))
    assert 0 < apply.sum() < 16  # both outcomes of prob=0.5 occur
    assert len({tuple(o) for o in order}) > 3  # the order is random per example
    assert all(sorted(o) == [0, 1, 2, 3] for o in order)
    lo, hi = np.array([0.6, 0.6, 0.6, -0.1]), np.array([1.4, 1.4, 1.4, 0.1])
    assert np.all((factors >= lo) & (factors <= hi))
    for n in range(16):
        want = imgs[n]
        if apply[n]:
            for i in order[n]:
                want = _np_jitter_op(i, want, factors[n, i])
        np.testing.assert_allclose(out[n], want, atol=5e-5, err_msg=f"example {n}")
    assert out.min() >= 0 and out.max() <= 1


def test_color_jitter_brightness_only_scales_each_example():
    imgs = _images() * 0.5 + 0.25  # no clipping for factors in [0.6, 1.4]
    out = np.asarray(
        _batched(A.color_jitter, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, prob=1.0)(
            _keys(), imgs
        )
    )
    ratio = out / imgs
    per_example = ratio.reshape(N, -1)
    np.testing.assert_allclose(
        per_example, np.broadcast_to(per_example[:, :1], per_example.shape), rtol=1e-5
    )
    assert np.all((per_example >= 0.6) & (per_example <= 1.4))
    assert len(np.unique(per_example[:, 0].round(5))) == N


def test_color_jitter_single_channel_ignores_saturation_and_hue():
    imgs = _images(c=1)
    out = _batched(A.color_jitter, brightness=0.0, contrast=0.0, saturation=0.9, hue=0.5, prob=1.0)(
        _keys(), imgs
    )
    np.testing.assert_array_equal(out, imgs)


@pytest.mark.parametrize(
    "name", ["horizontal_flip", "random_grayscale", "solarize", "gaussian_blur", "color_jitter"]
)
def test_prob_zero_is_identity_and_prob_one_always_applies(name):
    # Hue and saturation are left out here to keep the compile short; tested above.
    kw = {
        "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.0, "hue": 0.0},
        "gaussian_blur": {"sigma": (1.0, 2.0)},
    }.get(name, {})  # sigma 0.1 is near identity
    fn, imgs = getattr(A, name), _images()
    np.testing.assert_array_equal(_batched(fn, prob=0.0, **kw)(_keys(), imgs), imgs)
    out = np.asarray(_batched(fn, prob=1.0, **kw)(_keys(), imgs))
    assert np.all(np.abs(out - imgs).reshape(N, -1).max(axis=1) > 1e-3)
    with pytest.raises(ValueError, match="prob"):
        fn(_keys(1)[0], imgs[0], prob=1.5, **kw)


# --- Flip, grayscale, solarize --------------------------------------------------------------


def test_flip_reverses_width_for_some_examples():
    imgs = _images(32)
    out = np.asarray(_batched(A.horizontal_flip, prob=0.5)(_keys(32), imgs))
    flipped = np.array([np.array_equal(o, x[:, ::-1]) for o, x in zip(out, imgs)])
    kept = np.array([np.array_equal(o, x) for o, x in zip(out, imgs)])
    assert np.all(flipped ^ kept) and 0 < flipped.sum() < 32


def test_grayscale_is_luma_in_every_channel():
    imgs = _images()
    out = np.asarray(_batched(A.random_grayscale, prob=1.0)(_keys(), imgs))
    np.testing.assert_allclose(out, np.repeat((imgs @ LUMA)[..., None], 3, -1), atol=1e-6)
    one = _images(c=1)
    np.testing.assert_array_equal(_batched(A.random_grayscale, prob=1.0)(_keys(), one), one)


def test_solarize_inverts_at_and_above_threshold():
    imgs = _images()
    imgs[0, 0, 0] = 0.3
    out = np.asarray(_batched(A.solarize, prob=1.0, threshold=0.3)(_keys(), imgs))
    np.testing.assert_allclose(out, np.where(imgs >= 0.3, 1 - imgs, imgs), atol=1e-7)


# --- Blur -----------------------------------------------------------------------------------


def test_gaussian_filter_matches_scipy_mirror_padding():
    img = _images(1)[0]
    for sigma, k in [(0.7, 3), (1.5, 5), (2.0, 7)]:
        want = img
        for axis in (0, 1):
            want = ndimage.gaussian_filter1d(want, sigma, axis=axis, mode="mirror", radius=k // 2)
        np.testing.assert_allclose(
            _jit(A.gaussian_filter, kernel_size=k)(img, sigma),
            want,
            atol=1e-5,
            err_msg=f"sigma={sigma}, k={k}",
        )
    with pytest.raises(ValueError, match="kernel_size"):
        A.gaussian_filter(jnp.asarray(img), 1.0, kernel_size=4)
    assert [A.default_blur_kernel_size(s) for s in (16, 32, 100, 224)] == [3, 3, 11, 23]


def test_gaussian_blur_keeps_constant_and_mean_and_smooths_noise():
    noise, const = _images(), np.full((N, S, S, 3), 0.37, np.float32)
    blur = _batched(A.gaussian_blur, prob=1.0, sigma=(1.5, 1.5), kernel_size=5)
    np.testing.assert_allclose(blur(_keys(), const), const, atol=1e-6)
    out = np.asarray(blur(_keys(), noise))
    np.testing.assert_allclose(out.mean(axis=(1, 2)), noise.mean(axis=(1, 2)), atol=0.01)
    assert np.all(out.var(axis=(1, 2)) < 0.3 * noise.var(axis=(1, 2)))
    np.testing.assert_allclose(
        out[0], _jit(A.gaussian_filter, kernel_size=5)(noise[0], 1.5), atol=1e-6
    )


# --- Crop -----------------------------------------------------------------------------------


def _np_bilinear_crop(img, top, left, h, w, size):
    """Half-pixel-centred bilinear with clamped edges (upsampling only)."""

    def coords(start, length, n):
        c = np.clip(start + (np.arange(size) + 0.5) * length / size - 0.5, 0, n - 1)
        lo = np.floor(c).astype(int)
        return lo, np.minimum(lo + 1, n - 1), c - lo

    y0, y1, fy = coords(top, h, img.shape[0])
    x0, x1, fx = coords(left, w, img.shape[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    rows = lambda y: img[y][:, x0] * (1 - fx) + img[y][:, x1] * fx  # noqa: E731
    return rows(y0) * (1 - fy) + rows(y1) * fy


def test_resized_crop_matches_numpy_bilinear_and_antialias():
    img = _images(1)[0]
    crop = _jit(A.resized_crop, size=S)
    for box in [(3.0, 2.0, 6.0, 10.0), (0.0, 5.0, 16.0, 11.0), (4.5, 1.25, 7.5, 9.0)]:
        np.testing.assert_allclose(
            crop(img, *box), _np_bilinear_crop(img, *box, S), atol=1e-5, err_msg=str(box)
        )
    # Halving with antialias: a triangle filter of width 2, i.e. taps (1, 3, 3, 1) / 8.
    half = np.asarray(_jit(A.resized_crop, size=S // 2)(img, 0.0, 0.0, S, S))
    taps = np.array([1, 3, 3, 1]) / 8
    inner = range(1, S // 2 - 1)
    rows = np.stack([np.tensordot(taps, img[2 * o - 1 : 2 * o + 3], axes=1) for o in inner])
    want = np.stack(
        [np.tensordot(taps, rows[:, 2 * o - 1 : 2 * o + 3], axes=([0], [1])) for o in inner], axis=1
    )
    np.testing.assert_allclose(half[1:-1, 1:-1], want, atol=1e-5)


def test_random_resized_crop_full_box_is_identity_and_fallback_is_central():
    img = _images(1)[0]
    crop = _jit(A.random_resized_crop, size=S, scale=(1, 1), ratio=(1, 1))
    full = crop(_keys(1)[0], img)
    np.testing.assert_allclose(full, img, atol=1e-6)
    wide = _images(1, w=24)[0]  # no 24x24 box fits: torchvision's central-crop fallback
    central = crop(_keys(1)[0], wide)
    np.testing.assert_allclose(central, wide[:, 4:20], atol=1e-6)
    box = _jit(A.sample_crop_box, height=S, width=S, scale=(1, 1), ratio=(2, 2))(_keys(1)[0])
    assert tuple(int(b) for b in box) == (4, 0, 8, 16)  # h = round(16 / 2), centred


def test_crop_boxes_follow_scale_and_ratio():
    scale, ratio = (0.2, 0.6), (3 / 4, 4 / 3)
    top, left, h, w = map(
        np.asarray,
        jax.jit(jax.vmap(lambda k: A.sample_crop_box(k, 32, 32, scale=scale, ratio=ratio)))(
            _keys(256)
        ),
    )
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32))
    # Rounding each side moves the area by at most (h + w) / 2 + 1/4 pixels.
    slack = (h + w) / 2 + 0.25
    assert np.all((h * w >= 0.2 * 1024 - slack) & (h * w <= 0.6 * 1024 + slack))
    assert np.all((w / h >= 0.75 * (1 - 1 / h) - 0.05) & (w / h <= 4 / 3 * (1 + 1 / h) + 0.05))
    assert len(set(zip(top, left, h, w))) > 200 and np.ptp(w / h) > 0.4


def test_random_resized_crop_shape():
    out = _batched(A.random_resized_crop, size=12)(_keys(), _images())
    assert out.shape == (N, 12, 12, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


# --- Batch API ------------------------------------------------------------------------------


def _uint8(n=N, c=3, seed=0):
    return (_images(n, c=c, seed=seed) * 255).round().astype(np.uint8)


def test_augment_view_shapes_keys_and_per_example_independence():
    images = _uint8()
    out = np.asarray(augment(jax.random.key(1), images))
    assert out.shape == (N, S, S, 3) and out.dtype == np.float32
    lo = (0 - np.array(VIEW["mean"])) / np.array(VIEW["std"])
    hi = (1 - np.array(VIEW["mean"])) / np.array(VIEW["std"])
    assert np.all((out >= lo - 1e-5) & (out <= hi + 1e-5))
    np.testing.assert_array_equal(augment(jax.random.key(1), images), out)
    other = np.asarray(augment(jax.random.key(2), images))
    assert np.all(np.abs(other - out).reshape(N, -1).max(axis=1) > 1e-3)
    # Example n depends only on (keys[n], images[n]).
    keys, floats = jax.random.split(jax.random.key(1), N), images / np.float32(255)
    for n in range(N):
        np.testing.assert_allclose(out[n], augment_one(keys[n], floats[n]), atol=1e-5)
    changed = images.copy()
    changed[3] = 255 - changed[3]
    out2 = np.asarray(augment(jax.random.key(1), changed))
    np.testing.assert_array_equal(np.delete(out2, 3, 0), np.delete(out, 3, 0))


def test_augment_image_composes_ops_in_solo_learn_order():
    image = _images(1)[0]

    @jax.jit
    def by_hand(key, x):
        # One draw of all the view's uniforms, sliced in order: crop 22, jitter 9,
        # grayscale 1, blur 2, solarize 1, flip 1 (augment.NUM_UNIFORMS).
        u = jax.random.uniform(key, (36,))
        x = A.random_resized_crop(u[:22], x, size=S, scale=VIEW["crop_scale"])
        x = A.color_jitter(
            u[22:31], x, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, prob=0.8
        )
        x = A.random_grayscale(u[31:32], x, prob=0.2)
        x = A.gaussian_blur(u[32:34], x, prob=0.5)
        x = A.solarize(u[34:35], x, prob=0.3)
        x = A.horizontal_flip(u[35:36], x, prob=0.5)
        return A.normalize(x, VIEW["mean"], VIEW["std"])

    for seed in range(3):
        key = jax.random.key(seed)
        np.testing.assert_allclose(augment_one(key, image), by_hand(key, image), atol=1e-5)


def test_augment_view_broadcasts_grayscale_to_rgb():
    gray = _uint8(c=1)
    out = np.asarray(augment(jax.random.key(1), gray))
    assert out.shape == (N, S, S, 3)
    keys = jax.random.split(jax.random.key(1), N)
    rgb = np.repeat(gray, 3, axis=-1) / np.float32(255)
    for n in range(N):
        np.testing.assert_allclose(out[n], augment_one(keys[n], rgb[n]), atol=1e-5)


def test_augment_view_sharded_equals_unsharded():
    assert jax.device_count() == 8
    images = _uint8()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    out = augment(jax.random.key(1), sharded)
    assert len(out.sharding.device_set) == 8
    single = augment(jax.random.key(1), images)  # host array: one device, as in other tests
    np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"crop_size": 3.5}, "crop_size"),
        ({"crop_scale": (0.9, 0.2)}, "crop_scale"),
        ({"flip_prob": 1.2}, "flip_prob"),
        ({"blur_prob": -0.1}, "blur_prob"),
        ({"hue": 0.7}, "hue"),
        ({"contrast": -1}, "contrast"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5,)}, "mean"),
        ({"typo": 1}, "typo"),
    ],
)
def test_view_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        A.augment_view(jax.random.key(0), _uint8(2), _view(**change))


def test_view_validation_missing_field_configdict_and_images():
    view = _view()
    del view["solarize_prob"]
    with pytest.raises(ValueError, match="'solarize_prob' is missing"):
        A.augment_view(jax.random.key(0), _uint8(2), view)
    config = ml_collections.ConfigDict(_view())
    shape = jax.eval_shape(lambda k, x: A.augment_view(k, x, config), jax.random.key(0), _uint8(2))
    assert shape.shape == (2, S, S, 3)
    with pytest.raises(ValueError, match="uint8"):
        A.augment_view(jax.random.key(0), _images(2), _view())


def test_center_view_normalises_and_resizes():
    images, mean, std = _uint8(), A.CIFAR10_MEAN, A.CIFAR10_STD
    center = _jit(A.center_view, size=S, mean=mean, std=std)
    want = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(center(images), want, atol=1e-5)
    gray = center(images[..., :1])
    np.testing.assert_allclose(
        gray, (np.repeat(images[..., :1], 3, -1) / 255.0 - mean) / std, atol=1e-5
    )
    wide = (_images(2, w=24) * 255).astype(np.uint8)  # Resize(16) is a no-op, then CenterCrop
    np.testing.assert_allclose(center(wide), (wide[:, :, 4:20] / 255.0 - mean) / std, atol=1e-5)
    flat = np.full((2, 8, 8, 3), 51, np.uint8)
    np.testing.assert_allclose(
        _jit(A.center_view, size=S, mean=(0, 0, 0), std=(1, 1, 1))(flat),
        np.full((2, S, S, 3), 0.2),
        atol=1e-6,
    )


def test_solo_cifar_views_match_solo_learn_yamls():
    """The recipes are solo-learn's yamls (`augmentations/<recipe>.yaml`, or the inline one
    of vicreg / wmse), and each zoo config's cifar10 preset holds its recipe's views."""
    b1, b2 = A.solo_cifar_views("asymmetric")
    assert (b1["solarize_prob"], b2["solarize_prob"]) == (0.0, 0.2)
    assert {k: b1[k] for k in ("brightness", "contrast", "saturation", "hue")} == {
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
    }
    assert b1["crop_scale"] == (0.08, 1.0) and b1["crop_size"] == 32 and b1["blur_prob"] == 0
    s1, s2 = A.solo_cifar_views("symmetric", crop_size=S)
    assert s1 == s2 and s1 is not s2 and s1["crop_size"] == S
    assert (s1["brightness"], s1["contrast"], s1["saturation"], s1["hue"]) == (0.8, 0.8, 0.8, 0.2)
    assert (s1["blur_prob"], s1["solarize_prob"], s1["color_jitter_prob"]) == (0.5, 0.0, 0.8)
    assert b1["mean"] == (0.4914, 0.4822, 0.4465) and b1["std"] == (0.2470, 0.2435, 0.2616)
    for view in (b1, b2, s1):
        assert jax.eval_shape(
            lambda k, x, v=view: A.augment_view(k, x, v), jax.random.key(0), _uint8(2)
        ).shape == (2, view["crop_size"], view["crop_size"], 3)
    w1, w2 = A.solo_cifar_views("symmetric_weak")
    assert w1 == w2 and (w1["brightness"], w1["saturation"], w1["hue"], w1["blur_prob"]) == (
        0.4,
        0.4,
        0.1,
        0.5,
    )
    v1, v2 = A.solo_cifar_views("asymmetric", crop_scale=(0.2, 1.0), solarize_prob=0.1)
    assert v1 == v2 and v1["crop_scale"] == (0.2, 1.0) and v1["brightness"] == 0.4
    m1, m2 = A.solo_cifar_views("symmetric", crop_scale=(0.2, 1.0), blur_prob=0.0)
    assert m1["crop_scale"] == (0.2, 1.0) and m1["blur_prob"] == 0 and m1["brightness"] == 0.8
    with pytest.raises(ValueError, match="asymmetric, symmetric, symmetric_weak"):
        A.solo_cifar_views("simclr")
    with pytest.raises(ValueError, match="unknown view fields size"):
        A.solo_cifar_views("symmetric", size=3)

    s32 = A.solo_cifar_views("symmetric")
    by_config = {
        "barlow_twins": [b1, b2],
        "byol": [b1, b2],
        "mocov3": [b1, b2],
        "dino": [b1, b2],
        "nnclr": [b1, b2],
        "simclr": s32,
        "supcon": s32,
        "swav": s32,
        "dcl": s32,
        "mocov2": [w1, w2],
        "simsiam": [w1, w2],
        "vicreg": [v1, v2],
        "wmse": [m1, m2],
    }
    for name, views in by_config.items():
        c = load_file(name, "cifar10")
        got = [
            {k: tuple(v) if isinstance(v, list) else v for k, v in view.to_dict().items()}
            for view in (c.augment.view1, c.augment.view2)
        ]
        assert got == views, name
