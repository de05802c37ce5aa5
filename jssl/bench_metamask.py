"""MetaMask step benchmark: `python -m jssl.bench --method metamask --modes exact,...`.

Times, in one process and alternating block by block (`--repeats` blocks of `--steps` timed
steps after `--warmup`), the full MetaMask step (network update, then the mask's meta update
through `mask_hypergradient`) for each hypergradient mode of `--modes`, and the base step:
the same network and losses without the mask's meta update (`metamask.enabled=False`).
Steps run on device-resident augmented views, as `jssl.bench.bench_pretrain` does.

Keys: `step_s_median` (the exact mode), `base_step_s_median`, `step_s_median_<mode>` for
every mode, `ratio_<mode>` (mode / base, medians of the same run) and `compile_s_<variant>`.
`xla_cost_flops_<variant>` is XLA's cost analysis of each compiled step (every dot and
convolution it runs, the tapped convolution's matmuls included) and `flop_ratio_<mode>`
the mode's over the base step's: the time ratio a step would have if every FLOP cost the
same, to read `ratio_<mode>` against.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from jssl import methods, parallel
from jssl.bench import _flops, _time_steps, sized_config
from jssl.methods import metamask

__all__ = ["bench", "metamask_bench_config"]


def metamask_bench_config(args, *, mode: str = "exact", enabled: bool = True):
    """configs/metamask.py (default preset) sized by the common bench flags."""
    c = sized_config(args)  # args.method is "metamask"
    c.model.projector_hidden_dims = (args.proj, args.proj)
    c.model.projector_dim = args.proj
    c.model.contrastive_hidden_dims = (args.proj,)
    c.model.contrastive_dim = 256  # the official contrastive head's output
    c.optimizer.schedule = "constant"  # the step's cost does not depend on the schedule
    c.total_steps = args.steps + args.warmup
    c.metamask.mode = mode
    c.metamask.enabled = enabled
    return c


def bench(args) -> dict:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in metamask.MODES]
    if unknown or not modes:
        raise SystemExit(
            f"jssl.bench: --modes {args.modes!r}: choose from {', '.join(metamask.MODES)}"
        )
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    info = methods.DataInfo(num_classes=10, image_shape=(args.image_size, args.image_size, 3))
    rng = np.random.default_rng(args.seed)
    images = rng.integers(
        0, 256, size=(args.batch, args.image_size, args.image_size, 3), dtype=np.uint8
    )
    images = jax.device_put(images, data)

    variants = {"base": metamask_bench_config(args, enabled=False)}
    variants.update({m: metamask_bench_config(args, mode=m) for m in modes})
    out = {
        "impl": "jssl",
        "method": "metamask",
        "backbone": args.backbone,
        "width": args.width,
        "stem": args.stem,
        "batch": args.batch,
        "image_size": args.image_size,
        "proj": args.proj,
        "dtype": args.dtype,
        "modes": modes,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "jax": jax.__version__,
    }
    runners = {}
    batch = {"image": images}
    for name, config in variants.items():
        method = metamask.build(config, info)
        state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
        views = jax.jit(method.make_inputs, in_shardings=(repl, data), out_shardings=data)(
            state, batch
        )
        fn = jax.jit(
            method.update, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0
        )
        t = time.perf_counter()
        fn = fn.lower(state, views).compile()
        out[f"compile_s_{name}"] = round(time.perf_counter() - t, 3)
        flops = _flops(fn)
        if flops:
            out[f"xla_cost_flops_{name}"] = flops
        runners[name] = [fn, state, views]

    times = {name: [] for name in runners}
    for _ in range(args.repeats):  # alternate the variants block by block
        for name, r in runners.items():
            r[1], ts = _time_steps(r[0], r[1], r[2], steps=args.steps, warmup=args.warmup)
            times[name].extend(ts)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    out["base_step_s_median"] = round(med["base"], 4)
    for m in modes:
        out[f"step_s_median_{m}"] = round(med[m], 4)
        out[f"ratio_{m}"] = round(med[m] / med["base"], 3)
        if f"xla_cost_flops_{m}" in out and "xla_cost_flops_base" in out:
            out[f"flop_ratio_{m}"] = round(
                out[f"xla_cost_flops_{m}"] / out["xla_cost_flops_base"], 3
            )
    if "exact" in modes:
        out["step_s_median"] = out["step_s_median_exact"]
        out["ratio"] = out["ratio_exact"]
    out["img_per_s_base"] = round(args.batch / med["base"], 2)
    return out
