"""Command line: `python -m jssl.main --config configs/<method>.py[:<preset>] --workdir DIR`.

Fields are overridden with `--config.<field>=<value>` (ml_collections config flags). Every
user mistake (a missing config file, an unknown preset or field, an impossible value, a
workdir that is a file or holds another experiment) ends the run before any work with one
line on stderr and exit status 2; no traceback.
"""
from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/<method>.py or configs/<method>.py:<preset>.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming if the workdir holds this run) and evaluate; "
                  "eval: only evaluate the workdir's latest checkpoint.")

EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    first = " ".join(str(message).split("\n")[0].split()) or "invalid arguments"
    print(f"jssl: error: {first}", file=sys.stderr)
    sys.exit(code)


def _parse(argv: list[str]):
    try:
        FLAGS(argv)
    except flags.IllegalFlagValueError as e:  # unknown field, bad value type, missing file
        _fail(_explain_flag_error(e))
    except flags.UnrecognizedFlagError as e:
        _fail(f"unknown flag {e.flagname!r}; fields are set as --config.<field>=<value>")
    except flags.Error as e:
        _fail(str(e))
    except Exception as e:  # errors raised while loading the config file (get_config)
        _fail(f"--config {_config_arg(argv)}: {type(e).__name__}: {e}"
              if not _is_user_error(e) else str(e))
    if FLAGS.config is None:
        _fail("--config is required, e.g. --config configs/barlow_twins.py")
    if not FLAGS.workdir:
        _fail("--workdir is required, e.g. --workdir runs/barlow")
    return FLAGS.config, FLAGS.workdir


def _config_arg(argv) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"


def _is_user_error(e: Exception) -> bool:
    from jssl.config import ConfigError
    return isinstance(e, ConfigError)


def _explain_flag_error(e: Exception) -> str:
    text = " ".join(str(e).split())
    # ml_collections' messages are long; keep the informative part.
    if "Could not find" in text or "No such file" in text or "does not exist" in text:
        return f"config file not found: {text.split(':', 1)[-1].strip()}"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    config, workdir = _parse(argv)

    from jssl import train  # heavy imports after the flags are known to be good
    from jssl.config import ConfigError
    from jssl.data.sources import DataError

    try:
        if FLAGS.mode == "eval":
            results = train.evaluate_workdir(config, workdir)
        else:
            results = train.train_and_evaluate(config, workdir)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    except FloatingPointError as e:
        _fail(str(e), code=1)
    summary = {"workdir": workdir, "final_step": results.get("final_step"),
               "eval": results.get("eval"), "random_init_eval": results.get("random_init_eval")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
