"""Self-contained HTML reports: headings, text, pictures (inline PNG), tables, written atomically."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from .image import atomic_write, png_bytes

__all__ = ["Report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0d0}nav{padding:8px 32px;background:#e8ebf0;font-size:14px}
nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:12px 20px;margin:16px 0;box-shadow:0 1px 3px #0001}
h2{font-size:18px;margin:8px 0}h3{font-size:15px;margin:14px 0 6px}p{line-height:1.45}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}figcaption{font-size:12px;color:#555;max-width:520px}
img{image-rendering:pixelated;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f0f2f5}
"""


class Report:
    """Build one HTML page section by section; :meth:`write` puts it on disk atomically."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self.sections: list = []  # (anchor, heading, [html parts])

    def section(self, heading: str) -> "Report":
        anchor = "s" + str(len(self.sections))
        self.sections.append((anchor, heading, []))
        return self

    def _add(self, part: str) -> "Report":
        if not self.sections:
            self.section(self.title)
        self.sections[-1][2].append(part)
        return self

    def text(self, text: str, *, heading: str | None = None) -> "Report":
        if heading:
            self._add(f"<h3>{html.escape(heading)}</h3>")
        return self._add(f"<p>{html.escape(text)}</p>")

    def picture(self, rgb, caption: str = "", *, scale: int = 1, width: int | None = None) -> "Report":
        """An inline PNG of an (H, W, 3) picture in [0, 1] or anything with ``to_rgb()``."""
        if hasattr(rgb, "to_rgb"):
            rgb = rgb.to_rgb()
        data = base64.b64encode(png_bytes(np.asarray(rgb), scale=scale)).decode()
        size = f' width="{width}"' if width else ""
        return self._add(f'<figure><img alt="{html.escape(caption)}"{size} src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, rows: list, columns: list | None = None, *, digits: int = 3) -> "Report":
        """A table of dict rows; floats are shown with ``digits`` decimals."""
        if not rows:
            return self._add("<p><em>(no rows)</em></p>")
        columns = columns or list(rows[0])

        def cell(v):
            if isinstance(v, (float, np.floating)):
                return f"{v:.{digits}f}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
        return self._add(f"<table><tr>{head}</tr>{body}</table>")

    def html(self, fragment: str) -> "Report":
        """Raw HTML (already escaped) for what the helpers above do not cover."""
        return self._add(fragment)

    def to_html(self) -> str:
        nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{"".join(parts)}</section>'
                       for a, h, parts in self.sections)
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<meta name='viewport' content='width=device-width'><style>{_STYLE}</style></head><body>"
                f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{body}</main></body></html>")

    def write(self, path) -> Path:
        """Write the page to ``path`` atomically (a temporary file, then a rename)."""
        return atomic_write(path, self.to_html())
