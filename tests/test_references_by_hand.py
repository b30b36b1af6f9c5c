"""Small cases computed by hand or by the paper's formula written out here, for the lines a
mutation probe found unguarded: occlusion's default stride and per-channel fill, the total
variation's two terms, insertion's choice of class."""
import itertools

import numpy as np
import pytest

from convscope import attribution as A
from convscope import metrics as M
from convscope.synthesis.regularizers import total_variation

torch = pytest.importorskip("torch")


class Linear(torch.nn.Module):
    """Scores: per class k, sum_c sum_yx W[k, c, y, x] x[c, y, x] (a linear model: occlusion's
    drop for a window is exactly the weights times what the fill changes)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w))

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.w)


def occlusion_by_hand(w, x, k, window, stride, fill):
    """Captum's definition, written out: d = f(x) - f(x with the window filled), averaged per
    pixel over the windows covering it."""
    _, c, h, wd = x.shape
    total, count = np.zeros((h, wd)), np.zeros((h, wd))
    f = lambda im: float(np.einsum("chw,chw->", im, w[k]))  # noqa: E731
    ys = [i * stride for i in range(-(-(h - window) // stride) + 1)]
    xs = [i * stride for i in range(-(-(wd - window) // stride) + 1)]
    for y0, x0 in itertools.product(ys, xs):
        occluded = x[0].copy()
        occluded[:, y0:y0 + window, x0:x0 + window] = np.asarray(fill, np.float64)[:, None, None]
        total[y0:y0 + window, x0:x0 + window] += f(x[0]) - f(occluded)
        count[y0:y0 + window, x0:x0 + window] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0), len(ys) * len(xs)


def test_occlusion_default_stride_is_half_the_window_and_fills_per_channel(rng):
    w = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    x = rng.random((1, 3, 12, 12), dtype=np.float32)
    fill = [0.1, 0.5, 0.9]  # a different value per channel: reversing them changes the drops
    got = A.occlusion(Linear(w).eval(), x, 1, window=4, fill=fill)  # stride left to its default
    want, windows = occlusion_by_hand(w, x, 1, 4, 2, fill)
    np.testing.assert_allclose(got.maps[0], want, rtol=1e-4, atol=1e-5)
    assert got.info["stride"] == (2, 2) and got.info["windows"] == windows == 25
    reversed_fill, _ = occlusion_by_hand(w, x, 1, 4, 2, fill[::-1])
    assert not np.allclose(got.maps[0], reversed_fill, atol=1e-3)


def test_total_variation_by_hand():
    x = np.zeros((1, 1, 3, 3), np.float64)
    x[0, 0] = [[0, 1, 3], [2, 2, 2], [5, 0, 1]]
    # over the top-left 2 x 2 positions: horizontal differences (1, 2, 0, 0), vertical (2, 1, 3, -2)
    dx, dy = np.array([1, 2, 0, 0.0]), np.array([2, 1, 3, -2.0])
    for beta in (1.0, 2.0):
        value, _ = total_variation(x, beta=beta, eps=0.0 if beta == 2 else 1e-12)
        assert value[0] == pytest.approx(np.mean((dx ** 2 + dy ** 2) ** (beta / 2)), rel=1e-6)


def test_insertion_explains_the_class_of_the_clean_image(rng):
    """With target=None, insertion explains the class the model predicts for the image itself,
    not for the blurred start: a model that prefers class 1 on blurred images and class 0 on
    sharp ones tells the two apart."""
    class SharpOrBlurred(torch.nn.Module):
        def forward(self, x):
            d = x[:, :, 1:, :] - x[:, :, :-1, :]
            detail = d.abs().mean(dim=(1, 2, 3))
            return torch.stack([detail * 10, torch.full_like(detail, 0.5)], dim=1)

    x = (rng.random((2, 3, 16, 16)) > 0.5).astype(np.float32)  # sharp: class 0 wins (detail ~ 0.5)
    model = SharpOrBlurred()
    assert (model(torch.from_numpy(x)).argmax(1) == 0).all()
    curve = M.insertion(model, x, rng.random((2, 16, 16), dtype=np.float32), steps=4)
    assert (curve.target == 0).all()
    np.testing.assert_allclose(curve.scores[:, -1], model(torch.from_numpy(x))[:, 0].numpy(), rtol=1e-5)
