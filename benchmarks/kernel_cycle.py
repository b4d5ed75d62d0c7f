"""One write-and-collect cycle per backend on the running kernel (README's kernel table).

A cycle = write one byte into each of N pages (1, 100, 10000, spread evenly
over a populated 20000-page private mapping, written by numpy so that the
Python loop does not dominate), then ``Watch.dirty_into(out, reset=True)``:
what a user pays per round, faults included.  Every available backend is
measured in the same run (ratios within one run are what to compare; a TCG
guest's absolute figures are emulated).  ``--clear-refs`` also times one
``clear_refs`` write (what every softdirty reset costs: it takes the target's
mmap write lock and walks all its page tables) with 0 and 512 MiB populated.

Usage: python benchmarks/kernel_cycle.py [--rounds N] [--pages 1,100,10000]
                                          [--clear-refs] [--json FILE]
Prints a Markdown table (median µs per cycle).  Not a pytest-benchmark suite
(benchmarks/bench_dirty.py is); a short script meant to run once per kernel.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import time
from array import array
from typing import Any

import numpy as np

import memwatch

PAGE = mmap.PAGESIZE
REGION = 20_000


def _mapping(npages: int) -> mmap.mmap:
    m = mmap.mmap(-1, npages * PAGE, flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    np.frombuffer(m, dtype=np.uint8)[::PAGE] = 1  # populate every page
    return m


def cycle_us(backend: str, n: int, rounds: int) -> float:
    m = _mapping(REGION)
    try:
        arr = np.frombuffer(m, dtype=np.uint8)
        targets = arr[:: (REGION // n) * PAGE][:n]
        out = array("Q", bytes(8 * REGION))
        with memwatch.Watch(m, backend=backend) as w:
            w.dirty_into(out, reset=True)
            times = []
            for r in range(rounds + 1):
                t0 = time.perf_counter_ns()
                targets[:] = (r + 2) & 0xFF
                k = w.dirty_into(out, reset=True)
                dt = time.perf_counter_ns() - t0
                if k < n:
                    raise AssertionError(f"{backend}: {k} pages reported, {n} written")
                if r:  # the first round warms up
                    times.append(dt)
        del arr, targets
        return statistics.median(times) / 1000
    finally:
        m.close()


def clear_refs_ms(populated_mib: int, rounds: int = 5) -> float:
    m = _mapping(populated_mib * 256) if populated_mib else None
    try:
        times = []
        with open("/proc/self/clear_refs", "w") as f:
            for _ in range(rounds):
                t0 = time.perf_counter_ns()
                f.write("4")
                f.flush()
                times.append(time.perf_counter_ns() - t0)
                if m is not None:
                    np.frombuffer(m, dtype=np.uint8)[::PAGE] += 1  # dirty again
        return statistics.median(times) / 1e6
    finally:
        if m is not None:
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pages", default="1,100,10000")
    ap.add_argument("--clear-refs", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.pages.split(",")]
    names = [b.name for b in memwatch.backends() if b.available]
    result: dict[str, Any] = {
        "kernel": platform.release(),
        "in_guest": os.environ.get("MEMWATCH_IN_GUEST") == "1",
        "rounds": args.rounds,
        "us": {},
    }
    print(f"kernel {platform.release()}, {args.rounds} rounds, median µs per cycle "
          f"(write N pages of {REGION} + dirty_into(reset=True))")
    print("| backend | " + " | ".join(f"{n} pages" for n in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name in names:
        row = [cycle_us(name, n, args.rounds) for n in sizes]
        result["us"][name] = dict(zip(map(str, sizes), row))
        print(f"| {name} | " + " | ".join(f"{x:,.1f}" for x in row) + " |", flush=True)
    if args.clear_refs and "softdirty" in names:
        empty, full = clear_refs_ms(0), clear_refs_ms(512)
        result["clear_refs_ms"] = {"0MiB": empty, "512MiB": full}
        print(f"clear_refs: {empty:.3f} ms with nothing populated, {full:.3f} ms with "
              f"512 MiB populated (~{(full - empty) * 2:.2f} ms per GiB, mmap write lock held)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
