"""Rendering: tone mapping, colour maps, grids, overlays, PNG files."""
from .chart import bar_chart
from .colormaps import COLORMAPS, apply_colormap, colormap
from .image import grid, heatmap, overlay, png_bytes, resize, save_png, to_rgb
from .picture import Picture, Renderable
from .report import Report
from .tone import TONE_MODES, normalize

__all__ = ["bar_chart", "normalize", "TONE_MODES", "colormap", "apply_colormap", "COLORMAPS", "to_rgb", "overlay", "heatmap",
           "grid", "resize", "save_png", "png_bytes", "Picture", "Renderable", "Report"]
