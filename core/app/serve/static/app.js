// convscope serve: fills each [data-ask] box with its computation (progress, cancel, result).
"use strict";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits) { return typeof v === "number" ? Number(v.toPrecision(digits || 4)).toString() : String(v); }

function numCell(v, digits) {
  const td = el("td", {class: "num"}, v === undefined || v === null ? "" : fmt(v, digits));
  if (typeof v === "number") td.dataset.value = String(v);
  return td;
}

function table(columns, rows) {
  const t = el("table"), head = el("tr");
  columns.forEach(c => head.appendChild(el("th", {}, c)));
  t.appendChild(el("thead")).appendChild(head);
  const body = t.appendChild(el("tbody"));
  rows.forEach(r => { const tr = body.appendChild(el("tr")); r.forEach(c => tr.appendChild(c)); });
  return t;
}

function picture(src, alt) {
  // small pictures (64-pixel maps, a visualisation) are enlarged by whole pixels to about 256 wide
  const img = el("img", {src: src, alt: alt});
  img.addEventListener("load", () => {
    const k = Math.max(1, Math.min(4, Math.floor(256 / img.naturalWidth)));
    if (k > 1) img.style.width = `${img.naturalWidth * k}px`;
  });
  return img;
}

function unitLink(layer, unit) {
  const td = el("td");
  td.appendChild(el("a", {href: `/unit/${encodeURIComponent(layer)}/${unit}`}, String(unit)));
  return td;
}

const RENDER = {
  filters: (box, r) => box.append(picture(r.pictures.filters, "filters")),
  visualize: (box, r) => box.append(picture(r.pictures.visualization, "feature visualisation"),
    el("p", {}, `objective ${fmt(r.numbers.objective)} after ${r.numbers.steps} steps`)),
  patches: (box, r) => {
    const n = r.numbers;
    box.append(picture(r.pictures.patches, "top activating patches"),
      table(["rank", "activation", "image"], n.values.map((v, i) => {
        const a = el("td"); a.appendChild(el("a", {href: `/image/data-${n.images[i]}`}, `data image ${n.images[i]}`));
        return [el("td", {}, String(i + 1)), numCell(v), a];
      })));
  },
  dissect: (box, r) => {
    const n = r.numbers, unit = box.dataset.unit;
    let rows = n.table;
    if (unit !== undefined) rows = rows.filter(x => String(x.unit) === unit);
    else rows = rows.slice(0, 12);
    box.append(el("p", {}, `threshold at the top ${n.quantile} of each unit's activations; a detector when IoU > ${n.iou_threshold}`
      + (n.empty.length ? `; concepts with no pixels in the data (IoU 0): ${n.empty.join(", ")}` : "")),
      table(["unit", "label", "category", "IoU", "detector"], rows.map(x => [unitLink(box.dataset.layer, x.unit),
        el("td", {class: "label"}, x.concept), el("td", {}, x.category), numCell(x.iou), el("td", {}, x.detector ? "yes" : "no")])));
  },
  unit_map: (box, r) => box.append(picture(r.pictures.map, "activation map"),
    el("p", {}, "colour (jet): the unit's activation from the map's minimum (blue) to its maximum (red), bilinear to the image"),
    table(["max", "mean", "peak (y, x)"], [[numCell(r.numbers.max), numCell(r.numbers.mean), el("td", {}, r.numbers.peak.join(", "))]])),
  layer_maps: (box, r) => {
    const buttons = el("p", {class: "unit-buttons"});
    const image = box.dataset.image, layer = box.dataset.layer;
    for (let u = 0; u < r.numbers.channels; u++) {
      const b = buttons.appendChild(el("button", {type: "button", "data-unit": u}, String(u)));
      b.addEventListener("click", () => {
        const target = document.getElementById("unit-map");
        if (!target) { location.href = `/unit/${encodeURIComponent(layer)}/${u}`; return; }
        target.replaceChildren(el("h3", {}, `${layer} unit ${u}`));
        const a = target.appendChild(el("div", {class: "ask", "data-ask": "unit_map",
          "data-params": JSON.stringify({image: image, layer: layer, unit: u})}));
        target.appendChild(el("a", {href: `/unit/${encodeURIComponent(layer)}/${u}`}, "unit page"));
        start(a);
      });
    }
    box.append(picture(r.pictures.maps, "activation maps"), el("p", {}, "the image, then one map per unit; click a unit:"), buttons);
  },
  explain: (box, r) => {
    const n = r.numbers, masks = n.methods.some(m => "pointing game" in m);
    const cols = ["method", "deletion AUC"].concat(masks ? ["pointing game"] : [], ["seconds", "note"]);
    box.append(table(cols, n.methods.map(m => [el("td", {class: "method"}, m.method), numCell(m["deletion AUC"])]
      .concat(masks ? [numCell(m["pointing game"])] : [], [numCell(m.seconds, 2), el("td", {}, m.error || "")]))));
    for (const [name, methods] of Object.entries(n.pictures))
      box.append(picture(r.pictures[name], "attribution: " + methods.join(", ")));
  },
};

async function ask(kind, params) {
  const q = new URLSearchParams(params).toString();
  const res = await fetch(`/api/ask/${kind}?${q}`, {method: "POST"});
  return res.json().then(body => ({status: res.status, body}));
}

async function start(box) {
  const kind = box.dataset.ask, params = JSON.parse(box.dataset.params || "{}");
  Object.assign(box.dataset, params);
  box.replaceChildren(el("span", {class: "wait"}, `${kind.replace("_", " ")}: starting`));
  let {status, body} = await ask(kind, params);
  if (status >= 400) { box.replaceChildren(el("p", {class: "error"}, body.error)); return; }
  const bar = el("progress", {max: 1, value: 0}), text = el("span", {class: "wait"});
  const cancel = el("button", {type: "button", class: "cancel"}, "cancel");
  if (body.state !== "done") {
    box.replaceChildren(text, bar, cancel);
    cancel.addEventListener("click", () => fetch(`/api/job/${body.job}/cancel`, {method: "POST"}));
  }
  while (body.state === "running") {
    text.textContent = `${kind.replace("_", " ")}: ${body.step || "running"} `;
    if (body.total) { bar.max = body.total; bar.value = body.done; }
    await new Promise(ok => setTimeout(ok, 250));
    const res = await fetch(`/api/job/${body.job}`);
    body = await res.json();
    if (res.status >= 400) { box.replaceChildren(el("p", {class: "error"}, body.error)); return; }
  }
  box.replaceChildren();
  if (body.state === "done") { RENDER[kind](box, body); box.dataset.state = "done"; }
  else {
    box.dataset.state = body.state;
    box.append(el("p", {class: "error"}, body.state === "cancelled" ? "cancelled" : body.error));
    const again = box.appendChild(el("button", {type: "button"}, "compute again"));
    again.addEventListener("click", () => start(box));
  }
}

async function upload(file) {
  const status = document.getElementById("upload-status");
  status.textContent = "uploading...";
  const res = await fetch("/upload", {method: "POST", body: file,
    headers: {"Content-Type": file.type || "application/octet-stream"}});
  const body = await res.json();
  if (res.status >= 400) { status.textContent = body.error; status.className = "error"; return; }
  location.href = body.url;
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".ask[data-ask]").forEach(start);
  const input = document.getElementById("upload");
  if (input) input.addEventListener("change", () => input.files.length && upload(input.files[0]));
  document.querySelectorAll("select.pick").forEach(s => s.addEventListener("change", () => {
    const box = document.querySelector('.ask[data-ask="unit_map"]');
    box.dataset.params = JSON.stringify({image: s.value, layer: s.dataset.layer, unit: Number(s.dataset.unit)});
    start(box);
  }));
  document.querySelectorAll("select.layer-pick").forEach(s => s.addEventListener("change", () => {
    const box = document.querySelector("#layer-maps .ask");
    box.dataset.params = JSON.stringify({image: s.dataset.image, layer: s.value});
    start(box);
  }));
});
