"""On-device image augmentation for SSL in pure JAX (layer 2: no Flax, no config module).

Per-image functions take one float32 image in [0, 1] of shape (H, W, C), C in {1, 3}, and,
where random, one PRNG key first; the batch API vmaps them with one key per example
(`jax.random.split(key, N)`), so everything jits and shards over the batch axis. Semantics
follow torchvision's transforms as composed by solo-learn (github.com/vturrisi/solo-learn,
`solo/data/pretrain_dataloader.py`), with two documented differences: resampling is
bilinear (antialiased when shrinking) where solo-learn uses PIL bicubic, and the blur is
a truncated separable Gaussian where solo-learn uses PIL's `GaussianBlur(radius=sigma)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "smooth_labels",
    "cutmix_box",
    "mix_batch",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "LUMA_WEIGHTS",
    "VIEW_FIELDS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "augment_image",
    "augment_view",
    "center_view",
    "color_jitter",
    "default_blur_kernel_size",
    "gaussian_blur",
    "gaussian_filter",
    "horizontal_flip",
    "hsv_to_rgb",
    "normalize",
    "random_grayscale",
    "random_resized_crop",
    "resized_crop",
    "rgb_to_hsv",
    "sample_color_jitter",
    "sample_crop_box",
    "solarize",
    "solo_cifar_views",
    "to_grayscale",
    "view_uniforms",
    "NUM_UNIFORMS",
]

# solo-learn's CIFAR-10 statistics (`MEANS_N_STD["cifar10"]` in pretrain_dataloader.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# ITU-R BT.601 luma, PIL's convert("L") weights (torchvision rounds 0.299 to 0.2989).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
VIEW_FIELDS = (
    "crop_size",
    "crop_scale",
    "flip_prob",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "color_jitter_prob",
    "grayscale_prob",
    "blur_prob",
    "solarize_prob",
    "mean",
    "std",
)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
# The uniforms each random op of a view consumes; every op's `key` may be a PRNG key or a
# float vector of that many uniforms (see `_uniforms`).
NUM_UNIFORMS = {
    "crop": 2 * _CROP_ATTEMPTS + 2,
    "color_jitter": 9,
    "grayscale": 1,
    "blur": 2,
    "solarize": 1,
    "flip": 1,
}


def _check_prob(name: str, p: Any) -> None:
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must have shape (H, W, C) with C in {{1, 3}}, got {image.shape}")


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    """The `n` uniforms in [0, 1) a random op consumes: drawn from `key`, or `key` itself
    when it is already a float vector of `n` uniforms. Each threefry draw costs about a
    second of XLA compilation on CPU under vmap, so `augment_image` draws the numbers of
    all its ops at once and hands each op its slice (`NUM_UNIFORMS`)."""
    if jnp.issubdtype(jnp.asarray(key).dtype, jnp.floating):
        if jnp.shape(key) != (n,):
            raise ValueError(f"expected {n} uniforms, got shape {jnp.shape(key)}")
        return key
    return jax.random.uniform(key, (n,), jnp.float32)  # float32 under x64 too


# --- Random resized crop ------------------------------------------------------------------


def sample_crop_box(
    key: jax.Array,
    height: int,
    width: int,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[jax.Array, ...]:
    """torchvision `RandomResizedCrop.get_params` with its 10 attempts vectorised.

    Area fraction ~ U(scale), log(w/h) ~ U(log ratio), side lengths rounded; the first box
    that fits wins, else the central crop clamped to `ratio`. Returns int32 scalars
    (top, left, h, w).
    """
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(
            f"scale and ratio must be (min, max) with 0 < min <= max, got "
            f"scale={scale!r}, ratio={ratio!r}"
        )
    u = _uniforms(key, 2 * _CROP_ATTEMPTS + 2)
    n = _CROP_ATTEMPTS
    area = height * width * (scale[0] + u[:n] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + u[n : 2 * n] * (log_hi - log_lo))
    ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = jnp.argmax(fits)
    # The fallback is static: it depends only on the image shape and `ratio`.
    fb_w, fb_h = width, height
    if width / height < ratio[0]:
        fb_h = round(width / ratio[0])
    elif width / height > ratio[1]:
        fb_w = round(height * ratio[1])
    found = fits.any()
    h = jnp.where(found, hs[first], fb_h)
    w = jnp.where(found, ws[first], fb_w)
    top = jnp.minimum(jnp.floor(u[2 * n] * (height - h + 1)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u[2 * n + 1] * (width - w + 1)).astype(jnp.int32), width - w)
    top = jnp.where(found, top, (height - fb_h) // 2)
    left = jnp.where(found, left, (width - fb_w) // 2)
    return top, left, h, w


def resized_crop(image: jax.Array, top, left, height, width, *, size: int) -> jax.Array:
    """Resample the box [top, top+height) x [left, left+width) of `image` to (size, size, C).

    Half-pixel-centred bilinear interpolation (edge pixels clamped), widened to a triangle
    filter when shrinking (antialias, as PIL and torchvision v2 do). Box values may be
    traced and fractional.
    """
    dtype = jnp.promote_types(image.dtype, jnp.float32)  # float64 stays float64
    box = jnp.asarray([top, left, height, width], dtype)
    scale = size / box[2:]
    return jax.image.scale_and_translate(
        image.astype(dtype),
        (size, size, image.shape[-1]),
        (0, 1),
        scale,
        -box[:2] * scale,
        method="linear",
        antialias=True,
    )


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    *,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """torchvision RandomResizedCrop (Szegedy et al. 2015 "Inception" crops): (size, size, C)."""
    _check_image(image)
    top, left, h, w = sample_crop_box(key, image.shape[0], image.shape[1], scale=scale, ratio=ratio)
    return resized_crop(image, top, left, h, w, size=size)


def horizontal_flip(key: jax.Array, image: jax.Array, *, prob: float = 0.5) -> jax.Array:
    """Reverse the W axis with probability `prob`."""
    _check_prob("prob", prob)
    return jnp.where(_uniforms(key, 1)[0] < prob, image[:, ::-1, :], image)


# --- Colour -------------------------------------------------------------------------------


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """RGB in [0, 1] (..., 3) -> HSV (..., 3), hue in [0, 1) of a turn (grey pixels: h = 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    delta = v - jnp.min(rgb, axis=-1)
    s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    safe = jnp.where(delta > 0, delta, 1.0)  # avoids 0/0 before the mask below
    h = jnp.where(
        v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """HSV (..., 3) -> RGB (..., 3); the branch-free form f(n) = v - v s clip(min(k, 4-k))."""
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def to_grayscale(image: jax.Array) -> jax.Array:
    """ITU-R 601 luma, broadcast back to the image's C channels (C = 1: unchanged)."""
    if image.shape[-1] == 1:
        return image
    # An elementwise sum, not a matmul: TPU/GPU default matmul precision is below float32.
    luma = sum(w * image[..., c] for c, w in enumerate(LUMA_WEIGHTS))
    return jnp.broadcast_to(luma[..., None], image.shape)


def _blend(image: jax.Array, other: jax.Array, factor) -> jax.Array:
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
    """clip(image * factor, 0, 1) (torchvision `adjust_brightness`)."""
    return _blend(image, 0.0, factor)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
    """Blend with the mean luma of the whole image (torchvision `adjust_contrast`)."""
    return _blend(image, jnp.mean(to_grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
    """Blend with the per-pixel luma (torchvision `adjust_saturation`); C = 1: identity."""
    return image if image.shape[-1] == 1 else _blend(image, to_grayscale(image), factor)


def adjust_hue(image: jax.Array, shift) -> jax.Array:
    """Rotate hue by `shift` of a full turn via HSV (torchvision `adjust_hue`); C = 1: identity."""
    if image.shape[-1] == 1:
        return image
    hsv = rgb_to_hsv(image)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def sample_color_jitter(
    key: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    prob: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """torchvision `ColorJitter.get_params` under RandomApply: (apply, factors (4,), order (4,)).

    apply: bool, True with probability `prob`. Factors: brightness, contrast, saturation
    ~ U[max(0, 1 - s), 1 + s]; hue shift ~ U[-h, h]. Order: a uniformly random permutation
    of the op indices (brightness, contrast, saturation, hue) = (0, 1, 2, 3).
    """
    if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
        raise ValueError(
            "brightness, contrast, saturation must be >= 0 and hue in [0, 0.5], "
            f"got {(brightness, contrast, saturation, hue)}"
        )
    _check_prob("prob", prob)
    u = _uniforms(key, 9)
    lo = jnp.asarray(
        [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue],
        jnp.float32,
    )
    hi = jnp.asarray([1 + brightness, 1 + contrast, 1 + saturation, hue], jnp.float32)
    # argsort of i.i.d. uniforms is a uniform permutation (ties have probability ~0).
    return u[0] < prob, lo + u[1:5] * (hi - lo), jnp.argsort(u[5:9])


def apply_color_jitter(
    image: jax.Array, factors: jax.Array, order: jax.Array, *, active: Sequence[bool] = (True,) * 4
) -> jax.Array:
    """Apply the four jitter ops in `order` with `factors`; ops with `active` False are
    skipped at trace time (torchvision skips a zero-strength op the same way)."""
    out = image
    branches = [
        (lambda x, i=i: _JITTER_OPS[i](x, factors[i])) if on else (lambda x: x)
        for i, on in enumerate(active)
    ]
    for slot in range(4):  # 4 slots, a constant: one switch per slot
        out = jax.lax.switch(order[slot], branches, out)
    return out


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    prob: float = 0.8,
) -> jax.Array:
    """torchvision ColorJitter under RandomApply(p=prob): ops in random order, clipped to
    [0, 1], parameters `sample_color_jitter(key, ...)`. For C = 1, saturation and hue are
    identities."""
    _check_image(image)
    apply, factors, order = sample_color_jitter(
        key, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, prob=prob
    )
    rgb = image.shape[-1] == 3
    active = (brightness > 0, contrast > 0, saturation > 0 and rgb, hue > 0 and rgb)
    return jnp.where(apply, apply_color_jitter(image, factors, order, active=active), image)


def random_grayscale(key: jax.Array, image: jax.Array, *, prob: float = 0.2) -> jax.Array:
    """torchvision RandomGrayscale: luma in all C channels with probability `prob`."""
    _check_prob("prob", prob)
    return jnp.where(_uniforms(key, 1)[0] < prob, to_grayscale(image), image)


# --- Blur, solarize, normalise ------------------------------------------------------------


def default_blur_kernel_size(side: int) -> int:
    """SimCLR's rule: about 10% of the image side, made odd, at least 3 (224 -> 23, 32 -> 3)."""
    k = int(0.1 * side)
    return max(3, k + 1 - k % 2)


def gaussian_filter(image: jax.Array, sigma, *, kernel_size: int) -> jax.Array:
    """Separable Gaussian of std `sigma` (pixels), `kernel_size` taps, reflect padding
    (mirror without repeating the edge, torchvision's `gaussian_blur` padding)."""
    _check_image(image)
    radius = kernel_size // 2
    if kernel_size < 1 or kernel_size % 2 == 0 or radius >= min(image.shape[:2]):
        raise ValueError(
            f"kernel_size must be odd, >= 1 and < 2 * image side, got "
            f"{kernel_size} for image {image.shape}"
        )
    taps = jnp.exp(-0.5 * jnp.square(jnp.arange(-radius, radius + 1) / sigma))
    taps = taps / jnp.sum(taps)
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = jnp.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        # kernel_size shifted slices: a small static constant, cheaper than a batched conv.
        out = sum(
            taps[t] * jax.lax.slice_in_dim(padded, t, t + n, axis=axis) for t in range(kernel_size)
        )
    return out


def gaussian_blur(
    key: jax.Array,
    image: jax.Array,
    *,
    prob: float,
    sigma: Sequence[float] = (0.1, 2.0),
    kernel_size: int | None = None,
) -> jax.Array:
    """Gaussian blur with sigma ~ U(sigma) (SimCLR, Chen et al. 2020), with probability
    `prob`. Default kernel size: `default_blur_kernel_size(min(H, W))`."""
    _check_prob("prob", prob)
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must be (min, max) with 0 < min <= max, got {sigma!r}")
    size = default_blur_kernel_size(min(image.shape[:2])) if kernel_size is None else kernel_size
    u = _uniforms(key, 2)
    s = sigma[0] + u[1] * (sigma[1] - sigma[0])
    return jnp.where(u[0] < prob, gaussian_filter(image, s, kernel_size=size), image)


def solarize(key: jax.Array, image: jax.Array, *, prob: float, threshold: float = 0.5) -> jax.Array:
    """Invert pixels >= threshold (PIL `ImageOps.solarize`, BYOL) with probability `prob`."""
    _check_prob("prob", prob)
    solarized = jnp.where(image >= threshold, 1.0 - image, image)
    return jnp.where(_uniforms(key, 1)[0] < prob, solarized, image)


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(image - mean) / std per channel; mean, std of shape (C,)."""
    return (image - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# --- Batch API ----------------------------------------------------------------------------


def _check_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """The view as a plain dict after Python-level checks (ValueError naming the field)."""
    keys = set(view.keys())
    missing = [name for name in VIEW_FIELDS if name not in keys]
    unknown = sorted(keys - set(VIEW_FIELDS))
    if missing or unknown:
        name, what = (
            (missing[0], "is missing; add it") if missing else (unknown[0], "is unknown; remove it")
        )
        raise ValueError(f"view field {name!r} {what} (fields: {', '.join(VIEW_FIELDS)})")
    v = {name: view[name] for name in VIEW_FIELDS}
    rules = [
        (
            "crop_size",
            lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1,
            "an integer >= 1",
        ),
        (
            "crop_scale",
            lambda x: len(x) == 2 and 0 < x[0] <= x[1] <= 1,
            "(min, max) with 0 < min <= max <= 1",
        ),
        *[
            (name, lambda x: 0 <= x <= 1, "a probability in [0, 1]")
            for name in VIEW_FIELDS
            if name.endswith("_prob")
        ],
        *[(name, lambda x: x >= 0, ">= 0") for name in ("brightness", "contrast", "saturation")],
        ("hue", lambda x: 0 <= x <= 0.5, "in [0, 0.5]"),
        ("mean", lambda x: len(x) == 3, "3 values (RGB)"),
        ("std", lambda x: len(x) == 3 and min(x) > 0, "3 positive values (RGB)"),
    ]
    for name, ok, must in rules:
        try:
            good = bool(ok(v[name]))
        except TypeError:  # e.g. a string where a number belongs
            good = False
        if not good:
            raise ValueError(f"view field {name!r} must be {must}, got {v[name]!r}")
    for name in ("crop_scale", "mean", "std"):
        v[name] = tuple(float(x) for x in v[name])
    return v


def view_uniforms(key: jax.Array, view: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{op: its uniforms} for the random ops of one view, from ONE draw of `key`: the
    crop's first, then those of every op with a probability above 0, in solo-learn's
    order (colour jitter, grayscale, blur, solarize, flip)."""
    v = _check_view(view)
    ops = ["crop"] + [
        op
        for op, field in (
            ("color_jitter", "color_jitter_prob"),
            ("grayscale", "grayscale_prob"),
            ("blur", "blur_prob"),
            ("solarize", "solarize_prob"),
            ("flip", "flip_prob"),
        )
        if v[field] > 0
    ]
    u = jax.random.uniform(key, (sum(NUM_UNIFORMS[op] for op in ops),), jnp.float32)
    out, start = {}, 0
    for op in ops:
        out[op] = u[start : start + NUM_UNIFORMS[op]]
        start += NUM_UNIFORMS[op]
    return out


def augment_image(
    key: jax.Array, image: jax.Array, view: Mapping[str, Any], *, cropped: bool = False
) -> jax.Array:
    """One view of one float image (H, W, 3) in [0, 1] -> normalised (S, S, 3), S = crop_size.

    solo-learn's order: crop, colour jitter, grayscale, blur, solarize, flip, normalise. An op
    with probability 0 is left out of the trace (solo-learn leaves it out of the pipeline).
    The ops' random numbers come from one draw of `key` (`view_uniforms`). `cropped`: the
    image is already this view's random resized crop (cut on the host,
    `jssl.data.crops`); the crop is skipped and every other op draws the same numbers.
    """
    v = _check_view(view)
    u = view_uniforms(key, v)
    if cropped:
        x = image
    else:
        x = random_resized_crop(u["crop"], image, size=v["crop_size"], scale=v["crop_scale"])
    if "color_jitter" in u:
        x = color_jitter(
            u["color_jitter"],
            x,
            brightness=v["brightness"],
            contrast=v["contrast"],
            saturation=v["saturation"],
            hue=v["hue"],
            prob=v["color_jitter_prob"],
        )
    if "grayscale" in u:
        x = random_grayscale(u["grayscale"], x, prob=v["grayscale_prob"])
    if "blur" in u:
        x = gaussian_blur(u["blur"], x, prob=v["blur_prob"])
    if "solarize" in u:
        x = solarize(u["solarize"], x, prob=v["solarize_prob"])
    if "flip" in u:
        x = horizontal_flip(u["flip"], x, prob=v["flip_prob"])
    return normalize(x, v["mean"], v["std"])


def _to_rgb_float(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 (N, H, W, C), C in {1, 3} -> float (N, H, W, 3) in [0, 1] of `dtype`."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != jnp.uint8:
        raise ValueError(
            f"images must be uint8 of shape (N, H, W, C) with C in {{1, 3}}, got "
            f"{images.dtype} {images.shape}"
        )
    x = images.astype(dtype) / 255.0
    # The models take RGB; a grey image is the same grey in all three channels.
    return jnp.broadcast_to(x, x.shape[:3] + (3,))


def augment_view(
    key: jax.Array,
    images: jax.Array,
    view: Mapping[str, Any],
    *,
    dtype=jnp.float32,
    cropped: bool = False,
) -> jax.Array:
    """One augmented view of a batch: uint8 (N, H, W, C) -> (N, S, S, 3) of `dtype` (float32;
    float64 for float64 runs), normalised.

    `view` is a dict or ConfigDict with the fields `VIEW_FIELDS`; one key per example
    (`jax.random.split(key, N)`), vmapped, so the result for an example depends only on its
    image and its key, whatever the batch's sharding, up to rounding: XLA compiles the
    batch of 256 on one device and of 32 on each of eight differently, and about a third of
    the float32 pixels then differ in the last bit (measured on CPU). The random numbers
    are float32 in every dtype, so a float64 view is the same view, rounded less.
    `cropped`: `images` are this view's crops already (S x S, cut on the host); the rest
    of the view is applied to them (`augment_image`).
    """
    v = _check_view(view)
    x = _to_rgb_float(images, dtype)
    if cropped and x.shape[1:3] != (v["crop_size"], v["crop_size"]):
        raise ValueError(
            f"cropped images must be crop_size x crop_size = {v['crop_size']}, got "
            f"{x.shape[1]}x{x.shape[2]}"
        )
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, im: augment_image(k, im, v, cropped=cropped))(keys, x)


def center_view(
    images: jax.Array, *, size: int, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
    """Evaluation transform: uint8 (N, H, W, C) -> float32 (N, size, size, 3), normalised.

    Images already size x size are only normalised; others get torchvision's
    Resize(size) + CenterCrop(size): the central min(H, W) square resampled to size.
    """
    x = _to_rgb_float(images)
    h, w = x.shape[1:3]
    if (h, w) != (size, size):
        side = min(h, w)
        x = jax.vmap(
            lambda im: resized_crop(im, (h - side) / 2, (w - side) / 2, side, side, size=size)
        )(x)
    return normalize(x, mean, std)


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """(N,) int labels -> (N, C) float32 targets: 1 - smoothing + smoothing / C on the label,
    smoothing / C elsewhere (timm's `LabelSmoothingCrossEntropy` / Mixup targets)."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def cutmix_box(key: jax.Array, height: int, width: int, lam) -> tuple[jax.Array, jax.Array]:
    """CutMix's box for the mixing ratio `lam` (Yun et al. 2019; timm's `rand_bbox`): sides
    sqrt(1 - lam) of the image's, centred at a uniform pixel, clipped to the image.
    Returns (mask (H, W) bool, True inside the box; the corrected lam = 1 - box area / H W)."""
    ky, kx = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y1, y2 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x1, x2 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    mask = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    return mask, 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (height * width)


def mix_batch(
    key: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018) or CutMix of a batch, as timm's `Mixup(mode="batch")`: one
    ratio lam for the batch, each example mixed with the batch reversed (example i with
    N - 1 - i); with both alphas > 0, CutMix with probability `switch_prob`; the batch is
    mixed at all with probability `prob`. Mixup: x' = lam x + (1 - lam) x_rev; CutMix: a
    box (`cutmix_box`) of x_rev pasted into x, lam corrected to the box's area. Targets
    (N, C) become lam y + (1 - lam) y_rev.

    Returns (images, targets, lam); lam = 1 when the batch is not mixed.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError("mix_batch: mixup_alpha and cutmix_alpha must be >= 0")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return images, targets, jnp.ones((), jnp.float32)
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(k_switch, switch_prob)
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
    lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
    mask, lam_box = cutmix_box(k_box, images.shape[1], images.shape[2], lam_cut)
    rev = images[::-1]
    mixed = jnp.where(
        use_cutmix,
        jnp.where(mask[None, :, :, None], rev, images),
        lam_mix.astype(images.dtype) * images + (1 - lam_mix.astype(images.dtype)) * rev,
    )
    apply = jax.random.bernoulli(k_apply, prob)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mix), 1.0).astype(jnp.float32)
    out = jnp.where(apply, mixed, images)
    return out, lam * targets + (1.0 - lam) * targets[::-1], lam


def solo_cifar_views(
    recipe: str,
    *,
    crop_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """The two views of a solo-learn CIFAR pretraining recipe, as `augment_view` dicts.

    From `scripts/pretrain/cifar/augmentations/` in github.com/vturrisi/solo-learn (commit
    9187ea3); each method's config names its recipe (configs/<method>.py):
    - "asymmetric" (barlow_twins, byol, mocov3, dino): crop scale (0.08, 1), jitter p 0.8
      with (0.4, 0.4, 0.2, 0.1), grayscale 0.2, no blur, flip 0.5; solarization 0.0 in view
      1 and 0.2 in view 2.
    - "symmetric" (simclr, supcon, swav): jitter p 0.8 with (0.8, 0.8, 0.8, 0.2), grayscale
      0.2, blur 0.5, no solarization, flip 0.5, in both views.
    - "symmetric_weak" (mocov2plus, simsiam): as symmetric with jitter (0.4, 0.4, 0.4, 0.1).
    Recipes written inline in a method's yaml are one of these with `overrides`, applied to
    both views: vicreg is "asymmetric" with crop_scale=(0.2, 1.0), solarize_prob=0.1; wmse
    is "symmetric" with crop_scale=(0.2, 1.0), blur_prob=0.0.
    solo-learn resamples with bicubic interpolation; jssl's crop is bilinear.
    """
    strong = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "blur_prob": 0.5}
    weak = {**strong, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    recipes = {
        "asymmetric": ({}, {"solarize_prob": 0.2}),
        "symmetric": (strong, strong),
        "symmetric_weak": (weak, weak),
    }
    if recipe not in recipes:
        raise ValueError(
            f"unknown solo-learn CIFAR recipe {recipe!r}; choose one of "
            f"{', '.join(sorted(recipes))}"
        )
    base = {
        "crop_size": crop_size,
        "crop_scale": (0.08, 1.0),
        "flip_prob": 0.5,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.2,
        "hue": 0.1,
        "color_jitter_prob": 0.8,
        "grayscale_prob": 0.2,
        "blur_prob": 0.0,
        "solarize_prob": 0.0,
        "mean": tuple(mean),
        "std": tuple(std),
    }
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"solo_cifar_views: unknown view fields {', '.join(unknown)}")
    return [{**base, **view, **overrides} for view in recipes[recipe]]
