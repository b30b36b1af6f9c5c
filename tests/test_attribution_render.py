"""AttributionMaps: normalisation, overlays, side-by-side grids, PNG files, notebooks."""
import io

import numpy as np
import pytest

from convscope.attribution import AttributionMaps
from convscope.render import apply_colormap


def _result(channels=3, signed=False, n=3):
    rng = np.random.default_rng(0)
    maps = rng.random((n, 16, 16)).astype(np.float32) * 4 - (2 if signed else 0)
    images = rng.random((n, channels, 16, 16)).astype(np.float32)
    return AttributionMaps(maps, images, "test", np.arange(n), signed=signed)


def test_normalisation_modes_are_explicit():
    r = _result()
    mm = r.normalized("minmax")
    assert np.allclose(mm.reshape(3, -1).min(axis=1), 0) and np.allclose(mm.reshape(3, -1).max(axis=1), 1)
    batch = r.normalized("batch")
    assert batch.min() == 0 and batch.max() == 1 and not np.allclose(batch, mm)
    np.testing.assert_array_equal(r.normalized("none"), r.maps)
    s = _result(signed=True)
    sym = s.normalized()  # signed maps default to symmetric: zero at 0.5
    peak = np.abs(s.maps).reshape(3, -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(sym, 0.5 + s.maps / (2 * peak), rtol=1e-6)
    flat = AttributionMaps(np.zeros((1, 4, 4)), np.zeros((1, 3, 4, 4), np.float32), "flat")
    assert np.isfinite(flat.normalized()).all() and flat.normalized().max() == 0
    with pytest.raises(ValueError, match=r"'tone' parameter of AttributionMaps.normalized must be one of"):
        r.normalized("loud")


def test_overlay_blends_with_alpha_and_the_colour_map():
    r = _result()
    np.testing.assert_allclose(r.styled(alpha=0.0).overlays()[0], r.images[0].transpose(1, 2, 0), atol=1e-6)
    heat = apply_colormap(r.normalized(), "viridis")
    np.testing.assert_allclose(r.styled(alpha=1.0, cmap="viridis").overlays(), heat, atol=1e-6)
    assert r.cmap is None  # styled returns a copy
    with pytest.raises(ValueError, match=r"'alpha' parameter of AttributionMaps.styled must be <= 1"):
        r.styled(alpha=2)


def test_grid_rows_are_image_heatmap_overlay_in_rgb_order():
    r = _result(n=2)
    r.images[:] = 0
    r.images[:, 0] = 1.0  # pure red images
    rgb = r.to_rgb(pad=2)
    assert rgb.shape == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2, 3)
    np.testing.assert_allclose(rgb[2 + 8, 2 + 8], [1, 0, 0])  # first tile: the image, red stays red
    hot = np.unravel_index(r.maps[0].argmax(), (16, 16))
    np.testing.assert_allclose(rgb[2 + hot[0], 2 + 16 + 2 + hot[1]], apply_colormap(1.0, "jet"), atol=1e-6)
    only = r.to_rgb(columns=("overlay",))
    assert only.shape == (2 * 16 + 3 * 2, 16 + 2 * 2, 3)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grayscale_and_other_channel_counts_render(channels):
    r = _result(channels=channels)
    tile = r.to_rgb(columns=("image",))[2:18, 2:18]
    if channels in (1, 2):
        assert np.allclose(tile[..., 0], tile[..., 1]) and np.allclose(tile[..., 1], tile[..., 2])
    else:
        np.testing.assert_allclose(tile, r.images[0, :3].transpose(1, 2, 0), atol=1e-6)


def test_png_saving_and_notebook_display(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    r = _result()
    path = r.save(tmp_path / "maps.png")
    with Image.open(path) as img:
        assert img.size == (r.to_rgb().shape[1], r.to_rgb().shape[0]) and img.mode == "RGB"
    data = r._repr_png_()
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (2 * r.to_rgb().shape[1], 2 * r.to_rgb().shape[0])


def test_indexing_keeps_everything_aligned():
    r = _result(n=4)
    r.info["layer_maps"] = np.arange(4)
    one = r[2]
    assert len(one) == 1 and one.target.tolist() == [2] and one.info["layer_maps"].tolist() == [2]
    np.testing.assert_array_equal(r[-1].maps, r.maps[3:])
    np.testing.assert_array_equal(np.asarray(r[1:3]), r.maps[1:3])
    assert "4 maps of 16x16" in repr(r)
    with pytest.raises(ValueError, match=r"'maps' parameter of AttributionMaps must be"):
        AttributionMaps(np.zeros((2, 4, 4)), np.zeros((3, 3, 4, 4), np.float32), "bad")
