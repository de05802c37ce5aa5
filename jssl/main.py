"""Command line: `python -m jssl.main --config configs/<method>.py[:<preset>] --workdir DIR`.

Fields are overridden with `--config.<field>=<value>` (ml_collections config flags). Every
user mistake (a missing config file, an unknown preset or field, an impossible value, a
workdir that is a file or holds another experiment) ends the run before any work with one
line on stderr and exit status 2; no traceback.

`python -m jssl.main --mode=eval --workdir DIR` re-evaluates a run with the config it was
trained with (no --config needed). Several processes (hosts, or processes on one machine,
see launch/local_multiprocess.sh) form one run with `--coordinator_address host:port
--num_processes N --process_id i`, the same command otherwise; on a TPU VM and under srun
JAX reads these from the environment.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config: configs/<method>.py or configs/<method>.py:<preset>.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval"],
    "train: train (resuming if the workdir holds this run) and evaluate; "
    "eval: only evaluate the workdir's latest checkpoint (without --config: with "
    "the config the run in --workdir was trained with).",
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: host:port of process 0 (jax.distributed), given with "
    "--num_processes and --process_id. On a TPU VM and in a multi-task SLURM "
    "step all three are read from the environment instead.",
)
flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's id, 0 .. N-1.")

EXIT_USAGE = 2
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request after a checkpoint; run again to resume
EXIT_STORAGE = 74  # EX_IOERR: a checkpoint could not be written (full disk, quota, ...)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    first = " ".join(str(message).split("\n")[0].split()) or "invalid arguments"
    print(f"jssl: error: {first}", file=sys.stderr)
    sys.exit(code)


def _parse(argv: list[str]):
    # main() may run more than once in a process (tests, notebooks): forget the last parse,
    # and the override flags (--config.<field>) the config flag defined for its file.
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if n.startswith("config.")]:
        delattr(FLAGS, name)
    try:
        FLAGS(argv)
        if FLAGS.config is not None:
            FLAGS.config.to_dict()  # config_flags defers some load errors to first use
    except flags.UnrecognizedFlagError as e:
        if e.flagname.startswith("config.") and _config_arg(argv) == "?":
            _fail(
                f"--{e.flagname} overrides a field of --config, which is missing; give "
                "--config configs/<method>.py[:<preset>] too"
            )
        _fail(f"unknown flag --{e.flagname}; config fields are set as --config.<field>=<value>")
    except Exception as e:  # noqa: BLE001 - every parse error becomes one line
        _fail(_explain(e, argv))
    if FLAGS.config is None and FLAGS.mode != "eval":
        _fail("--config is required, e.g. --config configs/barlow_twins.py")
    if not FLAGS.workdir:
        _fail("--workdir is required, e.g. --workdir runs/barlow")
    return FLAGS.config, FLAGS.workdir


def _start_processes() -> None:
    """jax.distributed, before any JAX computation (jssl.parallel.initialize_distributed).
    jssl.parallel imports jax: imported here, after the flags parsed (see main)."""
    from jssl import parallel

    try:
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except ValueError as e:  # a wrong flag
        _fail(str(e))
    except RuntimeError as e:  # e.g. the coordinator did not answer in time
        _fail(f"jax.distributed start-up failed: {e}", code=1)


def _config_arg(argv) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"


def _explain(e: Exception, argv: list[str]) -> str:
    """One line for an error from parsing the flags or loading the config file."""
    text = " ".join(str(e).split())
    config_arg = _config_arg(argv)
    if "ConfigError: " in text:  # raised by get_config (e.g. an unknown preset)
        return text.rsplit("ConfigError: ", 1)[1]
    if "No such file or directory" in text or "Failed loading config file" in text:
        path = config_arg.split(":", 1)[0]
        return (
            f"--config {config_arg}: config file {path} not found; use "
            "configs/<method>.py[:<preset>]"
        )
    if isinstance(e, (AttributeError, KeyError)) or "AttributeError" in text:
        found = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(e.args[0]) if e.args else "")
        name = found[0] if found else "?"
        hint = re.search(r'Did you mean "([^"]+)"', text)
        for a in argv:
            if a.startswith("--config.") and name in a.split("=", 1)[0].split("."):
                field = a.split("=", 1)[0][len("--config.") :]
                fix = f"did you mean {hint.group(1)!r}?" if hint else "check the spelling"
                return f"--config.{field}: no field {name!r} in {config_arg}; {fix}"
        return f"--config {config_arg}: no field {name!r}"
    if text.startswith("flag --config"):
        return text[len("flag ") :]
    return f"--config {config_arg}: {type(e).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """The command line; `argv` (default sys.argv) starts with the program name. Errors exit
    (SystemExit) with status 2 after one line on stderr."""
    argv = list(sys.argv if argv is None else argv)
    saved, sys.argv = sys.argv, argv  # the config flag reads its overrides from sys.argv
    try:
        return _main(argv)
    finally:
        sys.argv = saved


def _main(argv: list[str]) -> int:
    config, workdir = _parse(argv)
    _start_processes()

    # jax and the library after the flags are known to be good: a mistyped flag is one line
    # in a fraction of a second, without loading them.
    import jax

    from jssl import checkpoint, studies, train
    from jssl.errors import ConfigError, DataError, Stopped, StorageError

    try:
        if config is None:  # --mode=eval --workdir DIR: the run's own config
            config = checkpoint.saved_config(workdir)
        if config.get("study"):  # several runs compared (e.g. configs/fkt.py:compare)
            if FLAGS.mode == "eval":
                _fail(
                    "--mode=eval evaluates one run; give the --workdir of one of the "
                    "study's runs (its sub-directories)"
                )
            results = studies.run(config, workdir)
        elif FLAGS.mode == "eval":
            results = train.evaluate_workdir(config, workdir)
        else:
            results = train.train_and_evaluate(config, workdir)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    except FloatingPointError as e:
        _fail(str(e), code=1)
    except StorageError as e:
        # The line, then exit at once: orbax's writer threads still hold the failed write,
        # and the interpreter's shutdown would print their tracebacks after the line.
        # Nothing is left to save (the checkpoints were closed, metrics are flushed per row).
        sys.stdout.flush()
        err = os.dup(2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # those threads print nowhere from now
        # One write, on a line of its own (a thread may have left a partial line).
        os.write(err, f"\njssl: error: {' '.join(str(e).split())}\n".encode())
        os._exit(EXIT_STORAGE)
    except Stopped as e:
        print(f"jssl: {e}", file=sys.stderr)
        sys.exit(EXIT_STOPPED)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        _fail("interrupted; the last checkpoint is kept: run the same command to resume", code=130)
    if jax.process_index() != 0:  # every process has the results; one prints them
        return 0
    if config.get("study"):
        print(
            json.dumps(
                {"workdir": workdir, "study": config.study, "verdict": results.get("verdict")},
                indent=1,
            )
        )
        return 0
    summary = {
        "workdir": workdir,
        "final_step": results.get("final_step"),
        "eval": results.get("eval"),
        "random_init_eval": results.get("random_init_eval"),
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
