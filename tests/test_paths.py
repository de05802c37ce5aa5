"""The path layer (jssl.paths): local semantics, and `gs://` workdirs through etils.epath,
here with epath's own mock mapping a bucket onto a local directory (no network)."""

import json
import os

import pytest
from etils.epath import testing

from jssl import checkpoint, io, paths
from jssl.metric_writer import MetricWriter
from tests.shared import read_metrics


def test_local_writes_replace_whole_files_and_keep_the_old_one_on_failure(tmp_path):
    target = str(tmp_path / "r.json")
    io.write_json(target, {"a": 1})
    io.write_json(target, {"a": 2})
    assert io.read_json(target) == {"a": 2}

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write('{"a": 3')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(target, broken)
    assert io.read_json(target) == {"a": 2}
    paths.append_text(str(tmp_path / "m.jsonl"), "x\n")
    paths.append_text(str(tmp_path / "m.jsonl"), "y\n")
    assert (tmp_path / "m.jsonl").read_text() == "x\ny\n"
    assert paths.free_bytes(str(tmp_path / "not" / "yet")) > 0
    assert paths.abspath("rel") == os.path.abspath("rel")
    assert not paths.is_remote(str(tmp_path)) and paths.is_remote("gs://b/run")
    assert paths.abspath("gs://b/run/") == "gs://b/run"


@pytest.fixture
def bucket(tmp_path):
    """gs://<name>/... read and written under tmp_path/<name>/... by epath's backend."""
    root = str(tmp_path / "gcs")

    def local(p):
        p = os.fspath(p)
        return os.path.join(root, p[len("gs://") :]) if p.startswith("gs://") else p

    def mapped(fn, p, *args, **kwargs):
        args = [local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
        return fn(local(p), *args, **kwargs)

    def written(fn, p, *args, **kwargs):  # an object store has no directories to create
        target = args[0] if fn.__name__ in ("copy", "rename", "replace") else p
        mode = args[0] if fn.__name__ == "open" and args else kwargs.get("mode", "r")
        if fn.__name__ != "open" or any(c in str(mode) for c in "wax"):
            os.makedirs(os.path.dirname(local(target)), exist_ok=True)
        return mapped(fn, p, *args, **kwargs)

    names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree")
    names += ("stat", "walk")
    mocks = {n: mapped for n in names}
    mocks.update({n: written for n in ("copy", "open", "rename", "replace")})
    with testing.mock_epath(**mocks):
        yield local


def test_a_bucket_path_goes_through_epath(bucket):
    paths.makedirs("gs://b/run")
    io.write_json("gs://b/run/results.json", {"a": 1})
    assert io.read_json("gs://b/run/results.json") == {"a": 1}
    assert json.load(open(bucket("gs://b/run/results.json"))) == {"a": 1}
    paths.append_text("gs://b/run/m.jsonl", "x\n")
    paths.append_text("gs://b/run/m.jsonl", "y\n")  # rewritten whole: no append there
    assert open(bucket("gs://b/run/m.jsonl")).read() == "x\ny\n"
    assert sorted(paths.listdir("gs://b/run")) == ["m.jsonl", "results.json"]
    assert paths.getsize("gs://b/run/m.jsonl") == 4 and paths.free_bytes("gs://b/run") is None
    with pytest.raises(ValueError, match="cannot append"):
        paths.open_file("gs://b/run/m.jsonl", "a")
    paths.rename("gs://b/run/results.json", "gs://b/run/old.json")
    assert not paths.exists("gs://b/run/results.json") and paths.isfile("gs://b/run/old.json")
    paths.rmtree("gs://b/run")
    assert not os.path.exists(bucket("gs://b/run"))


def test_metrics_tensorboard_lock_and_guard_on_a_bucket_workdir(bucket, capsys):
    workdir = "gs://b/run"
    assert checkpoint.check_workdir(workdir, None) is False  # writable (probed), no run yet
    assert not os.path.exists(bucket("gs://b/run/.jssl-probe"))

    writer = MetricWriter(workdir)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    assert [r["loss"] for r in read_metrics(bucket(workdir))] == [1.0, 0.5, 1.0 / 3]
    events = os.listdir(bucket("gs://b/run/tensorboard"))
    assert len(events) == 1 and os.path.getsize(bucket(f"gs://b/run/tensorboard/{events[0]}"))
    # A resumed run keeps the lines up to its checkpoint; its events go to a second file.
    writer = MetricWriter(workdir, resume_step=2)
    writer.write(3, {"loss": 0.25})
    writer.close()
    assert [r["loss"] for r in read_metrics(bucket(workdir))] == [1.0, 0.5, 0.25]
    logdir = bucket("gs://b/run/tensorboard")
    assert all(os.path.getsize(os.path.join(logdir, name)) for name in os.listdir(logdir))

    lock = checkpoint.WorkdirLock(workdir, say=print).acquire()
    assert json.load(open(bucket("gs://b/run/run.lock")))["pid"] == os.getpid()
    checkpoint.WorkdirLock(workdir, say=print).acquire()  # no lock there: said, not refused
    assert "names another run" in capsys.readouterr().out
    lock.release()
    assert open(bucket("gs://b/run/run.lock")).read() == ""
