"""Using what was trained: jssl.export (load_encoder, the export CLI) and model.init_from."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import checkpoint, export, methods, train
from jssl.config import ConfigError
from jssl.data import sources
from jssl.methods import joint
from tests.shared import smoke


@pytest.fixture
def trained(shared_run):
    """The shared SimCLR smoke run (4 steps on 8 devices): (config, workdir)."""
    return shared_run("simclr")


def _images(c, n=16):
    src = sources.get_source(c.data.name, "test")
    return src.read(np.arange(n))[0]


def _method_features(c, workdir, images):
    """Features by the run's own Method.embed on its restored state (the reference)."""
    run = train._Run(c, workdir, jax.devices()[:1])
    ckpt = checkpoint.Checkpointer(workdir, c, keep=c.keep_checkpoints)
    state = ckpt.restore(run.abstract)
    ckpt.close()
    return np.asarray(run.method.embed(state, jnp.asarray(images))), state


def test_load_encoder_gives_the_runs_features(trained, tmp_path):
    c, workdir = trained
    images = _images(c)
    want, state = _method_features(c, workdir, images)
    module, variables = export.load_encoder(workdir)
    got = np.asarray(module.apply(variables, images))
    assert got.shape == want.shape and np.std(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The variables are the trained ones (not a fresh initialisation).
    np.testing.assert_array_equal(
        jax.tree_util.tree_leaves(variables["params"]["backbone"])[0],
        np.asarray(jax.tree_util.tree_leaves(state.params["backbone"])[0]),
    )

    out = str(tmp_path / "encoder.msgpack")
    assert export.main(["--workdir", workdir, "--out", out]) == 0
    module2, variables2 = export.load_encoder(out)
    np.testing.assert_array_equal(np.asarray(module2.apply(variables2, images)), got)
    # Nothing already saved is overwritten.
    size = os.path.getsize(out)
    assert export.main(["--workdir", workdir, "--out", out]) == 2
    assert os.path.getsize(out) == size


def test_load_encoder_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no such workdir"):
        export.load_encoder(str(tmp_path / "missing"))
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not msgpack at all")
    with pytest.raises(ConfigError, match="bad.msgpack"):
        export.load_encoder(str(bad))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="experiment.json"):
        export.load_encoder(str(tmp_path / "empty"))


def test_init_from_starts_fkt_from_the_pretrained_backbone(trained):
    c, workdir = trained
    f = smoke("fkt")
    # The FKT smoke model is the same backbone as the SimCLR smoke run's.
    assert (f.model.backbone, f.model.num_filters) == (c.model.backbone, c.model.num_filters)
    info = methods.DataInfo(10, (f.data.image_size,) * 2 + (1,))
    fresh = jax.jit(joint.build(f, info).init)(jax.random.PRNGKey(0))
    f.model.init_from = workdir
    started = jax.jit(joint.build(f, info).init)(jax.random.PRNGKey(0))
    params, stats = checkpoint.load_backbone(workdir)
    for got, want, before in zip(
        jax.tree_util.tree_leaves(started.params["backbone"]),
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(fresh.params["backbone"]),
    ):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert not np.array_equal(np.asarray(before), want)
    for got, want in zip(
        jax.tree_util.tree_leaves(started.batch_stats["backbone"]), jax.tree_util.tree_leaves(stats)
    ):
        np.testing.assert_array_equal(np.asarray(got), want)
    # Heads stay freshly initialised.
    for a, b in zip(
        jax.tree_util.tree_leaves(started.params["classifier"]),
        jax.tree_util.tree_leaves(fresh.params["classifier"]),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_mismatch_and_missing_are_one_line_errors(trained, tmp_path):
    c, workdir = trained
    f = smoke("fkt")
    info = methods.DataInfo(10, (f.data.image_size,) * 2 + (1,))
    f.model.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="config.model.init_from"):
        joint.build(f, info)
    f.model.init_from = workdir
    f.model.num_filters = c.model.num_filters * 2
    with pytest.raises(ConfigError, match="does not match"):
        jax.eval_shape(joint.build(f, info).init, jax.random.PRNGKey(0))
