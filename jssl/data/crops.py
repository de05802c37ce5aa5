"""Decoding and random resized crops on the host, for encoded images of any size (JPEG).

The first stage of the ImageNet input path (issue 18): each view of each example is a
random resized crop of the ORIGINAL image, with torchvision's `RandomResizedCrop(size,
scale, ratio)` semantics, cut while decoding; the rest of the augmentation (flip, colour,
blur, solarisation) stays on the device as for every other source.

* `crop_window` is torchvision's `RandomResizedCrop.get_params`: up to 10 draws of an area
  fraction in `scale` and a log-uniform aspect ratio in `ratio`; the first window that fits
  is taken, else the centre crop at the nearest allowed ratio.
* Its randomness is a pure function of (seed, step, example, view) (`window_rng`): the
  batches stay deterministic and a resumed run crops exactly what it would have.
* `decode_crops` decodes an image once for all its views, at the coarsest JPEG scale
  (1/2, 1/4 or 1/8, libjpeg's DCT scaling through Pillow's `draft`) that still leaves every
  crop window at least its output size, then resizes each window with Pillow's
  antialiased bilinear filter straight from the decoded image (`resize(box=...)`: no
  intermediate crop copy), as torchvision's PIL path does.
* `HostCropper` runs the examples of a batch over a thread pool (`workers`): Pillow
  releases the GIL while it decodes and resizes, so threads use every core without the
  copies of worker processes (measured against PyTorch's DataLoader by
  `python -m jssl.bench --method input`).
* `decode_center` is the evaluation transform of such images, torchvision's
  `Resize(floor(size / crop_pct))` + `CenterCrop(size)` (crop_pct 0.875: 256 -> 224), cut
  in one resize from the decoded image, and `decode_many` runs it over a thread pool.
"""

from __future__ import annotations

import io as _io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "CropSpec",
    "window_rng",
    "crop_window",
    "decode_crops",
    "HostCropper",
    "decode_center",
    "decode_many",
    "default_workers",
]


class CropSpec(NamedTuple):
    """One view's host crop: output side, area fraction range, aspect ratio range."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def window_rng(seed: int, step: int, example: int, view: int) -> np.random.Generator:
    """The generator of one view's crop window: a function of these four integers only."""
    return np.random.default_rng([int(seed), int(step), int(example), int(view)])


def crop_window(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, torchvision's `get_params` rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the centre crop, its ratio clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode_crops(
    data: bytes, specs: Sequence[CropSpec], rngs: Sequence[np.random.Generator]
) -> list[np.ndarray]:
    """The views (size, size, 3) uint8 of one encoded image, one per spec, each window
    drawn from its generator on the original image's size."""
    from PIL import Image

    img = _open(data)
    width, height = img.size
    windows = [crop_window(r, height, width, s.scale, s.ratio) for s, r in zip(specs, rngs)]
    # The coarsest decode that keeps every window at least its output size on both sides.
    factor = min(min(h / s.size, w / s.size) for (_, _, h, w), s in zip(windows, specs))
    if factor >= 2 and img.format == "JPEG":
        img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    img = img.convert("RGB")
    sx, sy = width / img.size[0], height / img.size[1]
    out = []
    for (top, left, h, w), spec in zip(windows, specs):
        box = (left / sx, top / sy, (left + w) / sx, (top + h) / sy)
        view = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=box)
        out.append(np.asarray(view, np.uint8))
    return out


def _open(data: bytes):
    from PIL import Image  # Pillow: a dependency of jssl (image folders)

    return Image.open(_io.BytesIO(data))


def decode_center(data: bytes, size: int, crop_pct: float = 0.875) -> np.ndarray:
    """The evaluation view (size, size, 3) uint8 of one encoded image: torchvision's
    `Resize(floor(size / crop_pct))` (the shorter side to that, the longer to
    int(that x long / short)) then `CenterCrop(size)` (offsets rounded as torchvision
    rounds them), cut as ONE antialiased bilinear resize of the matching window of the
    original, decoded at the coarsest JPEG scale that keeps it (timm's `crop_pct`)."""
    from PIL import Image

    img = _open(data)
    width, height = img.size
    short = math.floor(size / crop_pct)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    # The crop's window in the original's pixels.
    fx, fy = width / new_w, height / new_h
    window = (left * fx, top * fy, (left + size) * fx, (top + size) * fy)
    f = min(fx, fy)
    if f >= 2 and img.format == "JPEG":
        img.draft("RGB", (math.ceil(width / f), math.ceil(height / f)))
    img = img.convert("RGB")
    sx, sy = width / img.size[0], height / img.size[1]
    box = (window[0] / sx, window[1] / sy, window[2] / sx, window[3] / sy)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box), np.uint8)


def default_workers() -> int:
    """One decoding thread per CPU core this process may run on (`data.workers = 0`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_many(
    datas: Sequence[bytes], size: int, crop_pct: float, pool: ThreadPoolExecutor | None
) -> np.ndarray:
    """(N, size, size, 3) uint8: `decode_center` of each image, over `pool` if given."""
    out = np.empty((len(datas), size, size, 3), np.uint8)

    def fill(i):
        out[i] = decode_center(datas[i], size, crop_pct)

    if pool is None:
        for i in range(len(datas)):
            fill(i)
    else:
        list(pool.map(fill, range(len(datas))))
    return out


class HostCropper:
    """Views of a batch of encoded images, decoded and cropped over `workers` threads.

    `__call__(datas, examples, step)` -> one (B, size, size, 3) uint8 array per spec; the
    window of view v of the example with global index `examples[i]` at `step` is drawn
    from `window_rng(seed, step, examples[i], v)`."""

    def __init__(self, specs: Sequence[CropSpec], *, seed: int, workers: int):
        if not specs:
            raise ValueError("specs must name at least one view")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.specs = tuple(CropSpec(*s) for s in specs)
        for i, spec in enumerate(self.specs):
            lo, hi = spec.scale
            rlo, rhi = spec.ratio
            if not (isinstance(spec.size, int) and spec.size > 0):
                raise ValueError(f"specs[{i}].size must be a positive integer, got {spec.size!r}")
            if not (0 < lo <= hi <= 1):
                raise ValueError(f"specs[{i}].scale must be 0 < lo <= hi <= 1, got {spec.scale}")
            if not (0 < rlo <= rhi):
                raise ValueError(f"specs[{i}].ratio must be 0 < lo <= hi, got {spec.ratio}")
        self.seed = int(seed)
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def _one(self, data: bytes, example: int, step: int) -> list[np.ndarray]:
        rngs = [window_rng(self.seed, step, example, v) for v in range(len(self.specs))]
        return decode_crops(data, self.specs, rngs)

    def __call__(
        self, datas: Sequence[bytes], examples: Sequence[int], step: int
    ) -> list[np.ndarray]:
        if len(datas) != len(examples):
            raise ValueError(f"{len(datas)} images but {len(examples)} example indices")
        outs = [np.empty((len(datas), s.size, s.size, 3), np.uint8) for s in self.specs]

        def fill(i):
            for out, view in zip(outs, self._one(datas[i], int(examples[i]), step)):
                out[i] = view

        if self._pool is None:
            for i in range(len(datas)):
                fill(i)
        else:
            list(self._pool.map(fill, range(len(datas))))
        return outs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
