"""Orbax checkpoints in the workdir, guarded against mixing experiments.

Layout of a workdir:
  experiment.json   the config fields that identify the experiment (jssl.config)
  config.json       the whole config the run was last started with (run-control fields too)
  checkpoints/<step>/   orbax CheckpointManager steps (the last `keep` are kept)

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed at any moment (kill -9 included) leaves the earlier steps intact and resumes from
the last complete one. A complete-looking step that does not restore (a file truncated or
lost afterwards) is moved aside to `checkpoints/<step>.damaged` and the next older step is
restored instead (`Checkpointer.restore_latest`). Before a manager is ever created on a
workdir, `check_workdir` compares the experiment fields: a workdir that holds another
experiment is refused and nothing in it is touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jssl import io, paths
from jssl.config import base_config, experiment_fields, from_flat, from_nested
from jssl.errors import ConfigError, StorageError

__all__ = [
    "check_workdir",
    "Checkpointer",
    "load_backbone",
    "restore_host",
    "saved_config",
    "EXPERIMENT_FILE",
    "CONFIG_FILE",
    "CHECKPOINT_DIR",
    "LOCK_FILE",
    "DIVERGED_FILE",
    "RESTART_FIELDS",
    "record_divergence",
    "WorkdirLock",
]

EXPERIMENT_FILE = "experiment.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DIVERGED_FILE = "diverged.json"  # a run stopped by divergence (removed by its next checkpoint)

# The optimisation fields a run stopped by divergence may be restarted with: values inside
# the same optimizer state tree, so its last (finite) checkpoint restores into the new
# optimizer. optimizer.name and switching clipping on or off change that tree: refused.
RESTART_FIELDS = (
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.weight_decay",
    "optimizer.trust_coefficient",
    "optimizer.warmup_steps",
    "optimizer.schedule",
    "optimizer.scale_lr_with_batch",
    "optimizer.clip_grad_norm",
)


def _differences(old: dict, new: dict, limit: int = 3) -> str:
    keys = sorted(set(old) | set(new))
    diff = [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]
    more = f" (+{len(diff) - limit} more)" if len(diff) > limit else ""
    return "; ".join(diff[:limit]) + more


def _to_stderr(line: str) -> None:
    """Where the one-line notices of this module go unless a caller says otherwise."""
    print(line, file=sys.stderr, flush=True)


def check_workdir(workdir: str, config, *, say=None) -> bool:
    """Validate `workdir` for this config; return True when it holds a run to resume.

    A workdir belongs to an experiment once it holds a checkpoint: before that (a start that
    failed or was stopped before its first checkpoint) any config may start there. A run
    with checkpoints is resumed by the same experiment only, with two exceptions, each after
    a one-line notice through `say`: a larger `total_steps` extends it, and a run stopped by
    divergence (`DIVERGED_FILE`, written by `record_divergence`) may restart with other
    values of the `RESTART_FIELDS` (a lower learning rate). Either way it continues from its
    last checkpoint with the new values (the schedule follows them from there on, so the
    result is not bit-identical to a run started with them). Raises ConfigError (one line)
    when the workdir is a file, is not writable, or holds a different experiment. Writes
    nothing.
    """
    say = say or _to_stderr
    if paths.exists(workdir) and not paths.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    exp_path = os.path.join(workdir, EXPERIMENT_FILE)
    ckpt_path = os.path.join(workdir, CHECKPOINT_DIR)
    has_checkpoints = paths.isdir(ckpt_path) and any(
        name.isdigit() for name in paths.listdir(ckpt_path)
    )
    if not has_checkpoints:  # nothing of a run here yet: nothing to match
        _check_writable(workdir)
        _check_writable(ckpt_path)
        return False
    if not paths.exists(exp_path):
        raise ConfigError(
            f"--workdir {workdir} holds checkpoints but no {EXPERIMENT_FILE}; "
            "it is not a jssl run of this version: choose a new --workdir"
        )
    try:
        with paths.open_file(exp_path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"--workdir {workdir}: cannot read {exp_path} ({e}); choose a new --workdir"
        ) from None
    new = json.loads(json.dumps(experiment_fields(config)))
    if old != new:
        _accept_changes(workdir, old, new, say)
    _check_writable(workdir)
    _check_writable(ckpt_path)
    return has_checkpoints


def _accept_changes(workdir: str, old: dict, new: dict, say) -> None:
    """The changed experiment fields that may continue a run (notice), else ConfigError.
    A field the run's experiment.json lacks and this config has at its default is no
    change: a newer jssl added it with the behaviour the run had."""
    defaults = json.loads(json.dumps(experiment_fields(base_config())))
    changed = {
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k) and not (k not in old and new.get(k) == defaults.get(k))
    }
    if not changed:
        return
    grows = "total_steps" not in changed or (
        isinstance(old.get("total_steps"), int) and new["total_steps"] > old["total_steps"]
    )
    diverged = _read_divergence(workdir)
    clip = "optimizer.clip_grad_norm"
    same_tree = bool(old.get(clip)) == bool(new.get(clip))
    if grows and changed == {"total_steps"}:
        notice = (
            f"jssl: extending the run in {workdir} from total_steps={old['total_steps']} "
            f"to {new['total_steps']}: it continues from its last checkpoint with the "
            "learning-rate schedule of the new total (not bit-identical to a run started "
            "with it)"
        )
    elif diverged and grows and same_tree and changed <= {"total_steps", *RESTART_FIELDS}:
        notice = (
            f"jssl: the run in {workdir} stopped by divergence ({diverged}); restarting it "
            f"from its last checkpoint with {_differences(old, new, limit=len(changed))} "
            "(not bit-identical to a run started with these values)"
        )
    else:
        hint = "use a new --workdir, or the same config to resume (only total_steps may grow)"
        if diverged:
            hint = (
                "this run stopped by divergence: it may restart here with other values of "
                f"{', '.join(f.split('.')[-1] for f in RESTART_FIELDS)} in config.optimizer "
                "(clipping not switched on or off) and a total_steps that does not shrink; "
                "anything else needs a new --workdir"
            )
        raise ConfigError(
            f"--workdir {workdir} holds a different experiment ({_differences(old, new)}); " + hint
        )
    if jax.process_index() == 0:
        say(notice)


def record_divergence(workdir: str, message: str) -> None:
    """Mark the run in `workdir` as stopped by divergence (`message`: what diverged, and
    where): it may then restart with other optimisation fields (`check_workdir`). The
    mark goes with the restarted run's first checkpoint. Process 0 writes it."""
    if jax.process_index() == 0 and paths.isdir(workdir):
        io.write_json(os.path.join(workdir, DIVERGED_FILE), {"reason": message})


def _read_divergence(workdir: str) -> str | None:
    """What diverged (the first clause of the recorded message), or None."""
    path = os.path.join(workdir, DIVERGED_FILE)
    try:
        reason = io.read_json(path)["reason"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(reason).split(" (the first")[0].split(";")[0]


def _check_writable(workdir: str) -> None:
    """Probe with a temporary directory in `workdir` (or a checkpoint directory) or its
    nearest existing ancestor (permission bits alone say nothing for root or read-only
    file systems). On an object store, a probe object written and removed at `workdir`."""
    if paths.is_remote(workdir):
        probe = os.path.join(paths.abspath(workdir), ".jssl-probe")
        try:
            io.write_text(probe, "")
            paths.remove(probe)
        except Exception as e:  # the backends raise many types (permissions, no bucket)
            raise ConfigError(
                f"--workdir {workdir} is not writable ({_one_line(e, 160)}); choose a writable path"
            ) from None
        return
    parent = os.path.abspath(workdir)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ConfigError(f"{parent} is a file, not a directory: remove or rename it")
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".jssl-probe-", dir=parent))
    except OSError as e:
        raise ConfigError(
            f"--workdir {workdir} is not writable ({e.strerror} in {parent}); "
            "choose a writable path"
        ) from None


class Checkpointer:
    """An orbax CheckpointManager for the TrainState of one experiment."""

    def __init__(self, workdir: str, config, *, keep: int):
        self.workdir = workdir
        # The experiment's fields, written to experiment.json with the first save.
        self._fields = json.loads(json.dumps(experiment_fields(config)))
        self._fields_written = False
        if jax.process_index() == 0:
            paths.makedirs(workdir)
        self.manager = ocp.CheckpointManager(
            paths.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, abstract_state, *, say=None):
        """(state, step) from the newest checkpoint that restores, or (None, None).

        A checkpoint that does not restore (a missing or truncated file, a step directory
        orbax cannot read, a tree that does not match `abstract_state`) is reported in one
        line, moved aside to `checkpoints/<step>.damaged` (never deleted: nothing is lost)
        and the next older one is tried; when none restores, that is said too and the
        caller starts afresh. `say(line)`: where the lines go (default: stderr). Every
        process takes the same decision (a step counts as restored only if it did on all).
        """
        say = say or _to_stderr
        tried = False
        for step in sorted(self.manager.all_steps(), reverse=True):
            tried = True
            error = None
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # orbax and tensorstore raise many types for a bad file
                state, error = None, e
            if _all_processes(error is None):
                return state, step
            reason = _one_line(error) if error is not None else "failed on another process"
            path = os.path.join(self.manager.directory, str(step))
            moved = _move_aside(path) if jax.process_index() == 0 else path + ".damaged"
            _sync(f"jssl-damaged-{step}")
            self.manager.reload()
            if jax.process_index() == 0:
                say(
                    f"jssl: checkpoint {path} does not restore ({reason}); moved to {moved}; "
                    "trying the next older one"
                )
        if tried and jax.process_index() == 0:
            say(f"jssl: no checkpoint in {self.manager.directory} restores; starting from step 0")
        return None, None

    def restore(self, abstract_state, step: int | None = None):
        """Restore into the shapes, dtypes and shardings of `abstract_state`."""
        step = self.manager.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def save(self, step: int, state) -> None:
        """Save `state` as step `step`. The experiment's fields go to experiment.json first
        (the workdir belongs to this experiment from its first checkpoint on; an extended or
        restarted run records its new fields). A restarted diverged run's mark
        (`DIVERGED_FILE`) goes once that first save is complete (a kill before leaves it).

        Storage: a save that would not fit in the free space is refused before anything is
        written; a write that fails anyway (the disk filled meanwhile, a quota, an I/O
        error; orbax reports it at the next save or at `close`) removes orbax's temporary
        step directory. Either is a `StorageError`, one line naming the directory, the free
        space and the step to resume from; the checkpoints saved before are intact.
        """
        first, self._fields_written = not self._fields_written, True
        need = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) * 1.1) + 2**20
        free = paths.free_bytes(self.directory)  # None on an object store: no check
        free = need if free is None else free
        if not _all_processes(free >= need):
            where = "" if free < need else " on another process's disk"
            self.close()  # the pending save completes first: the step to resume from
            raise StorageError(
                f"not enough space for checkpoint {step} in {self.directory}{where}: it "
                f"needs about {_mb(need)}, {_mb(free)} free here; {self._go_on()}"
            )
        try:
            if first and jax.process_index() == 0:
                exp_path = os.path.join(self.workdir, EXPERIMENT_FILE)
                if not paths.exists(exp_path) or io.read_json(exp_path) != self._fields:
                    io.write_json(exp_path, self._fields)
            self.manager.save(step, args=ocp.args.StandardSave(state))
            diverged = os.path.join(self.workdir, DIVERGED_FILE)
            if first and paths.exists(diverged):
                self.manager.wait_until_finished()
                if jax.process_index() == 0:
                    paths.remove(diverged)
        except Exception as e:  # orbax and tensorstore raise many types for a failed write
            raise self._write_failed(e) from None

    @property
    def directory(self) -> str:
        return paths.abspath(os.path.join(self.workdir, CHECKPOINT_DIR))

    def _go_on(self) -> str:
        """How to go on after a failed save."""
        kept = sorted(int(n) for n in paths.listdir(self.directory) if n.isdigit())
        resume = f"it resumes from checkpoint {kept[-1]}" if kept else "no checkpoint is kept"
        return f"free some space and run the same command ({resume})"

    def _write_failed(self, error: BaseException) -> StorageError:
        """Close the manager after a failed write, remove orbax's temporary step
        directories, and the one-line error to raise."""
        manager, self.manager = self.manager, None
        try:
            manager.close()
        except Exception:  # the same failure again, already being reported
            pass
        _sync("jssl-failed-save")
        if jax.process_index() == 0 and paths.isdir(self.directory):
            for name in paths.listdir(self.directory):
                if ".orbax-checkpoint-tmp" in name:
                    paths.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        free = paths.free_bytes(self.directory)
        free = "" if free is None else f"{_mb(free)} free there; "
        return StorageError(
            f"writing a checkpoint in {self.directory} failed ({_write_reason(error)}); "
            f"{free}{self._go_on()}"
        )

    def close(self) -> None:
        """Wait for pending saves and close (a second call does nothing). A pending save
        that failed is a `StorageError` (see `save`)."""
        if self.manager is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(e) from None
        self.manager.close()
        self.manager = None


def _write_reason(error: BaseException) -> str:
    """The operating system's reason for a failed write (tensorstore puts it at the end of a
    long message as os_error_code='N'), else the error's first 160 characters."""
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
        code = int(match.group(1))
        return f"{os.strerror(code)}, errno {code}"
    if isinstance(error, OSError) and error.errno:
        return f"{error.strerror}, errno {error.errno}"
    return _one_line(error, 160)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


LOCK_FILE = "run.lock"


class WorkdirLock:
    """One run per workdir: an exclusive `flock` on `<workdir>/run.lock`, held while the run
    lives, the file naming the holder (host, process id, start time).

    `acquire()` refuses (ConfigError, one line naming the other run) while another process
    holds the lock. A lock file whose holder is gone (killed: the kernel releases a dead
    process's locks) is stale: it is taken over, with a line that says so. `release()`
    empties the file. Local and NFSv4 file systems honour `flock`; on others the check is
    best effort. Only process 0 of a multi-process run takes it.

    On an object store (`gs://`) there is no lock to take: the file names the holder, and a
    non-empty one (another run, or one that was preempted, which a bucket cannot tell
    apart) gets a line naming it before this run takes over; keeping one run per bucket
    workdir is then the launcher's job (`launch/tpu_vm.sh` starts one).
    """

    def __init__(self, workdir: str, *, say=None):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.say = say or _to_stderr
        self._fd: int | None = None
        self._remote = False

    def acquire(self) -> "WorkdirLock":
        if paths.is_remote(self.path):
            return self._acquire_remote()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"--workdir {os.path.dirname(self.path)} is in use by another run "
                f"({self._describe()}); wait for it, stop it, or choose another --workdir"
            ) from None
        stale = self._describe() if os.path.getsize(self.path) else None
        if stale:
            self.say(f"jssl: taking over {self.path} left by a run that is gone ({stale})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_remote(self) -> "WorkdirLock":
        if paths.exists(self.path) and paths.getsize(self.path):
            self.say(
                f"jssl: {self.path} names another run ({self._describe()}); a bucket has no "
                "locks to tell whether it still runs: this run takes the workdir over"
            )
        io.write_text(self.path, json.dumps(_holder()))
        self._remote = True
        return self

    def _describe(self) -> str:
        try:
            with paths.open_file(self.path) as f:
                h = json.load(f)
            return f"host {h['host']}, pid {h['pid']}, started {h['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self._remote:
            io.write_text(self.path, "")
            self._remote = False
        if self._fd is None:
            return
        # Emptied, not removed (a removed file could be locked twice): an empty lock file
        # means "free", a non-empty one that is not locked means "left by a killed run".
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _holder() -> dict:
    """What a lock file says about the run holding it."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _move_aside(path: str) -> str:
    """Rename `path` to `path.damaged` (or .damaged.1, ...) and return the new name."""
    target, n = path + ".damaged", 0
    while paths.exists(target):
        n += 1
        target = f"{path}.damaged.{n}"
    if paths.exists(path):
        paths.rename(path, target)
    return target


def _all_processes(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    flags = multihost_utils.process_allgather(np.asarray([ok], np.int32))
    return bool(np.all(flags))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def restore_host(path: str, step: int | None = None) -> tuple[int, dict]:
    """(step, tree) of a checkpoint of the jssl workdir `path` (the latest when `step` is None)
    as NumPy arrays on the host, whatever mesh wrote it; read-only, nothing is written.

    Raises ConfigError (one line) when `path` holds no complete checkpoint.
    """
    ckpt_dir = paths.abspath(os.path.join(path, CHECKPOINT_DIR))
    if not paths.isdir(ckpt_dir):
        raise ConfigError(
            f"{path}: no {CHECKPOINT_DIR}/ here; give the --workdir of a finished jssl run"
        )
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns about read-only mode and unread items
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ConfigError(
                f"{path}: no complete checkpoint" + ("" if step is None else f" at step {step}")
            )
        meta = manager.item_metadata(step)
        meta = getattr(meta, "tree", meta)
        device = jax.local_devices(backend="cpu")[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), meta
        )
        tree = manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()
        absl_logger.setLevel(level)
    return step, jax.tree_util.tree_map(np.asarray, tree)


def load_backbone(path: str) -> tuple[dict, dict]:
    """(params, batch_stats) of the backbone in the latest checkpoint of the jssl workdir
    `path` (any method whose model has a "backbone"), as host arrays; nothing is written.

    Raises ConfigError (one line, naming config.model.init_from) when `path` holds no
    complete checkpoint or no backbone.
    """
    try:
        _, tree = restore_host(path)
    except ConfigError as e:
        raise ConfigError(f"config.model.init_from: {e}") from None
    params, stats = tree.get("params", {}), tree.get("batch_stats", {})
    if "backbone" not in params:
        raise ConfigError(
            f"config.model.init_from: the checkpoint in {path} has no backbone "
            f"(top-level parameters: {', '.join(sorted(params))})"
        )
    return params["backbone"], stats.get("backbone", {})


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of the run in `workdir` (for `--mode=eval` without `--config`, export,
    teachers): its config.json when there is one (written at every start of a run:
    run-control fields such as `eval.*` included); else experiment.json (every field that
    identifies the run) over `jssl.config.base_config()`, whose defaults then fill the
    run-control fields. Sequences come back as tuples, as the config files write them.
    ConfigError (one line) when the workdir holds neither or one cannot be read."""
    for name, flat in ((CONFIG_FILE, False), (EXPERIMENT_FILE, True)):
        path = os.path.join(workdir, name)
        if not paths.exists(path):
            continue
        try:
            saved = io.read_json(path)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{workdir}: cannot read {path} ({e}); give --config") from None
        return from_flat(saved, defaults=True) if flat else from_nested(saved)
    raise ConfigError(
        f"{workdir} holds no jssl run (no {EXPERIMENT_FILE}); give the --workdir "
        "of a run, or --config"
    )
