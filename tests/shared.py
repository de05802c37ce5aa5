"""Helpers the test files share: smoke configs, metrics files, and the finished runs that
several files read (built once per test session, whatever worker process asks first).

Training the same smoke run in many tests cost most of the suite's time (each run compiles
its step, evaluation and random-init baseline). `SHARED_RUNS` names the few runs the suite
reads; the `shared_run` fixture (tests/conftest.py) builds each at most once per session
into a directory every pytest-xdist worker sees, under a file lock, and hands tests its
(config, workdir). Tests only read it; a test that changes a run (resume, a second start,
--mode=eval) copies it first (`copy_run`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

from jssl import config as jc

# name -> (config file, overrides of its smoke preset). Four steps, every step logged, a
# checkpoint every two: what the train-loop, resume, CLI, multi-host, export and plot tests
# need of a finished run.
SHARED_RUNS = {
    "barlow_twins": (
        "barlow_twins",
        {"total_steps": 4, "log_every": 1, "checkpoint_every": 2, "plots": True},
    ),
    "simclr": (
        "simclr",
        {
            "total_steps": 4,
            "log_every": 1,
            "checkpoint_every": 2,
            "eval.random_init_baseline": False,
        },
    ),
}


def smoke(name: str = "barlow_twins", **overrides):
    """configs/<name>.py:smoke without the random-init baseline, with dotted overrides
    (`smoke("simclr", **{"eval.max_examples": 64})`)."""
    c = jc.load_file(name, "smoke")
    c.eval.random_init_baseline = False
    for k, v in overrides.items():
        target = c
        *path, last = k.split(".")
        for p in path:
            target = target[p]
        target[last] = v
    return c


def shared_config(name: str):
    file, overrides = SHARED_RUNS[name]
    c = smoke(file, **overrides)
    c.eval.random_init_baseline = overrides.get("eval.random_init_baseline", True)
    return c


def read_metrics(workdir: str, file: str = "metrics.jsonl") -> list[dict]:
    with open(os.path.join(workdir, file)) as f:
        return [json.loads(line) for line in f]


def copy_run(workdir: str, dest) -> str:
    """A private copy of a shared run, to change."""
    shutil.copytree(workdir, dest)
    return str(dest)


def build_shared(root: str, name: str) -> tuple:
    """(config, workdir) of the shared run `name` under `root`, trained by the first caller
    of the session (an exclusive lock on `root/<name>.lock` while it trains)."""
    from jssl import train

    os.makedirs(root, exist_ok=True)
    workdir = os.path.join(root, name)
    config = shared_config(name)
    with open(os.path.join(root, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if train.finished_results(workdir, config) is None:
                train.train_and_evaluate(config, workdir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return config, workdir


# --- Encoded images of varying size (the ImageNet input path) -----------------------------

# (height, width) of the JPEGs the tests write: portrait, landscape, square, long.
JPEG_SIZES = ((40, 60), (64, 48), (52, 52), (90, 30), (33, 71))


def jpeg_bytes(seed: int, height: int, width: int, quality: int = 90) -> bytes:
    """A JPEG of smooth content (gradients and a few flat rectangles, as in photographs,
    not noise) at height x width."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(0, 1, 3)
    img = np.stack(
        [(base[c] + rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx) % 1.0 for c in range(3)],
        axis=-1,
    )
    for _ in range(3):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        bottom = top + rng.integers(4, height // 2 + 5)
        right = left + rng.integers(4, width // 2 + 5)
        img[top:bottom, left:right] = rng.uniform(0, 1, 3)
    out = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def jpeg_record(k: int, num_classes: int) -> dict:
    """TFDS record k of the mock sets: {"image": JPEG bytes, "label": k % num_classes}."""
    h, w = JPEG_SIZES[k % len(JPEG_SIZES)]
    return {"image": jpeg_bytes(k, h, w), "label": k % num_classes}


def mock_jpeg_tfds(num_examples: int = 40, num_classes: int = 10, distinct: int = 40):
    """`tfds.testing.mock_data` whose data sources hold `num_examples` real JPEG records of
    the `JPEG_SIZES` (every split the same records; record k's image is the one of record
    k % `distinct`, label k % num_classes). It answers only a read that skips the image
    decoding, as jssl's encoded path asks: any other read is a test failure."""
    import tensorflow_datasets as tfds

    images = [jpeg_record(k, num_classes)["image"] for k in range(min(distinct, num_examples))]
    records = [
        {"image": images[k % len(images)], "label": k % num_classes} for k in range(num_examples)
    ]

    def as_data_source(builder, split, decoders=None, **kwargs):
        assert decoders is not None and isinstance(
            decoders.get("image"), tfds.decode.SkipDecoding
        ), f"{builder.name}:{split} was read decoded: {decoders}"
        return records

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def write_jpeg_folder(root, per_class: int = 6, classes: int = 3) -> str:
    """<root>/<class>/<i>.jpg: JPEGs of the `JPEG_SIZES`, `per_class` in each class."""
    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for i in range(per_class):
            h, w = JPEG_SIZES[(c + i) % len(JPEG_SIZES)]
            with open(os.path.join(root, f"c{c}", f"{i}.jpg"), "wb") as f:
                f.write(jpeg_bytes(100 * c + i, h, w))
    return str(root)
