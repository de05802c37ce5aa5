"""Input benchmark: `python -m jssl.bench --method input --data folder:PATH --image-size 224
--batch 256 --views 2 --steps 20 --workers N`.

Times the host half of the JPEG input path alone, as training runs it: `TrainBatches` over
the folder with each view's random resized crop cut on the host (reading the files,
decoding, the crops, batch assembly, the transfer to the devices, one batch ahead) by the
decoding workers of `--backend` (`threads`: `HostCropper`'s pool, the training default;
`grain`: grain's worker processes), and with `--other-backend` the other one too. In the
same run, in turn, the same work in PyTorch: `torchvision.datasets.ImageFolder` with two
views of `RandomResizedCrop(size)` + `RandomHorizontalFlip()` + `PILToTensor()` (uint8, as
jssl's views leave the host) in a `DataLoader` with the same number of worker processes,
its batches left in host memory (jssl's arm also places each batch on the devices). Each
implementation starts its workers for its turn and stops them after it, so none
prefetches or takes the cores while another is timed. A turn is the steady-state time of
`--steps` batches: a fresh pipeline run to `--warmup` batches subtracted from one run to
warmup + steps (`_steady`: start-up, and whatever a pipeline prefetched before its first
batch was asked for, cancel); `--repeats` rounds, medians reported. `img_per_s` counts
source images (each gives `--views` crops); `img_per_s_per_core` divides by the cores the
workers can use (min(workers, cores)).

`--step` adds the training step fed by this pipeline: the `imagenet` preset of
`--step-config` (Barlow Twins' ResNet-50 by default; `--step-backbone` and `--width` may
shrink it) at `--image-size` and `--batch`, each step's views cut on the host
(`jssl.data.pipeline.TrainBatches` with `--workers` decoding workers of `--backend`, one
batch in flight on the devices) against the same step on one device-resident batch, in one run:
`step_img_per_s_fed`, `step_img_per_s_resident` and their ratio `fed_vs_resident` (1.0:
the host keeps the accelerator busy).

`--data make:PATH[:N]` first writes N (default 2,000) JPEGs of ImageNet-like sizes into
PATH (`make_jpeg_folder`): crops and rescales of the photographs that ship inside the
scikit-image wheel, real content (noise decodes at another speed).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

import jax
import numpy as np

from jssl import parallel
from jssl.data.crops import CropSpec, HostCropper
from jssl.data.folder import IMAGE_EXTENSIONS, folder_source
from jssl.data.pipeline import GrainCrops, TrainBatches

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


def _cropper(backend: str, args):
    specs = (CropSpec(args.image_size),) * args.views
    if backend == "grain":
        return GrainCrops(specs, args.seed, args.workers)
    return HostCropper(specs, seed=args.seed, workers=args.workers)


def _steady(run, args) -> float:
    """Seconds for `--steps` batches in the steady state: a fresh pipeline run to its
    `--warmup`-th batch, another to its (warmup + steps)-th, the difference. Start-up
    (worker processes, imports) cancels, and so does whatever a pipeline prefetched
    before its first batch was asked for (grain's processes can finish many batches
    before handing over the first)."""
    return run(args.warmup + args.steps) - run(args.warmup)


def _jssl_run(root: str, args, mesh, backend: str) -> float:
    """Steady-state seconds of the training input path itself: `TrainBatches` over the
    folder with host crops of `backend` (workers started for each run, stopped after it),
    each batch placed on the devices."""
    source = folder_source(root, "train+validation+test")

    def run(n: int) -> float:
        cropper = _cropper(backend, args)
        stream = TrainBatches(
            source, batch_size=args.batch, seed=args.seed, mesh=mesh, cropper=cropper
        )
        t = time.perf_counter()
        it = stream(0, n)
        for batch in it:
            jax.block_until_ready(batch)
        took = time.perf_counter() - t
        it.close()
        cropper.close()
        return took

    return _steady(run, args)


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
        # Kept across the epochs of one run (2,000 files are 7 batches of 256): without it
        # every epoch would start the worker processes again.
        persistent_workers=True,
        multiprocessing_context="spawn",
        drop_last=True,
    )


def _torch_run(root: str, args, sharding) -> float:
    """Steady-state seconds of a fresh DataLoader per run (`_steady`). Its batches stay in
    host memory, where the DataLoader leaves them: sending them to the device the way
    jssl's are sent (`jax.device_put` of the tensors' numpy views) cost PyTorch 2 s a
    batch here, a cost of the interoperation, not of its pipeline."""

    def run(n: int) -> float:
        loader = _torch_loader(root, args)
        t = time.perf_counter()
        done, it = 0, iter(loader)
        while done < n:
            try:
                views, _ = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            done += 1
        took = time.perf_counter() - t
        del it, loader  # stops the worker processes
        return took

    return _steady(run, args)


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
    mesh = parallel.make_mesh()
    other = {"grain": "threads", "threads": "grain"}[args.backend]
    times: dict[str, list[float]] = {"jssl": []}
    if args.other_backend:
        times[other] = []
    if importlib.util.find_spec("torchvision") is not None:
        times["torch"] = []
    # In turn, each implementation alone on the cores while it is timed.
    sharding = parallel.batch_sharding(mesh)
    for _ in range(args.repeats):
        times["jssl"].append(_jssl_run(root, args, mesh, args.backend))
        if args.other_backend:
            times[other].append(_jssl_run(root, args, mesh, other))
        if "torch" in times:
            times["torch"].append(_torch_run(root, args, sharding))
    cores = min(args.workers, os.cpu_count() or 1)
    images = args.steps * args.batch
    out = {
        "impl": "jssl",
        "method": "input",
        "backend": f"{args.backend}+pillow",
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
    if args.other_backend:
        o = statistics.median(times[other])
        out.update(
            other_backend=other,
            other_img_per_s=round(images / o, 1),
            other_img_per_s_per_core=round(images / o / cores, 1),
            ratio_vs_other=round(o / s, 3),
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
    cropper = (
        GrainCrops(tuple(specs), args.seed, args.workers)
        if args.backend == "grain"
        else HostCropper(specs, seed=args.seed, workers=args.workers)
    )
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
