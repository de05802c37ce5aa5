"""jssl.hog against scikit-image's `hog` on real images (scikit-image's sample photographs
and the embedded MNIST digits), every block normalisation, odd cell sizes, colour."""

import functools

import jax
import numpy as np
import pytest
import skimage.data as skimage_data  # test dependencies: missing is a failure, not a skip
import skimage.feature as skimage_feature

from jssl import hog as jhog
from jssl.data import sources


def _ours(images, **kw):
    return np.asarray(jax.jit(functools.partial(jhog.hog, **kw))(images))


def _photo(name, size=(96, 120)):
    image = getattr(skimage_data, name)()
    return image[40 : 40 + size[0], 60 : 60 + size[1]]  # a crop with texture keeps tests fast


CASES = [
    dict(),  # scikit-image's defaults: 9 orientations, 8x8 cells, 3x3 blocks, L2-Hys
    dict(orientations=8, pixels_per_cell=(7, 9), cells_per_block=(2, 3), block_norm="L1"),
    dict(orientations=6, pixels_per_cell=(10, 10), cells_per_block=(2, 2), block_norm="L1-sqrt"),
    dict(orientations=12, pixels_per_cell=(16, 12), cells_per_block=(1, 1), block_norm="L2"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: kw.get("block_norm", "default"))
@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_matches_skimage_on_photographs(name, kw):
    image = _photo(name)
    colour = image.ndim == 3
    ref = skimage_feature.hog(image, channel_axis=-1 if colour else None, **kw)
    out = _ours(image[None], **kw)[0]
    assert out.shape == ref.shape
    assert out.shape[0] == jhog.hog_num_features(
        image.shape,
        **{
            k: v
            for k, v in kw.items()
            if k in ("orientations", "pixels_per_cell", "cells_per_block")
        },
    )
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    assert np.abs(ref).max() > 0.05  # a real signal, not two zero vectors


def test_transform_sqrt_matches_skimage():
    image = _photo("camera")
    ref = skimage_feature.hog(image, transform_sqrt=True)
    np.testing.assert_allclose(_ours(image[None], transform_sqrt=True)[0], ref, rtol=0, atol=1e-5)


def test_matches_skimage_on_embedded_mnist_batch():
    images, _ = sources.get_source("mnist_embedded", "train").read(np.arange(32))
    kw = dict(pixels_per_cell=(4, 4), cells_per_block=(2, 2))
    ref = np.stack([skimage_feature.hog(im[..., 0], **kw) for im in images])
    out = _ours(images, **kw)  # (B, H, W, 1) uint8, the teacher's input
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # The digits differ, so do their descriptors.
    assert np.linalg.norm(out[0] - out[1]) > 0.1


def test_errors():
    with pytest.raises(ValueError, match="too small for HOG"):
        jhog.hog(np.zeros((1, 10, 10), np.uint8), pixels_per_cell=(8, 8))
    with pytest.raises(ValueError, match="block_norm"):
        jhog.hog(np.zeros((1, 32, 32), np.uint8), block_norm="L3")
    with pytest.raises(ValueError, match="images must be"):
        jhog.hog(np.zeros((32, 32), np.uint8))
