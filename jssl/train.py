"""The one training loop every method uses.

Read top to bottom: set-up and validation (nothing is written before all checks pass),
data, model and optimizer (shapes from `jax.eval_shape`, state born replicated), restore,
the jitted step, the loop (metrics, checkpoints, evaluation), final evaluation.

Resume order: the workdir's experiment.json is checked against the config, the latest
complete orbax step is restored into the replicated shardings, the loop continues at
`state.step`; batches and augmentation keys are functions of (seed, step), so the resumed
run computes exactly what the uninterrupted one would have.

Multi-process: every process runs this same code on the same global arrays (after
`parallel.initialize_distributed`); each reads only its rows of every batch, orbax writes
checkpoints collectively, and only process 0 writes metrics, plots, config.json and
results.json.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils

import jssl
from jssl import checkpoint, evaluate, io, methods, models, parallel, paths, plots
from jssl.checkpoint import CONFIG_FILE
from jssl.config import validate
from jssl.data import pipeline, sources
from jssl.data.crops import HostCropper, default_workers
from jssl.errors import ConfigError, Stopped
from jssl.metric_writer import EVAL_FILE, MetricWriter

__all__ = [
    "train_and_evaluate",
    "evaluate_workdir",
    "run_steps",
    "finished_results",
    "known_names",
    "RESULTS_FILE",
    "CONFIG_FILE",
]

RESULTS_FILE = "results.json"


def known_names(config: ml_collections.ConfigDict) -> dict:
    """Names config fields may take (checked by jssl.config.validate, in this order)."""
    known = {"method": list(methods.REGISTRY), "model.backbone": list(models.BACKBONES)}
    names = methods.loss_names(config.method)
    if names:
        known["loss.name"] = names
    return known


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None):
    """Every check that can fail on user input, before anything is written."""
    validate(config, len(devices) if devices else jax.device_count(), known=known_names(config))
    methods.validate(config)
    if config.batch_size % jax.process_count():
        raise ConfigError(
            f"config.batch_size: {config.batch_size} is not divisible by the "
            f"{jax.process_count()} processes"
        )
    resume = checkpoint.check_workdir(workdir, config)
    source = sources.config_source(config, config.data.train_split)
    if len(source) < config.batch_size:
        raise ConfigError(
            f"config.batch_size: {config.batch_size} is larger than the "
            f"{len(source)} examples of {config.data.name}:{config.data.train_split}"
        )
    ev = config.eval
    bank = len(sources.config_source(config, ev.train_split))
    if ev.max_examples:
        bank = min(bank, ev.max_examples)
    if ev.knn_k > bank:
        raise ConfigError(
            f"config.eval.knn_k: {ev.knn_k} is larger than the k-NN bank, the {bank} "
            f"examples of {config.data.name}:{ev.train_split}"
            + (f" capped by eval.max_examples={ev.max_examples}" if ev.max_examples else "")
            + f"; use at most {bank}"
        )
    return source, resume


class _Run:
    """What training and evaluation of one experiment share: mesh, method, state, checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        self.source, self.resume = setup(config, workdir, devices)
        self.mesh = parallel.make_mesh(devices)
        self.repl = parallel.replicated(self.mesh)
        self.data_sharding = parallel.batch_sharding(self.mesh)
        data_info = methods.DataInfo(
            num_classes=self.source.num_classes, image_shape=self.source.image_shape
        )
        self.method = methods.build(config, data_info, self.mesh)
        # Each view's random resized crop cut on the host (images of varying size) or not.
        self.crop_specs = pipeline.crop_specs(config, self.source, self.method.host_views)
        if (
            self.crop_specs is None
            and getattr(self.source, "variable_size", False)
            and jax.process_index() == 0
        ):
            print(
                f"data: {config.data.name} has images of varying size; the {config.method} "
                f"method crops them on the device, from their centre {config.data.image_size} "
                "px view (data.crop_pct)",
                flush=True,
            )
        # Shapes first; parameters are born replicated.
        self.rng = jax.random.PRNGKey(config.seed)
        abstract = jax.eval_shape(self.method.init, self.rng)
        self.abstract = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.repl), abstract
        )
        # parallel.jit: jax.jit whose first execution waits for every process (see there).
        self.init_fn = parallel.jit(self.method.init, out_shardings=self.repl)
        self.embed_fn = parallel.jit(
            self.method.embed,
            in_shardings=(self.repl, self.data_sharding),
            out_shardings=self.data_sharding,
        )
        self.predict_fn, self.probe_fn = (
            None
            if fn is None
            else parallel.jit(
                fn, in_shardings=(self.repl, self.data_sharding), out_shardings=self.data_sharding
            )
            for fn in (self.method.predict, self.method.probe)
        )

    def restore_or_init(self, ckpt: checkpoint.Checkpointer):
        """The newest checkpoint that restores (damaged ones are moved aside with a line
        each), else the initial state."""
        state, _ = ckpt.restore_latest(self.abstract)
        return self.init_fn(self.rng) if state is None else state

    def evaluate(self, state, config, *, online_probe: bool = True) -> dict:
        out = evaluate.evaluate_encoder(self.method, self.embed_fn, state, config, self.mesh)
        if self.predict_fn is not None:
            out.update(evaluate.evaluate_classifier(self.predict_fn, state, config, self.mesh))
        if self.probe_fn is not None and online_probe:
            out.update(evaluate.evaluate_online_probe(self.probe_fn, state, config, self.mesh))
        return out

    def random_init_eval(self, config) -> dict:
        initial = self.init_fn(self.rng)  # the very weights training started from
        initial = evaluate.calibrate_batch_stats(
            self.method, initial, self.source, config, self.mesh
        )
        # The online probe is trained alongside the pretext: at initialisation it is zeros.
        return self.evaluate(initial, config, online_probe=False)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
    """Evaluate the latest checkpoint of a finished (or interrupted) run; rewrite results.json."""
    run = _Run(config, workdir, devices)
    if not run.resume:
        raise ConfigError(
            f"--workdir {workdir} holds no checkpoint of this experiment; "
            "train first (--mode=train)"
        )
    with _workdir_lock(workdir):
        return _evaluate_workdir(run, config, workdir)


def _evaluate_workdir(run: _Run, config: ml_collections.ConfigDict, workdir: str) -> dict:
    ckpt = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
    state, _ = ckpt.restore_latest(run.abstract)
    ckpt.close()
    if state is None:
        raise ConfigError(
            f"--workdir {workdir}: no checkpoint restores (each was moved aside as "
            "<step>.damaged); train again (--mode=train)"
        )
    final_step = int(jax.device_get(state.step))
    # The training record of the run's own results.json stays (times, resume, compilations)
    # when it describes this checkpoint's step; the evaluation is replaced.
    path = os.path.join(workdir, RESULTS_FILE)
    previous = io.read_json(path) if paths.exists(path) else {}
    same_step = previous.get("final_step") == final_step
    results = {k: v for k, v in previous.items() if same_step and k in TRAINING_RECORD}
    results.update(
        workdir=workdir,
        final_step=final_step,
        eval=run.evaluate(state, config),
        environment=environment(),
    )
    if config.eval.random_init_baseline:
        results["random_init_eval"] = run.random_init_eval(config)
    if config.plots:
        writer = MetricWriter(workdir, resume_step=results["final_step"])
        _plots(run, state, config, workdir, writer, results["final_step"])
        writer.close()
    _write_results(workdir, results)
    return results


def finished_results(workdir: str, config: ml_collections.ConfigDict | None = None) -> dict | None:
    """The results.json of a finished run in `workdir` (trained to `config.total_steps`,
    when a config is given, and evaluated), else None: the one rule of "is this run done"
    that the studies and the results table use to reuse a run."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not paths.exists(path):
        return None
    results = io.read_json(path)
    if "eval" not in results:
        return None
    if config is not None and results.get("final_step") != config.total_steps:
        return None
    return results


# Checked for finiteness on the device after every step (when the method logs them).
WATCHED = ("loss", "grad_norm", "param_norm")


@jax.jit
def _watch(record, step, metrics):
    """record = (first non-finite step per quantity, 0 = none yet; its value) updated with
    this step's `metrics` (the WATCHED ones, in that order): one tiny program, dispatched
    without waiting for the step. record None: the first step (the record is born here,
    laid out like the metrics, which on several processes are global arrays)."""
    values = jnp.stack([jnp.asarray(v, jnp.float32) for v in metrics])
    if record is None:
        record = (jnp.zeros(values.shape, jnp.int32), jnp.zeros_like(values))
    steps, firsts = record
    bad = ~jnp.isfinite(values) & (steps == 0)
    return jnp.where(bad, step, steps), jnp.where(bad, values, firsts)


def _check_finite(record, keys: tuple[str, ...]) -> None:
    """FloatingPointError (one line) naming the first non-finite quantity and its step."""
    steps, values = (np.asarray(a) for a in jax.device_get(record))
    if not steps.any():
        return
    first = int(steps[steps > 0].min())
    i = next(i for i, s in enumerate(steps) if s == first)  # in WATCHED order: loss first
    raise FloatingPointError(
        f"{keys[i]} is {float(values[i])} at step {first} (the first non-finite of "
        f"{', '.join(keys)}); {_DIVERGED_FIX}"
    )


# How to go on after divergence (the run's workdir is marked: checkpoint.record_divergence).
_DIVERGED_FIX = (
    "lower config.optimizer.lr (or check the data) and run again: on the same --workdir it "
    "restarts from its last checkpoint, which holds a finite state, or start in a new --workdir"
)


def run_steps(
    step_fn: Callable,
    state,
    batches,
    *,
    start_step: int,
    end_step: int,
    log_every: int,
    on_log: Callable[[int, dict], None] | None = None,
    after_step: Callable[[int, object], None] | None = None,
    progress=None,
    should_stop: Callable[[int, bool], bool] | None = None,
    check_at: Callable[[int], bool] | None = None,
):
    """The loop every training goes through: steps `start_step + 1 .. end_step` of
    `state, metrics = step_fn(state, batch)` over `batches(start_step, end_step)`.

    The step moves nothing between host and device (the batch is already a global array:
    an implicit transfer raises); the only host round-trip is the metrics every `log_every`
    steps and at the last, handed to `on_log(step, scalars)` with `steps_per_s`. The
    `WATCHED` metrics are checked for finiteness on the device after every step (no wait);
    the record is read at the logging steps and at the steps `check_at(step)` names (the
    checkpoints: a non-finite state is never saved), and the first non-finite quantity
    stops the loop with a FloatingPointError naming it and its step. `after_step(step,
    state)` runs after every step (checkpoints, evaluation). `should_stop(step, logged)`,
    asked after every step, ends the loop early when it says so. Returns the last state.
    """
    t_last, step_last = time.perf_counter(), start_step
    step = start_step
    record, keys = None, None
    stream = batches(start_step, end_step)
    try:
        for batch in stream:
            with jax.transfer_guard("disallow"):
                state, metrics = step_fn(state, batch)
            step += 1
            if keys is None:
                keys = tuple(k for k in WATCHED if k in metrics)
            if keys:
                record = _watch(record, np.int32(step), [metrics[k] for k in keys])
            if progress is not None:
                progress.update(1)
            logged = step % log_every == 0 or step == end_step
            if keys and (logged or (check_at is not None and check_at(step))):
                _check_finite(record, keys)
            if logged:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                scalars["steps_per_s"] = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                if not math.isfinite(scalars["loss"]):  # a method that logs no WATCHED
                    raise FloatingPointError(
                        f"loss is {scalars['loss']} at step {step}; {_DIVERGED_FIX}"
                    )
                if on_log is not None:
                    on_log(step, scalars)
                if progress is not None:
                    progress.set_postfix(loss=f"{scalars['loss']:.4f}")
            if after_step is not None:
                after_step(step, state)
            if should_stop is not None and step < end_step and should_stop(step, logged):
                if keys:  # the caller checkpoints this state next
                    _check_finite(record, keys)
                break
    finally:
        if hasattr(stream, "close"):  # a generator left early: stop its prefetch now
            stream.close()
    return state


class StopRequests:
    """SIGTERM and SIGINT (Ctrl-C) handlers that ask the loop to stop after the current step.

    Installed for the duration of a `with` block in the main thread (elsewhere signals
    cannot be caught and nothing is installed). The first signal is recorded and the
    previous handlers are put back, so a second one acts at once (Ctrl-C twice: stop now).
    On one process the loop stops after the step during which the signal came; on several,
    every process stops at the same step: they agree at the next logging step, where they
    synchronise for the metrics anyway (`requested`).
    """

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self._restore()

    def _restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()

    def requested(self, step: int, logged: bool) -> bool:
        if jax.process_count() == 1:
            return self.signal is not None
        if not logged:
            return False
        flags = multihost_utils.process_allgather(np.asarray([self.signal is not None]))
        return bool(np.any(flags))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
    """Train `config` in `workdir` (resuming if it holds this experiment), evaluate, return results.

    `devices` (default: all devices of all processes) are the mesh the step runs on.
    """
    run = _Run(config, workdir, devices)
    with _workdir_lock(workdir):
        return _train_and_evaluate(run, config, workdir)


def _workdir_lock(workdir: str):
    """The workdir's run lock on process 0 (checkpoint.WorkdirLock); nothing elsewhere."""
    if jax.process_index() == 0:
        return checkpoint.WorkdirLock(workdir)
    return contextlib.nullcontext()


def _train_and_evaluate(run: _Run, config: ml_collections.ConfigDict, workdir: str) -> dict:
    mesh, repl, data_sharding, method = run.mesh, run.repl, run.data_sharding, run.method
    is_main = jax.process_index() == 0
    ckpt = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
    if is_main:
        io.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    state = run.restore_or_init(ckpt)
    start_step = int(jax.device_get(state.step))

    # --- The step: one jit over the mesh, state donated. ---
    step_fn = parallel.jit(
        method.train_step,
        in_shardings=(repl, data_sharding),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
    cropper = None
    if run.crop_specs is not None:
        workers = config.data.workers or default_workers()
        if config.data.backend == "grain":
            cropper = pipeline.GrainCrops(tuple(run.crop_specs), config.seed, workers)
        else:
            cropper = HostCropper(run.crop_specs, seed=config.seed, workers=workers)
    if method.batches is not None:
        batches = method.batches(run.source, mesh, **({"cropper": cropper} if cropper else {}))
    else:
        batches = pipeline.TrainBatches(
            run.source, batch_size=config.batch_size, seed=config.seed, mesh=mesh, cropper=cropper
        )
    writer = MetricWriter(workdir, resume_step=start_step)
    results = {"workdir": workdir, "resumed_from_step": start_step}

    progress = None
    if is_main and config.progress and start_step < config.total_steps:
        # "compiling" until the first step is done (XLA compiles it then), "evaluating"
        # while the evaluation during training runs.
        progress = tqdm.tqdm(
            total=config.total_steps,
            initial=start_step,
            desc="train (compiling)",
            unit="step",
            dynamic_ncols=True,
        )

    def after_step(step, state):
        if progress is not None and step == start_step + 1:
            progress.set_description("train")
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            ckpt.save(step, state)
        if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
            if progress is not None:
                progress.set_description("train (evaluating)")
            writer.write(step, _eval_scalars(run.evaluate(state, config)), file=EVAL_FILE)
            if progress is not None:
                progress.set_description("train")

    train_start = time.perf_counter()
    try:
        with StopRequests() as stops:
            state = run_steps(
                step_fn,
                state,
                batches,
                start_step=start_step,
                end_step=config.total_steps,
                log_every=config.log_every,
                on_log=writer.write,
                after_step=after_step,
                progress=progress,
                should_stop=stops.requested,
                check_at=lambda step: (
                    step % config.checkpoint_every == 0 or step == config.total_steps
                ),
            )
            step = int(jax.device_get(state.step))
            if step < config.total_steps:  # stopped on request: checkpoint this step first
                if step % config.checkpoint_every:
                    ckpt.save(step, state)
                ckpt.close()
                writer.close()
                raise Stopped(
                    f"stopped by {stops.signal or 'a signal on another process'} after step "
                    f"{step} of {config.total_steps}; checkpoint {step} saved: run the same "
                    "command to resume"
                )
    except FloatingPointError as e:
        checkpoint.record_divergence(workdir, str(e))  # may restart with a lower lr
        raise
    finally:
        if progress is not None:
            progress.close()
        if cropper is not None:
            cropper.close()
        ckpt.close()
    results["train_time_s"] = time.perf_counter() - train_start
    results["environment"] = environment()
    results["train_step_compilations"] = step_fn._cache_size()
    results["final_step"] = int(jax.device_get(state.step))

    # --- Final evaluation, and the same architecture at its random initialisation. ---
    if is_main and config.progress:
        print("jssl: evaluating (k-NN, linear probe)", file=sys.stderr, flush=True)
    results["eval"] = run.evaluate(state, config)
    writer.write(results["final_step"], _eval_scalars(results["eval"]), file=EVAL_FILE)
    if config.eval.random_init_baseline:
        results["random_init_eval"] = run.random_init_eval(config)
    _plots(run, state, config, workdir, writer, results["final_step"])
    writer.close()
    _write_results(workdir, results)
    return results


def _plots(run: _Run, state, config, workdir: str, writer: MetricWriter, step: int) -> None:
    """curves.png, lr.png, features.png into the workdir and TensorBoard (jssl.plots).

    Feature extraction is collective (every process takes part); drawing is process 0's.
    Plots are a by-product: a failure is one warning line, never a failed run.
    """
    if not config.plots:
        return
    is_main = jax.process_index() == 0
    if not plots.available(warn=is_main):
        return
    features = labels = None
    if plots.can_embed(warn=is_main):
        test = sources.config_source(config, config.eval.test_split)
        features, labels = evaluate.extract_features(
            run.embed_fn,
            state,
            test,
            batch_size=config.eval.batch_size,
            mesh=run.mesh,
            max_examples=plots.MAX_POINTS,
        )
    if not is_main:
        return
    try:
        plots.write_plots(
            workdir, config, features=features, labels=labels, writer=writer, step=step
        )
    except Exception as e:  # noqa: BLE001 - see the docstring
        print(f"jssl: warning: plots failed ({type(e).__name__}: {e})", file=sys.stderr)


def _eval_scalars(ev: dict) -> dict:
    return {f"eval/{k}": v for k, v in ev.items() if isinstance(v, float)}


# Fields of results.json that describe the training, kept by --mode=eval.
TRAINING_RECORD = ("resumed_from_step", "train_time_s", "train_step_compilations")


def source_version() -> dict:
    """{"commit": the git commit of the jssl source that ran ("+dirty" when it has
    uncommitted changes; None outside a git checkout), "jssl": the package version}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(jssl.__file__)))
    commit = None
    try:
        run = functools.partial(
            subprocess.run, cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        if run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip():
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": commit, "jssl": jssl.__version__}


def environment() -> dict:
    """What a number depends on besides the config: device kind and count, process count,
    backend, the versions of jax, jaxlib, flax, optax and jssl, and the git commit."""
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        **source_version(),
    }


def _write_results(workdir: str, results: dict) -> None:
    if jax.process_index() == 0:
        io.write_json(os.path.join(workdir, RESULTS_FILE), results)
