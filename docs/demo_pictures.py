"""Make the demo's pictures and numbers in docs/ from one run of the demo pipeline:

    python docs/demo_pictures.py            # the full demo, as `convscope demo` (about a minute)

Runs :func:`convscope.app.report.demo_report`, copies its pictures to ``docs/images/demo_*.png``,
writes its numbers to ``docs/demo_numbers.json`` and rewrites the methods table of
``docs/attribution.md`` between its ``demo-numbers`` markers. ``tests/test_docs_numbers.py``
recomputes the table's numbers with the library and compares them.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
START, END = "<!-- demo-numbers:start -->", "<!-- demo-numbers:end -->"
PICTURES = ("saliency", "cam", "classes", "deepdream", "inversion", "texture", "style", "fooling", "filters",
            "activation_maps", "top_patches", "tsne_grid")


def table(numbers: dict) -> str:
    """The markdown table of the methods, best pointing game first (ties: lower deletion AUC)."""
    rows = sorted(numbers["methods"], key=lambda r: (-r["pointing game"], r["deletion AUC (lower is better)"]))
    lines = ["| method | pointing game | deletion AUC |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['pointing game']:.3f} | {r['deletion AUC (lower is better)']:.3f} |" for r in rows]
    return "\n".join(lines)


def rewrite(path: Path, numbers: dict) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table(numbers)}\n{END}{tail}")


def main(argv=None) -> int:
    from convscope.app.report import demo_report

    with tempfile.TemporaryDirectory() as tmp:
        page = demo_report(Path(tmp) / "demo", log=lambda text: print(text, file=sys.stderr, flush=True))
        for name in PICTURES:
            shutil.copyfile(page.parent / "images" / f"{name}.png", DOCS / "images" / f"demo_{name}.png")
        numbers = json.loads((page.parent / "numbers.json").read_text())
    (DOCS / "demo_numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    rewrite(DOCS / "attribution.md", numbers)
    print(f"wrote docs/images/demo_*.png, docs/demo_numbers.json and the table of docs/attribution.md "
          f"({sum(numbers['sections'].values()):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
