"""Files a run writes, written atomically (layer 0), through the path layer (`jssl.paths`:
local paths and `gs://`).

Every writer here writes a temporary file and puts it over the target in one step (a
rename beside it locally, one object write on a bucket), so a reader (a resumed run, a
study, a person) sees the old file or the new one, never a half-written one, whatever
moment the process is killed at.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from jssl import paths

__all__ = [
    "jsonable",
    "read_json",
    "write_json",
    "write_text",
    "write_bytes",
    "write_with",
    "save_npy",
    "save_npz",
]


def jsonable(x: Any) -> Any:
    """`x` with NumPy scalars and arrays as Python numbers and lists, tuples as lists."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def read_json(path: str) -> Any:
    with paths.open_file(path) as f:
        return json.load(f)


def write_with(path: str, write, suffix: str = ".tmp") -> None:
    """`write(tmp)` writes the file at a local temporary path ending in `suffix`, which
    then replaces `path` (e.g. `write_with(path, fig.savefig, ".tmp.png")`;
    `paths.write_atomic`)."""
    paths.write_atomic(path, write, suffix)


_replace = write_with


def write_json(path: str, obj: Any, *, indent: int | None = 1) -> None:
    """`obj` (through `jsonable`) as JSON at `path`, keys sorted."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(jsonable(obj), f, indent=indent, sort_keys=True)

    _replace(path, write)


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _replace(path, write)


def write_bytes(path: str, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    _replace(path, write)


def save_npy(path: str, array: np.ndarray) -> None:
    # The temporary name ends in .npy, or np.save would append the suffix itself.
    _replace(path, lambda tmp: np.save(tmp, array), ".tmp.npy")


def save_npz(path: str, **arrays: np.ndarray) -> None:
    _replace(path, lambda tmp: np.savez(tmp, **arrays), ".tmp.npz")
