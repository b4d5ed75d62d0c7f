"""Median-ratio table for bench_dirty.py results.

    python -m pytest benchmarks/bench_dirty.py --benchmark-json=out.json
    python benchmarks/ratios.py out.json

(benchmarks/conftest.py prints the same table at the end of every run.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

APIS = ("raw", "dirty_into", "dirty")


def _us(x: float | None) -> str:
    return f"{x * 1e6:9.2f}" if x is not None else f"{'-':>9}"


def _ratio(x: float | None, raw: float | None) -> str:
    return f"{x / raw:9.2f}" if x is not None and raw else f"{'-':>9}"


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """rows: dicts with backend, api, pages and median (seconds)."""
    med: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        med.setdefault((str(r["backend"]), int(r["pages"])), {})[str(r["api"])] = float(r["median"])
    head = (f"{'backend':<13} {'pages':>6} {'raw us':>9} {'into us':>9} {'dirty us':>9}"
            f" {'into/raw':>9} {'dirty/raw':>9} {'into/page us':>12}")
    lines = [head, "-" * len(head)]
    for (backend, pages), m in sorted(med.items()):
        raw, into, dirty = (m.get(a) for a in APIS)

        per_page = f"{into * 1e6 / pages:12.4f}" if into is not None else f"{'-':>12}"
        lines.append(f"{backend:<13} {pages:>6} {_us(raw)} {_us(into)} {_us(dirty)}"
                     f" {_ratio(into, raw)} {_ratio(dirty, raw)} {per_page}")
    return "\n".join(lines)


def rows_from_json(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for b in doc.get("benchmarks", []):
        info = b.get("extra_info", {})
        if {"backend", "api", "pages"} <= info.keys():
            rows.append({**info, "median": b["stats"]["median"]})
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        print(table(rows_from_json(json.load(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
