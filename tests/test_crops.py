"""Host decoding and random resized crops (jssl.data.crops) and the input benchmark."""

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jssl.bench_input import make_jpeg_folder
from jssl.data.crops import CropSpec, HostCropper, crop_window, decode_crops, window_rng

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jpeg(width, height, seed=0) -> bytes:
    """A smooth colour JPEG (gradients: real structure, not noise)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 2, 2)
    img = np.stack(
        [
            127 + 120 * np.sin(a * x / width * 6),
            127 + 120 * np.cos(b * y / height * 5),
            (x + y) * 255 // (width + height),
        ],
        axis=-1,
    ).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_windows_follow_torchvisions_rule():
    """Inside the image, area fraction in `scale` and aspect ratio in `ratio` whenever a
    draw fits; the fallback is the centre crop at the nearest allowed ratio."""
    for i in range(500):
        rng = window_rng(0, i, 3, 1)
        top, left, h, w = crop_window(rng, 300, 400, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.08 * 0.95 <= h * w / 120_000 <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # A 1000 x 10 strip never fits a 3:4..4:3 window of 90%: the centre crop, ratio 4/3.
    assert crop_window(window_rng(0, 0, 0, 0), 10, 1000, (0.9, 1.0)) == (0, 493, 10, 13)
    assert crop_window(window_rng(0, 0, 0, 0), 1000, 10, (0.9, 1.0)) == (493, 0, 13, 10)
    # A pure function of (seed, step, example, view).
    draw = [crop_window(window_rng(1, 2, 3, v), 300, 400) for v in (0, 0, 1)]
    assert draw[0] == draw[1] != draw[2]


def test_windows_have_torchvisions_distribution():
    torchvision = pytest.importorskip("torchvision")
    torch = pytest.importorskip("torch")
    img = torch.zeros(3, 300, 400)
    torch.manual_seed(0)
    theirs = np.array(
        [
            torchvision.transforms.RandomResizedCrop.get_params(img, (0.08, 1), (3 / 4, 4 / 3))
            for _ in range(4000)
        ]
    )
    ours = np.array([crop_window(window_rng(0, i, 0, 0), 300, 400) for i in range(4000)])
    for windows in (theirs, ours):
        assert windows.shape == (4000, 4)
    area = [w[:, 2] * w[:, 3] / 120_000 for w in (theirs, ours)]
    ratio = [np.log(w[:, 3] / w[:, 2]) for w in (theirs, ours)]
    # Means agree within 4 standard errors of the difference.
    for a, b in (area, ratio):
        se = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)


def test_decoded_crops_match_a_full_decode():
    """Without a reduced decode: bit-identical to Pillow's crop then resize (torchvision's
    PIL path). With one (a 1/4 or 1/8 JPEG decode for a small crop of a large image):
    within a few grey levels of it."""
    data = _jpeg(1000, 800)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for size, scale in ((224, (0.6, 1.0)), (32, (0.3, 0.6))):
        spec = CropSpec(size, scale)
        (view,) = decode_crops(data, [spec], [window_rng(0, 0, 0, 0)])
        top, left, h, w = crop_window(window_rng(0, 0, 0, 0), 800, 1000, scale)
        ref = Image.fromarray(full[top : top + h, left : left + w]).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        ref = np.asarray(ref)
        assert view.shape == (size, size, 3) and view.dtype == np.uint8
        diff = np.abs(view.astype(int) - ref.astype(int))
        if min(h, w) / size < 2:  # full-resolution decode
            assert diff.max() <= 1, diff.max()
        else:
            assert diff.mean() < 3.0, diff.mean()


def test_threads_give_the_same_batch_and_steps_differ():
    datas = [_jpeg(w, h, seed=i) for i, (w, h) in enumerate([(400, 300), (333, 500), (500, 375)])]
    specs = [CropSpec(64), CropSpec(32, (0.05, 0.4))]
    one = HostCropper(specs, seed=5, workers=1)
    two = HostCropper(specs, seed=5, workers=2)
    a, b = one(datas, [10, 11, 12], 3), two(datas, [10, 11, 12], 3)
    assert [v.shape for v in a] == [(3, 64, 64, 3), (3, 32, 32, 3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = two(datas, [10, 11, 12], 4)
    assert not np.array_equal(a[0], c[0])
    one.close()
    two.close()
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        HostCropper(specs, seed=0, workers=0)
    with pytest.raises(ValueError, match=r"specs\[1\]\.scale must be 0 < lo <= hi <= 1"):
        HostCropper([CropSpec(64), CropSpec(32, (0.5, 0.1))], seed=0, workers=1)
    with pytest.raises(ValueError, match=r"specs\[0\]\.size must be a positive integer"):
        HostCropper([CropSpec(0)], seed=0, workers=1)
    with pytest.raises(ValueError, match="3 images but 2 example indices"):
        one(datas, [1, 2], 0)


def test_benchmark_jpegs_and_the_input_benchmark(tmp_path):
    root = make_jpeg_folder(str(tmp_path / "jpegs"), 24, classes=3)
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert len(files) == 24 and len(os.listdir(root)) == 3
    for f in files[:6]:
        img = Image.open(f)
        assert img.format == "JPEG" and 180 <= max(img.size) <= 500
        assert np.asarray(img).std() > 10  # photographs, not flat colour
    out = str(tmp_path / "bench.jsonl")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jssl.bench",
            "--method",
            "input",
            "--data",
            f"folder:{root}",
            "--image-size",
            "32",
            "--batch",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--workers",
            "1",
            "--step",  # the train step fed by the pipeline, at test sizes
            "--step-backbone",
            "convnet",
            "--width",
            "8",
            "--step-proj",
            "32",
            "--out",
            out,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(open(out).read())
    assert row["method"] == "input" and row["workers"] == 1 and row["img_per_s"] > 0
    assert {"img_per_s_per_core", "backend", "views"} <= set(row)
    assert row["step_config"] == "barlow_twins:imagenet" and row["step_backbone"] == "convnet"
    assert row["step_views"] == 2 and row["step_img_per_s_fed"] > 0
    assert row["step_img_per_s_resident"] > 0 and row["fed_vs_resident"] > 0


def test_the_input_benchmark_names_its_missing_or_bad_flags(tmp_path):
    from jssl import bench

    with pytest.raises(SystemExit, match="--method input needs --data folder:PATH"):
        bench.main(["--method", "input"])
    with pytest.raises(SystemExit, match="--workers 0: give at least 1"):
        bench.main(["--method", "input", "--data", f"folder:{tmp_path}", "--workers", "0"])
    with pytest.raises(SystemExit, match="no images in its class folders"):
        bench.main(["--method", "input", "--data", f"folder:{tmp_path}"])
