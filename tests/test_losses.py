"""clip_loss against an explicit NumPy float64 formula."""

import numpy as np
import pytest

from mmjax.losses import clip_loss


def numpy_clip_loss(x, y, scale):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = scale * x @ y.T
    n = len(x)
    i2t = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[i]))) for i in range(n)])
    t2i = -np.mean([logits[j, j] - np.log(np.sum(np.exp(logits[:, j]))) for j in range(n)])
    return (i2t + t2i) / 2


def unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n,d,scale", [(4, 8, 1.0), (16, 32, 14.3), (33, 5, 100.0)])
def test_clip_loss_matches_numpy(n, d, scale):
    rng = np.random.default_rng(n)
    x, y = unit(rng, n, d), unit(rng, n, d)
    loss, metrics = clip_loss(x, y, scale)
    np.testing.assert_allclose(float(loss), numpy_clip_loss(x, y, scale), rtol=1e-5)
    assert 0.0 <= float(metrics["i2t_accuracy"]) <= 1.0


def test_clip_loss_is_low_for_matched_pairs_and_log_n_at_chance():
    rng = np.random.default_rng(0)
    x = unit(rng, 8, 16)
    loss, metrics = clip_loss(x, x, 100.0)
    assert float(loss) < 1e-3 and float(metrics["i2t_accuracy"]) == 1.0
    same = np.tile(x[:1], (8, 1))
    loss, _ = clip_loss(same, same, 10.0)
    np.testing.assert_allclose(float(loss), np.log(8), rtol=1e-5)
