"""The one path layer for every file a run reads or writes: local paths and `gs://` (layer 0).

Paths are plain strings everywhere in jssl (`os.path.join` composes a bucket URL as it does
a local path). The file-system operations go through here: local paths use `os` directly
(the behaviour jssl's tests pin: atomic `os.replace`, `flock`), URLs such as
`gs://bucket/run` use `etils.epath`, which TFDS and orbax read them with too (on a TPU VM
it reaches Cloud Storage through `gcsfs` or TensorFlow's `gfile`, whichever is installed).

What differs on an object store, and how jssl behaves there:
* No rename in place and no append: an atomic write is a local temporary file copied
  over the object (one object write: a reader sees the old or the new whole file); an
  append rewrites the object (`append_text`: metrics files are small).
* No free-space figure (`free_bytes` is None): the checkpoint space check is skipped.
* No `flock`: the workdir lock is best effort (jssl.checkpoint.WorkdirLock says how).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import IO, Callable

__all__ = [
    "is_remote",
    "abspath",
    "exists",
    "isdir",
    "isfile",
    "makedirs",
    "listdir",
    "remove",
    "rmtree",
    "rename",
    "open_file",
    "getsize",
    "write_atomic",
    "append_text",
    "free_bytes",
]

# URL schemes handled by etils.epath (anything with "://").
_SCHEME = "://"


def is_remote(path: str) -> bool:
    """True for a URL (`gs://bucket/dir`, `s3://...`): an object store, not a local path."""
    return _SCHEME in str(path)


def _epath(path: str):
    from etils import epath  # the object-store backend: imported on first remote use

    return epath.Path(path)


def abspath(path: str) -> str:
    """A local path made absolute; a URL as it is (without a trailing slash)."""
    return str(path).rstrip("/") if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """Create `path` and its parents if needed (on an object store: nothing to create)."""
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in directory `path`."""
    if is_remote(path):
        return [p.name for p in _epath(path).iterdir()]
    return os.listdir(path)


def remove(path: str) -> None:
    """Remove the file `path`."""
    if is_remote(path):
        _epath(path).unlink()
    else:
        os.remove(path)


def rmtree(path: str, *, ignore_errors: bool = False) -> None:
    if is_remote(path):
        try:
            _epath(path).rmtree()
        except OSError:
            if not ignore_errors:
                raise
    else:
        shutil.rmtree(path, ignore_errors=ignore_errors)


def rename(src: str, dst: str) -> None:
    """Move `src` to `dst` (an object store copies then deletes)."""
    if is_remote(src) or is_remote(dst):
        _epath(src).rename(dst)
    else:
        os.rename(src, dst)


def open_file(path: str, mode: str = "r") -> IO:
    """`open(path, mode)` for a local path, epath's `open` for a URL (no append mode
    there: `append_text`)."""
    if is_remote(path):
        if "a" in mode:
            raise ValueError(f"{path}: an object store cannot append; use paths.append_text")
        return _epath(path).open(mode)
    return open(path, mode)


def getsize(path: str) -> int:
    return _epath(path).stat().length if is_remote(path) else os.path.getsize(path)


def write_atomic(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """`write(tmp)` writes a file at a local temporary path, which then replaces `path` in
    one step: a reader sees the old file or the new one, never a part. Locally the
    temporary file is `path + suffix` (renamed over the target); for a URL it is a local
    temporary file copied over the object (one object write)."""
    if not is_remote(path):
        tmp = path + suffix
        write(tmp)
        os.replace(tmp, path)
        return
    with tempfile.TemporaryDirectory(prefix="jssl-write-") as d:
        tmp = os.path.join(d, "file" + suffix)
        write(tmp)
        _epath(tmp).copy(_epath(path), overwrite=True)


def append_text(path: str, text: str) -> None:
    """Append `text` to the file `path` (created if absent). On an object store the object
    is rewritten whole (atomically, `write_atomic`)."""
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    old = _epath(path).read_text() if exists(path) else ""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(old + text)

    write_atomic(path, write)


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system of `path` or its nearest existing ancestor; None for
    an object store (no such figure)."""
    if is_remote(path):
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free
