"""The summary tables of a benchmark run, from pytest-benchmark results.

    python -m pytest benchmarks/ --benchmark-json=out.json
    python benchmarks/ratios.py out.json [--plot chart.png [--title TEXT]]

(benchmarks/conftest.py prints the same tables as the very last thing of every
run, after pytest-benchmark's own.)  Every benchmark in benchmarks/ carries
``extra_info["kind"]``; each kind has its table:

``cycle``    write N pages + collect-and-reset, median us per row and page
             count; the ``dirty_into`` cost over the raw binding (into/raw)
``scaling``  get-and-reset of a populated region: ns per scanned page and per
             dirty page, by size and share written
``sparse``   a fixed populated part inside ever larger reservations: time
             relative to the populated part alone (target <= 1.1x at 1 TiB)
``poll``     a 60 Hz poll of a clean region: share of one core (target < 2 %)
``binding``  dirty_into (and the C scanner and pybind11 scan() under it) vs
             the same loop in plain C (c_baseline.c): ratio and ns of
             overhead per call (targets <= 1.05x on 1 GiB, <= 0.5 us on
             1 page)
``threads``  scans per second with 1 and 2 Python threads (GIL released)
``memory``   resident and page-table growth per watched GiB
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

Row = Mapping[str, Any]


def _fmt(x: float | None, spec: str, width: int) -> str:
    return format(x, spec).rjust(width) if x is not None else "-".rjust(width)


def _grid(title: str, rows: dict[str, dict[Any, float]], cols: list[Any], spec: str,
          width: int = 10) -> list[str]:
    lw = max([len(title), *(len(k) for k in rows)]) + 1
    head = title.ljust(lw) + "".join(str(c).rjust(width) for c in cols)
    out = [head, "-" * len(head)]
    for k, vals in rows.items():
        out.append(k.ljust(lw) + "".join(_fmt(vals.get(c), spec, width) for c in cols))
    return out


def cycle_table(rows: list[Row]) -> list[str]:
    cyc = [r for r in rows if r["kind"] == "cycle"]
    if not cyc:
        return []
    pages = sorted({int(r["pages"]) for r in cyc})
    into: dict[str, dict[Any, float]] = {}
    raw: dict[str, dict[Any, float]] = {}
    for r in cyc:
        (raw if r.get("api") == "raw" else into).setdefault(str(r["row"]), {})[int(r["pages"])] = (
            r["median"] * 1e6)
    out = _grid("cycle: median us (write N pages + dirty_into(reset=True))", into, pages, ".1f")
    mhz = next((float(r["mhz"]) for r in cyc if r.get("mhz")), None)
    if mhz:
        from memwatch._bench import PAGES, SEED_KCYCLES

        kc = {k: {n: us * mhz / 1e3 for n, us in v.items()} for k, v in into.items()}
        kc.update({f"seed: {k}": dict(zip(PAGES, vals)) for k, vals in SEED_KCYCLES.items()})
        out += ["", *_grid(f"cycle: kcycles at {mhz:.0f} MHz; seed = v1 authors' machine", kc,
                           pages, ".1f")]
    ratio = {k: {n: v[n] / raw[k][n] for n in v if raw.get(k, {}).get(n)}
             for k, v in into.items() if k in raw}
    if ratio:
        out += ["", *_grid("cycle via dirty_into / via raw tracker.scan", ratio, pages, ".3f")]
    # The stretch goals, as ratios of this run.
    if "syscall" in into:
        sc = into["syscall"]
        lines = []
        for other, spec in (("pagemap_scan", "syscall/pagemap_scan (<= 1)"),
                            ("mprotect", "mprotect/syscall (>= 10 at 1000, 10000)"),
                            ("uffd", "uffd/syscall (>= 100 at 1000, 10000)")):
            if other in into:
                vals = {n: (sc[n] / into[other][n] if other == "pagemap_scan"
                            else into[other][n] / sc[n]) for n in pages if n in sc}
                lines.append((spec, vals))
        if lines:
            out += ["", *_grid("targets (this run)", dict(lines), pages, ".2f")]
    return out


def scaling_table(rows: list[Row]) -> list[str]:
    sc = [r for r in rows if r["kind"] == "scaling"]
    if not sc:
        return []
    sizes = sorted({int(r["mib"]) for r in sc})
    scanned: dict[str, dict[Any, float]] = {}
    dirty: dict[str, dict[Any, float]] = {}
    for r in sc:
        key = f"{r['backend']} {r['percent']:>3}%"
        scanned.setdefault(key, {})[int(r["mib"])] = r["median"] * 1e9 / r["pages"]
        if r["dirty"]:
            dirty.setdefault(key, {})[int(r["mib"])] = r["median"] * 1e9 / r["dirty"]
    cols = sizes
    out = _grid("scaling: ns per scanned page (MiB ->)", dict(sorted(scanned.items())), cols,
                ".2f")
    out += ["", *_grid("scaling: ns per dirty page (MiB ->)", dict(sorted(dirty.items())), cols,
                       ".1f")]
    return out


def sparse_table(rows: list[Row]) -> list[str]:
    sp = [r for r in rows if r["kind"] == "sparse"]
    if not sp:
        return []
    sizes = sorted({int(r["reserved_gib"]) for r in sp})
    med: dict[str, dict[Any, float]] = {}
    for r in sp:
        med.setdefault(str(r["backend"]), {})[int(r["reserved_gib"])] = r["median"]
    rel = {b: {s: v / m[min(m)] for s, v in m.items()} for b, m in med.items()}
    pop = sp[0]["populated_mib"]
    out = _grid(f"sparse: {pop} MiB populated, time / time in {min(sizes)} GiB (GiB reserved ->)",
                rel, sizes, ".2f")
    us = {b: {s: v * 1e6 for s, v in m.items()} for b, m in med.items()}
    out += ["", *_grid("sparse: median us per get-and-reset (GiB reserved ->)", us, sizes, ".1f")]
    return out


def poll_table(rows: list[Row]) -> list[str]:
    po = [r for r in rows if r["kind"] == "poll"]
    if not po:
        return []
    mib = po[0]["mib"]
    head = f"poll: 60 Hz of a clean {mib} MiB region"
    out = [f"{head:<36}{'wall us':>10}{'cpu us':>10}{'% core':>9}", "-" * 65]
    for r in sorted(po, key=lambda r: str(r["backend"])):
        cpu = r["cpu_median_s"]
        out.append(f"{r['backend']:<36}{r['median'] * 1e6:>10.1f}{cpu * 1e6:>10.1f}"
                   f"{cpu * 60 * 100:>9.2f}")
    return out


def binding_table(rows: list[Row]) -> list[str]:
    bi = [r for r in rows if r["kind"] == "binding"]
    out: list[str] = []
    if bi:
        head = (f"{'binding: call vs plain C':<40}{'C ns':>10}{'call ns':>10}"
                f"{'ratio':>8}{'over ns':>9}{'tight ns':>10}{'over':>7}")
        out = [head, "-" * len(head)]
        for r in bi:
            py = r["median"] * 1e9 - r["timer_ns"]
            c = r["c_median_ns"]
            tight = r.get("tight_ns")
            label = f"{r['backend']} {r['case']} {r.get('via', 'dirty_into')}"
            out.append(f"{label:<40}{c:>10.0f}{py:>10.0f}{py / c if c else 0:>8.3f}"
                       f"{py - c:>9.0f}{_fmt(tight, '.0f', 10)}"
                       f"{_fmt(None if tight is None else tight - c, '.0f', 7)}")
    th = [r for r in rows if r["kind"] == "threads"]
    if th:
        rate: dict[str, dict[Any, float]] = {}
        for r in th:
            rate.setdefault(str(r["backend"]), {})[int(r["threads"])] = (
                r["threads"] * r["scans"] / r["median"])
        out += ["", *_grid("threads: scans/s (threads ->)", rate, [1, 2], ".0f")]
        ov = {str(r["backend"]): float(r.get("overlap", 0.0)) for r in th if r["threads"] == 2}
        sp = {b: {"2/1": v[2] / v[1], "overlap": ov.get(b, 0.0)}
              for b, v in rate.items() if 1 in v and 2 in v}
        out += _grid("threads: speed-up with 2; time both inside a scan", sp,
                     ["2/1", "overlap"], ".2f")
    return out


def memory_table(rows: list[Row]) -> list[str]:
    me = [r for r in rows if r["kind"] == "memory"]
    if not me:
        return []
    out = [f"{'memory per watched GiB':<34}{'RSS KiB':>10}{'VmPTE KiB':>11}{'attach ms':>11}",
           "-" * 66]
    for r in sorted(me, key=lambda r: (str(r["target"]), str(r["backend"]))):
        gib = r["mib"] / 1024
        out.append(f"{r['backend'] + ' ' + r['target']:<34}{r['rss_kib'] / gib:>10.0f}"
                   f"{r['pte_kib'] / gib:>11.0f}{r['median'] * 1e3:>11.2f}")
    return out


def tables(rows: Iterable[Row]) -> str:
    rs = [r for r in rows if "kind" in r]
    parts = [cycle_table(rs), scaling_table(rs), sparse_table(rs), poll_table(rs),
             binding_table(rs), memory_table(rs)]
    return "\n\n".join("\n".join(p) for p in parts if p)


def markdown_cycle(rows: Iterable[Row]) -> str:
    """The cycle table (dirty_into rows) as markdown, for the README."""
    cyc = [r for r in rows if r.get("kind") == "cycle" and r.get("api") != "raw"]
    pages = sorted({int(r["pages"]) for r in cyc})
    med: dict[str, dict[int, float]] = {}
    for r in cyc:
        med.setdefault(str(r["row"]), {})[int(r["pages"])] = r["median"] * 1e6
    out = ["| us per cycle | " + " | ".join(str(n) for n in pages) + " |",
           "|---|" + "---:|" * len(pages)]
    for k, v in med.items():
        out.append(f"| {k} | " + " | ".join(
            (f"{v[n]:.1f}" if v[n] < 100 else f"{v[n]:.0f}") if n in v else "-"
            for n in pages) + " |")
    return "\n".join(out)


def plot_scaling(rows: Iterable[Row], path: str, title: str) -> None:
    """Scaling curves: ns per scanned page against MiB, one line per backend
    and share written (solid 100 %, dashed 1 %, dotted 0 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("kind") == "scaling":
            curves.setdefault((str(r["backend"]), int(r["percent"])), []).append(
                (int(r["mib"]), r["median"] * 1e9 / r["pages"]))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colors: dict[str, Any] = {}
    for (backend, pct), pts in sorted(curves.items()):
        pts.sort()
        style = {100: "-", 1: "--", 0: ":"}.get(pct, "-.")
        line = ax.plot([p for p, _ in pts], [max(v, 1e-3) for _, v in pts], style, marker="o",
                       color=colors.get(backend), label=f"{backend} {pct} %")[0]
        colors[backend] = line.get_color()
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("populated region, MiB")
    ax.set_ylabel("ns per scanned page (get-and-reset)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rows_from_json(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for b in doc.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "kind" in info:
            rows.append({**info, "median": b["stats"]["median"]})
    return rows


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="summary tables of a benchmarks/ JSON file")
    p.add_argument("json")
    p.add_argument("--plot", metavar="PNG", help="draw the cycle chart (matplotlib)")
    p.add_argument("--title", default=None, help="chart title (default: from the JSON)")
    p.add_argument("--markdown", action="store_true", help="also the cycle table as markdown")
    p.add_argument("--plot-scaling", metavar="PNG", help="draw the scaling curves (matplotlib)")
    args = p.parse_args(argv[1:])
    with open(args.json, encoding="utf-8") as f:
        doc = json.load(f)
    rows = rows_from_json(doc)
    print(tables(rows))
    if args.markdown:
        print()
        print(markdown_cycle(rows))
    if args.plot:
        from memwatch import _bench

        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["kind"] == "cycle" and r.get("api", "dirty_into") in ("dirty_into", "none"):
                series.setdefault(str(r["row"]), []).append((int(r["pages"]), r["median"] * 1e6))
        mi = doc.get("machine_info", {})
        title = args.title or (f"memwatch cycle, Linux {mi.get('release', '?')}, "
                               f"{mi.get('cpu', {}).get('brand_raw', '')}, {doc.get('datetime', '')[:16]}")
        _bench.plot(series, args.plot, title)
    if args.plot_scaling:
        plot_scaling(rows, args.plot_scaling, args.title or "memwatch scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
