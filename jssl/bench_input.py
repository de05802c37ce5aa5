"""Input benchmark: `python -m jssl.bench --method input --data folder:PATH --image-size 224
--batch 256 --views 2 --steps 20 --workers N`.

Times the host half of the JPEG input path alone (reading the files, decoding, each view's
random resized crop, batch assembly, the transfer to the devices) and, in the same run,
alternating, the same work in PyTorch: `torchvision.datasets.ImageFolder` with two views
of `RandomResizedCrop(size)` + `RandomHorizontalFlip()` + `PILToTensor()` (uint8, as
jssl's views leave the host) in a `DataLoader` with the same number of workers (worker
processes there, threads here: `jssl.data.crops.HostCropper`). Each side runs `--warmup`
untimed batches, then `--steps` timed ones, `--repeats` times; medians are reported.
`img_per_s` counts source images (each gives `--views` crops); `img_per_s_per_core`
divides by the cores the workers can use (min(workers, cores)).

`--step` adds the training step fed by this pipeline: the `imagenet` preset of
`--step-config` (Barlow Twins' ResNet-50 by default; `--step-backbone` and `--width` may
shrink it) at `--image-size` and `--batch`, each step's views cut on the host
(`jssl.data.pipeline.TrainBatches` with a `HostCropper` of `--workers` threads, one batch
in flight on the devices) against the same step on one device-resident batch, in one run:
`step_img_per_s_fed`, `step_img_per_s_resident` and their ratio `fed_vs_resident` (1.0:
the host keeps the accelerator busy).

`--data make:PATH[:N]` first writes N (default 2,000) JPEGs of ImageNet-like sizes into
PATH (`make_jpeg_folder`): crops and rescales of the photographs that ship inside the
scikit-image wheel, real content (noise decodes at another speed).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np

from jssl.data.crops import CropSpec, HostCropper
from jssl.data.folder import IMAGE_EXTENSIONS

__all__ = ["bench", "make_jpeg_folder", "PHOTOS"]

# Colour photographs inside the scikit-image wheel (skimage/data/; no download).
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "color.png",
)


def make_jpeg_folder(path: str, n: int, *, seed: int = 0, classes: int = 10) -> str:
    """Write `n` JPEGs (quality 90) into `path/<class>/`: random crops of the scikit-image
    photographs rescaled to ImageNet-like sizes (sides 250-500 px, aspect 3:4 to 4:3
    either way). Returns `path`. Existing files are kept (the set is rebuilt only when
    `path` holds fewer than `n` images)."""
    import skimage
    from PIL import Image

    have = sum(len(files) for _, _, files in os.walk(path)) if os.path.isdir(path) else 0
    if have >= n:
        return path
    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = []
    for name in PHOTOS:
        img = Image.open(os.path.join(data_dir, name)).convert("RGB")
        photos.append(img)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        w, h = img.size
        cw, ch = (int(s * rng.uniform(0.4, 1.0)) for s in (w, h))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        long_side = int(rng.integers(250, 501))
        aspect = rng.uniform(0.75, 1.34)
        size = (
            (long_side, int(long_side / aspect))
            if aspect >= 1
            else (int(long_side * aspect), long_side)
        )
        out = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
        folder = os.path.join(path, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        out.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return path


def _files(root: str) -> list[str]:
    files = []
    for folder, _, names in sorted(os.walk(root)):
        files += [
            os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    if not files:
        raise SystemExit(f"jssl.bench: --data folder:{root}: no images in its class folders")
    return files


def _jssl_run(files, args, sharding):
    """Seconds for `--steps` batches after `--warmup` (reading, decoding, crops, transfer)."""
    specs = [CropSpec(args.image_size)] * args.views
    cropper = HostCropper(specs, seed=args.seed, workers=args.workers)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(files))

    def batch(step):
        idx = order[(np.arange(args.batch) + step * args.batch) % len(files)]
        datas = []
        for i in idx:
            with open(files[i], "rb") as f:
                datas.append(f.read())
        views = cropper(datas, idx, step)
        return [jax.device_put(v, sharding) for v in views]

    try:
        for step in range(args.warmup):
            jax.block_until_ready(batch(step))
        t = time.perf_counter()
        for step in range(args.warmup, args.warmup + args.steps):
            jax.block_until_ready(batch(step))
        return time.perf_counter() - t
    finally:
        cropper.close()


class _FileBytes:
    """A grain data source: record i is the bytes of file i (picklable for its workers)."""

    def __init__(self, files):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return f.read()


class _GrainCrops:
    """The jssl crop of one record inside a grain worker: `decode_crops` with the windows of
    (seed, 0, record, view), the same work as `HostCropper` does per example."""

    def __init__(self, size: int, views: int, seed: int):
        self.specs = [CropSpec(size)] * views
        self.seed = seed

    def map_with_index(self, index, data):
        from jssl.data.crops import decode_crops, window_rng

        rngs = [window_rng(self.seed, 0, index, v) for v in range(len(self.specs))]
        return tuple(decode_crops(data, self.specs, rngs))


try:  # grain's transform base class, when grain is installed (the optional comparison)
    import grain.python as _gp

    class _GrainMap(_gp.MapWithIndexTransform):
        def __init__(self, crops: _GrainCrops):
            self.crops = crops

        def map_with_index(self, index, element):
            return self.crops.map_with_index(index, element)

except ImportError:  # pragma: no cover - grain absent
    _GrainMap = None


def _grain_loader(files, args):
    """grain's dataset pipeline over the same files (shuffled, the same crops per record,
    batched) with `--workers` worker processes (`mp_prefetch`); None without grain."""
    if _GrainMap is None:
        return None
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
        flags.FLAGS.mark_as_parsed()
    crops = _GrainCrops(args.image_size, args.views, args.seed)
    ds = (
        _gp.MapDataset.source(_FileBytes(files))
        .shuffle(seed=args.seed)
        .repeat()
        .map_with_index(_GrainMap(crops))
        .batch(args.batch, drop_remainder=True)
    )
    return ds.to_iter_dataset().mp_prefetch(_gp.MultiprocessingOptions(num_workers=args.workers))


def _grain_run(loader, args, sharding) -> float:
    it = iter(loader)

    def nxt():
        views = next(it)
        return [jax.device_put(np.asarray(v), sharding) for v in views]

    for _ in range(args.warmup):
        jax.block_until_ready(nxt())
    t = time.perf_counter()
    for _ in range(args.steps):
        jax.block_until_ready(nxt())
    return time.perf_counter() - t


class _TorchViews:
    """`views` crops of one PIL image (picklable: the DataLoader's worker processes are
    spawned, not forked from this process, which runs JAX's threads)."""

    def __init__(self, size: int, views: int):
        from torchvision import transforms

        self.views = views
        self.view = transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ]
        )

    def __call__(self, img):
        return [self.view(img) for _ in range(self.views)]


def _torch_loader(root: str, args):
    import torch
    from torchvision import datasets

    torch.manual_seed(args.seed)
    data = datasets.ImageFolder(root, transform=_TorchViews(args.image_size, args.views))
    return torch.utils.data.DataLoader(
        data,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=True,
        multiprocessing_context="spawn",
        drop_last=True,
    )


def _torch_run(loader, args) -> float:
    it = iter(loader)

    def nxt():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    for _ in range(args.warmup):
        nxt()
    t = time.perf_counter()
    for _ in range(args.steps):
        nxt()
    return time.perf_counter() - t


def bench(args) -> dict:
    spec = args.data or ""
    if spec.startswith("make:"):
        parts = spec[len("make:") :].split(":")
        root = make_jpeg_folder(parts[0], int(parts[1]) if len(parts) > 1 else 2000)
    elif spec.startswith("folder:"):
        root = spec[len("folder:") :]
    else:
        raise SystemExit(
            "jssl.bench: --method input needs --data folder:PATH (a folder of class "
            "folders of JPEGs) or --data make:PATH[:N] (write N benchmark JPEGs there first)"
        )
    if args.workers < 1:
        raise SystemExit(f"jssl.bench: --workers {args.workers}: give at least 1")
    files = _files(root)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    loader = None
    try:
        loader = _torch_loader(root, args)
    except ImportError:
        pass
    grain_loader = _grain_loader(files, args) if args.grain else None
    times: dict[str, list[float]] = {"jssl": []}
    if loader is not None:
        times["torch"] = []
    if grain_loader is not None:
        times["grain"] = []
    for _ in range(args.repeats):
        times["jssl"].append(_jssl_run(files, args, sharding))
        if loader is not None:
            times["torch"].append(_torch_run(loader, args))
        if grain_loader is not None:
            times["grain"].append(_grain_run(grain_loader, args, sharding))
    cores = min(args.workers, os.cpu_count() or 1)
    images = args.steps * args.batch
    out = {
        "impl": "jssl",
        "method": "input",
        "backend": "threads+pillow",
        "pillow_jpeg": _pillow_jpeg(),
        "data": root,
        "files": len(files),
        "image_size": args.image_size,
        "batch": args.batch,
        "views": args.views,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "workers": args.workers,
        "cpu_cores": os.cpu_count(),
        "devices": jax.device_count(),
        "device_backend": jax.default_backend(),
    }
    s = statistics.median(times["jssl"])
    out.update(img_per_s=round(images / s, 1), img_per_s_per_core=round(images / s / cores, 1))
    if "torch" in times:
        import torch
        import torchvision

        t = statistics.median(times["torch"])
        out.update(
            torch_img_per_s=round(images / t, 1),
            torch_img_per_s_per_core=round(images / t / cores, 1),
            ratio_vs_torch=round(t / s, 3),
            torch=torch.__version__,
            torchvision=torchvision.__version__,
        )
    if "grain" in times:
        import grain

        g = statistics.median(times["grain"])
        out.update(
            grain_img_per_s=round(images / g, 1),
            grain_img_per_s_per_core=round(images / g / cores, 1),
            ratio_vs_grain=round(g / s, 3),
            grain=getattr(grain, "__version__", "?"),
        )
    out["times_s"] = {k: [round(v, 3) for v in vs] for k, vs in times.items()}
    if args.step:
        out.update(_step_run(root, args))
    return out


def _step_config(root: str, args):
    """The `imagenet` preset of `--step-config` reading the benchmark folder at the bench's
    sizes (small multi-crop views scaled as 96 of 224 px)."""
    from jssl import config as jc

    c = jc.load_file(args.step_config, "imagenet")
    c.data.name = f"folder:{root}"
    c.data.train_split = "train+validation"
    c.data.workers = args.workers
    c.data.crop_on = "host"
    c.batch_size = args.batch
    c.dtype = args.dtype
    c.data.image_size = args.image_size
    c.augment.view1.crop_size = c.augment.view2.crop_size = args.image_size
    if c.augment.num_small_crops:
        c.augment.small_view.crop_size = max(8, round(args.image_size * 96 / 224))
    if args.step_backbone:
        c.model.backbone = args.step_backbone
    c.model.num_filters = args.width
    if args.step_proj:
        c.model.projector_hidden_dims = (args.step_proj,) * len(c.model.projector_hidden_dims)
        c.model.projector_dim = args.step_proj
    c.total_steps = args.warmup + args.steps + 1
    c.optimizer.warmup_steps = 0
    return c


def _step_run(root: str, args) -> dict:
    """Images per second of the train step fed by the host pipeline and on a resident
    batch, alternating `--repeats` times; medians."""
    from jssl import methods, parallel
    from jssl.data import pipeline, sources

    config = _step_config(root, args)
    source = sources.config_source(config, config.data.train_split)
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    info = methods.DataInfo(num_classes=source.num_classes, image_shape=source.image_shape)
    method = methods.build(config, info, mesh)
    specs = pipeline.crop_specs(config, source, method.host_views)
    cropper = HostCropper(specs, seed=args.seed, workers=args.workers)
    stream = pipeline.TrainBatches(
        source, batch_size=args.batch, seed=args.seed, mesh=mesh, cropper=cropper
    )
    step = jax.jit(
        method.train_step,
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(args.seed))
    resident = next(iter(stream(0, 1)))
    state, _ = step(state, resident)  # compile
    jax.block_until_ready(state)
    fed, res = [], []
    try:
        for r in range(args.repeats):
            start = 1 + r * (args.warmup + args.steps)
            batches = stream(start, start + args.warmup + args.steps)
            for _ in range(args.warmup):
                state, _ = step(state, next(batches))
            jax.block_until_ready(state)
            t = time.perf_counter()
            for b in batches:
                state, _ = step(state, b)
            jax.block_until_ready(state)
            fed.append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(args.steps):
                state, _ = step(state, resident)
            jax.block_until_ready(state)
            res.append(time.perf_counter() - t)
    finally:
        cropper.close()
    images = args.steps * args.batch
    fed_s, res_s = statistics.median(fed), statistics.median(res)
    return {
        "step_config": f"{args.step_config}:imagenet",
        "step_backbone": config.model.backbone,
        "step_width": config.model.num_filters,
        "step_dtype": config.dtype,
        "step_views": len(specs),
        "step_img_per_s_fed": round(images / fed_s, 2),
        "step_img_per_s_resident": round(images / res_s, 2),
        "fed_vs_resident": round(res_s / fed_s, 3),
        "step_times_s": {"fed": [round(v, 3) for v in fed], "resident": [round(v, 3) for v in res]},
    }


def _pillow_jpeg() -> str:
    from PIL import features

    return "libjpeg-turbo" if features.check_feature("libjpeg_turbo") else "libjpeg"
