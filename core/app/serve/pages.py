"""The explorer's HTML pages, rendered on the server (every text escaped); ``static/app.js``
fills the ``data-ask`` boxes: it asks for the computation, shows its progress with a cancel
button, then the pictures and the numbers."""
from __future__ import annotations

import html
import json
from urllib.parse import quote

__all__ = ["page", "error_page", "layers_page", "layer_page", "unit_page", "images_page", "image_page"]


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def layer_url(layer: str) -> str:
    return "/layer/" + quote(layer, safe="")


def unit_url(layer: str, unit: int) -> str:
    return f"/unit/{quote(layer, safe='')}/{int(unit)}"


def ask(kind: str, **params) -> str:
    """A box the page's script fills with the result of one computation."""
    return (f'<div class="ask" data-ask="{_e(kind)}" data-params="{_e(json.dumps(params))}">'
            f'<span class="wait">{_e(kind.replace("_", " "))}: waiting</span></div>')


def page(title: str, body: str, ws=None) -> str:
    model = f" &middot; {_e(ws.args.model)}" if ws is not None else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} - convscope</title>'
            '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head><body>'
            f'<nav><a href="/">layers</a> <a href="/image">images</a><span class="model">convscope serve{model}</span>'
            f'</nav><main><h1>{_e(title)}</h1>{body}</main></body></html>')


def error_page(status: int, message: str) -> str:
    return page(f"Error {status}", f'<p class="error">{_e(message)}</p><p><a href="/">back to the layers</a></p>')


def _table(rows, columns, cells=None) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        body.append("<tr>" + "".join((cells or {}).get(c, lambda r, c=c: f"<td>{_e(r.get(c, ''))}</td>")(r)
                                     for c in columns) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _flow(rows) -> str:
    """The data flow as an SVG column of boxes; an arrow from each input, skips drawn on the right."""
    index = {r["name"]: i for i, r in enumerate(rows)}
    longest = max((len(r["name"]) + len(r["kind"]) + 3 for r in rows), default=10)
    h, w, gap = 26, min(max(160, 7 * longest + 16), 560), 12  # 7 px a character of the 12 px font
    parts = []
    for i, r in enumerate(rows):
        y = i * (h + gap)
        parts.append(f'<a href="{_e(layer_url(r["name"]))}"><rect x="0" y="{y}" width="{w}" height="{h}" rx="4" '
                     f'class="k-{_e(r["kind"])}"/><text x="8" y="{y + 17}">{_e(r["name"])} &middot; {_e(r["kind"])}'
                     f'</text></a>')
        for source in r["inputs"]:
            j = index.get(source)
            if j is None:
                continue
            y0, y1 = j * (h + gap) + h, y
            if j == i - 1:
                parts.append(f'<line x1="{w / 2}" y1="{y0}" x2="{w / 2}" y2="{y1}" class="edge"/>')
            else:  # a skip or branch: a curve on the right
                bend = w + 14 + 10 * ((i - j) % 5)
                parts.append(f'<path d="M{w} {y0 - h / 2} C{bend} {y0 - h / 2} {bend} {y1 + h / 2} {w} {y1 + h / 2}" '
                             'class="edge skip"/>')
    height = len(rows) * (h + gap)
    return (f'<svg class="flow" width="{w + 80}" height="{height}" viewBox="0 0 {w + 80} {height}" '
            f'role="img" aria-label="data flow">{"".join(parts)}</svg>')


def layers_page(ws) -> str:
    rows = ws.layer_rows()
    link = {"name": lambda r: f'<td><a href="{_e(layer_url(r["name"]))}">{_e(r["name"])}</a></td>',
            "inputs": lambda r: f'<td>{_e(", ".join(r["inputs"]))}</td>'}
    table = _table(rows, ["name", "kind", "shape", "geometry", "receptive field", "inputs"], link)
    data = (f"{len(ws.images)} images from --data" + (" with concept masks" if ws.concepts is not None else "")
            if ws.images is not None else "no --data folder (top patches and dissection need one)")
    return page("Layers", f'<p>{len(rows)} layers; input {ws.size[0]}x{ws.size[1]}; {_e(data)}. Receptive field: '
                'of the central unit, in input pixels.</p><div class="cols"><div><h2>Data flow</h2>' + _flow(rows)
                + '</div><div><h2>Layer table</h2>' + table + '</div></div>', ws)


def layer_page(ws, layer: str) -> str:
    record = next(r for r in ws.records if r.name == layer)
    body = [f'<p>kind {_e(record.kind)}, output {_e(record.shape)}'
            + (f', kernel {_e(record.kernel)}, stride {_e(record.stride)}' if record.kernel else "") + "</p>"]
    if record.kind == "conv":
        body.append("<h2>Filters</h2>" + ask("filters", layer=layer))
    if layer in ws.channels:
        n = ws.channels[layer]
        body.append(f"<h2>Units</h2><p>{n} channels; each links to its unit page.</p><p class=\"units\">"
                    + "".join(f'<a href="{_e(unit_url(layer, u))}">{u}</a> ' for u in range(n)) + "</p>")
        if ws.images is not None:
            body.append("<h2>Activation maps on the first data image</h2>" + ask("layer_maps", image="data-0", layer=layer))
        if ws.concepts is not None:
            body.append("<h2>Network Dissection</h2>" + ask("dissect", layer=layer))
    return page(f"Layer {layer}", "".join(body), ws)


def unit_page(ws, layer: str, unit: int) -> str:
    n = ws.channels[layer]
    nav = (f'<p><a href="{_e(layer_url(layer))}">{_e(layer)}</a> &middot; unit {unit} of {n}'
           + (f' &middot; <a href="{_e(unit_url(layer, unit - 1))}">previous</a>' if unit > 0 else "")
           + (f' &middot; <a href="{_e(unit_url(layer, unit + 1))}">next</a>' if unit + 1 < n else "") + "</p>")
    body = [nav, '<div class="cols"><div><h2>Feature visualisation</h2>' + ask("visualize", layer=layer, unit=unit) + "</div>"]
    if ws.images is not None:
        body.append("<div><h2>Top activating patches</h2>" + ask("patches", layer=layer, unit=unit) + "</div>")
    body.append("</div>")
    if ws.concepts is not None:
        body.append("<h2>Network Dissection label</h2>" + ask("dissect", layer=layer).replace(
            'class="ask"', f'class="ask" data-unit="{unit}"'))
    if ws.images is not None:
        body.append(f'<h2>Activation map on an image</h2><p>image: <select class="pick" data-layer="{_e(layer)}" '
                    f'data-unit="{unit}">' + "".join(f'<option value="data-{i}">data image {i}</option>'
                                                     for i in range(min(len(ws.images), 50)))
                    + '</select></p>' + ask("unit_map", image="data-0", layer=layer, unit=unit))
    return page(f"{layer} unit {unit}", "".join(body), ws)


def images_page(ws, limit: int = 48) -> str:
    upload = ('<h2>Upload an image</h2><p><input type="file" id="upload" accept="image/*"> '
              f'<span id="upload-status"></span></p><p>Any size or mode; fitted to {ws.size[0]}x{ws.size[1]} '
              f'({_e(ws.mode)}).</p>')
    picks = ""
    if ws.images is not None:
        picks = "<h2>Or pick one of the data folder's</h2><p class=\"thumbs\">" + "".join(
            f'<a href="/image/data-{i}"><img src="/data/{i}.png" alt="data image {i}" width="64" height="64"></a>'
            for i in range(min(len(ws.images), limit))) + "</p>"
    return page("Images", upload + picks, ws)


def image_page(ws, image: str, prediction: dict) -> str:
    top = prediction["top"]
    rows = _table(top, ["name", "class", "score", "softmax"], {
        "score": lambda r: f'<td class="num" data-value="{r["score"]!r}">{r["score"]:.4g}</td>',
        "softmax": lambda r: f'<td class="num" data-value="{r["softmax"]!r}">{r["softmax"]:.3f}</td>'})
    has_mask = image.startswith("data-") and ws.masks is not None
    layers = [n for n in ws.layer_names if n in ws.channels]
    middle = layers[len(layers) // 2] if layers else None
    chooser = "".join(f'<option{" selected" if n == middle else ""}>{_e(n)}</option>' for n in layers)
    body = (f'<div class="cols"><div><img class="shown" src="/picture/predict/{_e(prediction["key"])}/image.png" '
            f'alt="the image as the model sees it" width="128"><p class="notes">'
            + _e("; ".join(prediction.get("notes", [])) or f"as given ({ws.size[0]}x{ws.size[1]})") + '</p>'
            '</div><div><h2>Prediction</h2>'
            f'<p id="predicted" data-class="{top[0]["class"]}">{_e(top[0]["name"])}</p>{rows}</div></div>'
            '<h2>Attribution, every method</h2><p>Each map explains the predicted class; columns headed by the method, '
            'colour scales under each picture. Deletion AUC: the softmax probability as the top pixels are replaced '
            '(lower is better)' + ("; pointing game against the object mask (yellow outline)" if has_mask else "")
            + ".</p>" + ask("explain", image=image)
            + (f'<h2>Units</h2><p>layer <select class="layer-pick" data-image="{_e(image)}">{chooser}</select> '
               'click a unit to see its map over the image.</p><div class="cols"><div id="layer-maps">'
               + ask("layer_maps", image=image, layer=middle) + '</div><div id="unit-map"></div></div>' if layers else
               "<p>The model has no layer with a spatial (C, H, W) map: no units to show.</p>"))
    return page(f"Image {image[:12]}", body, ws)
