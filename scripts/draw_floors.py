"""Draws the floors of the edged package as docs/floors.svg, from the code's own imports.

    .venv/bin/python scripts/draw_floors.py           # write docs/floors.svg
    .venv/bin/python scripts/draw_floors.py --check   # exit 1 if it is out of date

The floors are tests/test_layout_rules.py's FLOORS (the contract the tests enforce); each
floor's box lists its packages, and an arrow joins two floors when the lower one is
imported by the upper. Only the structure is drawn (no line or import counts), so the
picture changes when the house does, not with every edit. Plain SVG, no graph library.
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_layout_rules import (  # noqa: E402
    DEVICE_MODULES,
    FLOORS,
    _edged_imports,
    _module_name,
    floor_of,
)

OUT = ROOT / "docs" / "floors.svg"
WIDTH, BOX_H, GAP, LEFT, BOXES_END = 1180, 44, 26, 240, 840


def _package(module: str) -> str:
    """The package a module is listed under: the longest FLOORS prefix it lies in."""
    prefixes = sorted((p for _, ps in FLOORS for p in ps), key=len, reverse=True)
    prefix = next(p for p in prefixes if module == p or module.startswith(p + "."))
    return "edged/__init__" if prefix == "edged" else prefix.replace(".", "/")


def measure() -> tuple[list[set[str]], set[tuple[int, int]]]:
    """The packages on each floor, and the (from floor, to floor) pairs of imports."""
    lines: list[set[str]] = [set() for _ in FLOORS]
    arrows: set[tuple[int, int]] = set()
    for path in DEVICE_MODULES:
        module = _module_name(path)
        floor = floor_of(module)
        lines[floor].add(_package(module))
        for name in _edged_imports(path):
            target = floor_of(name)
            if target != floor:
                arrows.add((floor, target))
    return lines, arrows


def draw() -> str:
    lines, arrows = measure()
    count = len(FLOORS)
    height = count * (BOX_H + GAP) + GAP
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    top = {}
    for index, (name, _) in enumerate(FLOORS):
        y = GAP + (count - 1 - index) * (BOX_H + GAP)  # the base at the bottom
        top[index] = y
        packages = ", ".join(sorted(lines[index]))
        out.append(f'<rect x="{LEFT}" y="{y}" width="{BOXES_END - LEFT}" height="{BOX_H}" '
                   f'rx="6" fill="#eef3fb" stroke="#4a6fa5"/>')
        out.append(f'<text x="10" y="{y + BOX_H / 2 + 4}" font-weight="bold">'
                   f'{index}. {escape(name)}</text>')
        out.append(f'<text x="{LEFT + 8}" y="{y + BOX_H / 2 + 4}">{escape(packages)}</text>')
    # One arrow per pair of floors that import along it, each in its own column right of
    # the boxes, from the bottom of the importing floor to the top of the imported one.
    out.append('<defs><marker id="head" viewBox="0 0 8 8" refX="7" refY="4" '
               'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L8,4 L0,8 z" '
               'fill="#4a6fa5"/></marker></defs>')
    for column, (source, target) in enumerate(sorted(arrows)):
        x = BOXES_END + 12 + column * 8
        y1, y2 = top[source] + BOX_H, top[target]
        colour = "#b03030" if target > source else "#4a6fa5"
        label = f"{FLOORS[source][0]} -> {FLOORS[target][0]}"
        out.append(f'<line x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" stroke="{colour}" '
                   f'stroke-opacity="0.6" marker-end="url(#head)">'
                   f'<title>{escape(label)}</title></line>')
    upward = sum(1 for source, target in arrows if target > source)
    out.append(f'<text x="10" y="{height - 6}" fill="#555">{len(arrows)} pairs of floors '
               f'joined by imports; {upward} upward (the tests allow none)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    svg = draw()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != svg:
            print(f"{OUT} is out of date: run scripts/draw_floors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(svg, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
