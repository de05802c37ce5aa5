"""The user errors: one line naming what was wrong, where, and the fix (layer 0).

`ConfigError` is a mistake in the experiment's config or command line; `DataError` a data
set, split or index that cannot be served. Both are `ValueError`s; the CLI prints their
message as one line and exits with status 2. `Stopped` is not a mistake: a run that was
asked to stop (SIGTERM, Ctrl-C) and checkpointed first; the CLI exits with status 75.
`StorageError` is a write the run needs that failed (a full disk, a quota, an unwritable
directory): one line naming the path and the free space; the CLI exits with status 74.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "Stopped", "StorageError"]


class ConfigError(ValueError):
    """A user mistake in the config: the message is one line naming the field and the fix."""


class DataError(ValueError):
    """A data set, split or index the user asked for cannot be served (one-line message)."""


class Stopped(Exception):
    """A run stopped on request (SIGTERM or SIGINT) after checkpointing its last step; the
    same command resumes it. The message is one line naming the signal and the step."""


class StorageError(OSError):
    """A checkpoint (or other file of the run) could not be written: one line naming the
    path, the free space and the fix. What was saved before is intact."""
