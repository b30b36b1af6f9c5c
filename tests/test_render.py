"""Rendering: tone mapping formulas on hand-computed cases, colour maps, resizing, grids, PNG files."""
import numpy as np
import pytest
from PIL import Image

from convscope.render import (Picture, apply_colormap, colormap, grid, normalize, overlay, png_bytes, resize,
                              save_png, to_rgb)


def test_tone_modes_by_hand():
    m = np.array([[[-2.0, 0.0], [1.0, 2.0]], [[0.0, 1.0], [1.0, 1.0]]], np.float32)
    np.testing.assert_allclose(normalize(m, "minmax")[0], [[0, 0.5], [0.75, 1]])
    np.testing.assert_allclose(normalize(m, "minmax")[1], [[0, 1], [1, 1]])
    np.testing.assert_allclose(normalize(m, "batch")[1], [[0.5, 0.75], [0.75, 0.75]])
    np.testing.assert_allclose(normalize(m, "symmetric")[0], [[0, 0.5], [0.75, 1]])
    np.testing.assert_allclose(normalize(m, "symmetric")[1], [[0.5, 1], [1, 1]])
    np.testing.assert_allclose(normalize(m, "symmetric-batch")[1], [[0.5, 0.75], [0.75, 0.75]])
    np.testing.assert_array_equal(normalize(m, "none"), m)


def test_percentile_clips_one_hot_pixel():
    m = np.ones((1, 10, 10), np.float32)
    m[0, 0, 0] = 1000.0
    out = normalize(m, "percentile", percentile=98)
    assert out[0, 5, 5] == pytest.approx(1.0)  # the bulk is no longer washed out
    assert normalize(m, "minmax")[0, 5, 5] == pytest.approx(0.0)


def test_constant_maps_are_not_nan():
    m = np.full((2, 3, 3), 4.0, np.float32)
    for mode in ("minmax", "batch", "symmetric", "percentile"):
        assert np.isfinite(normalize(m, mode)).all()
    np.testing.assert_array_equal(normalize(np.zeros((1, 2, 2)), "symmetric"), 0.5)


def test_bad_tone_mode():
    with pytest.raises(ValueError, match=r"'mode' parameter of normalize must be one of 'none', 'minmax'"):
        normalize(np.ones((1, 2, 2)), "log")


def test_colormaps_endpoints_and_order():
    v = colormap("viridis")
    np.testing.assert_allclose(v[0], [0.267, 0.005, 0.329], atol=1e-3)
    np.testing.assert_allclose(v[-1], [0.993, 0.906, 0.144], atol=1e-3)
    gray = apply_colormap(np.array([0.0, 0.5, 1.0]), "gray")
    np.testing.assert_allclose(gray[:, 0], [0, 0.5, 1.0], atol=3e-3)
    jet = apply_colormap(np.array([0.0, 1.0]), "jet")
    assert jet[0, 2] > jet[0, 0] and jet[1, 0] > jet[1, 2]  # blue for low, red for high


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).random((2, 3, 5, 7), dtype=np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(a), size=(11, 13), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize(a, (11, 13)), want.numpy(), atol=1e-6)
    np.testing.assert_array_equal(resize(np.arange(4.0).reshape(2, 2), (4, 4), order=0)[::2, ::2], [[0, 1], [2, 3]])


def test_to_rgb_handles_layouts_and_channel_counts():
    chw = np.zeros((3, 4, 5), np.float32)
    chw[0] = 1  # red
    rgb = to_rgb(chw)
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [1, 0, 0]
    np.testing.assert_array_equal(to_rgb(rgb), rgb)  # channels last stays
    gray = to_rgb(np.full((1, 4, 4), 0.25, np.float32))
    assert gray.shape == (4, 4, 3) and np.allclose(gray, 0.25)
    five = to_rgb(np.ones((5, 4, 4), np.float32))
    assert five.shape == (4, 4, 3)
    wide = to_rgb(np.array([[-1.0, 1.0]]))
    np.testing.assert_allclose(wide[0, :, 0], [0, 1])


def test_overlay_blends_and_resizes():
    img = np.zeros((3, 8, 8), np.float32)
    heat = np.ones((2, 2), np.float32)
    out = overlay(img, heat, cmap="gray", alpha=0.25)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="'alpha' parameter of overlay must be <= 1"):
        overlay(img, heat, alpha=2)


def test_grid_layout():
    tiles = [np.full((3, 2, 2), v, np.float32) for v in (0.0, 0.5, 1.0)]
    g = grid(tiles, ncols=2, pad=1, pad_value=0.2)
    assert g.shape == (1 + 2 * 3, 1 + 2 * 3, 3)
    assert g[1, 1, 0] == 0 and g[1, 4, 0] == 0.5 and g[4, 1, 0] == 1 and g[4, 4, 0] == pytest.approx(0.2)


def test_png_round_trip_and_atomic_save(tmp_path):
    rgb = np.zeros((4, 6, 3), np.float32)
    rgb[..., 1] = 1
    path = save_png(rgb, tmp_path / "sub" / "g.png", scale=2)
    img = np.asarray(Image.open(path))
    assert img.shape == (8, 12, 3) and (img[..., 1] == 255).all() and (img[..., 0] == 0).all()
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temporary file left behind
    assert Picture(rgb)._repr_png_().startswith(b"\x89PNG")
    assert png_bytes(rgb).startswith(b"\x89PNG")
