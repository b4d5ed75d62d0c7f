"""Per-call overhead of PagemapScanTracker.scan() vs the plain C loop.

Builds benchmarks/c_baseline.c, runs it, runs the same measurement through
the binding (memwatch._memwatch), and prints both and their ratio:

    python3 benchmarks/bench_scan_overhead.py [pages] [dirty] [iterations] [repeats]

Both sides: a `pages`-page anonymous range under async uffd-wp, `dirty`
pages written (spread so that each is its own region), output buffer with
room for every page; the median over `repeats` runs of the mean ns per call.
  scan_noreset     scan(reset=False) in a tight loop (state constant)
  dirty_scan_reset write the pages (untimed), then time one scan(reset=True)
Only meaningful on a host where pagemap_scan_available() is true.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    from memwatch import _memwatch as mw
except ImportError:  # run from a checkout with the extension built in place
    sys.path.insert(0, str(HERE.parent))
    from memwatch import _memwatch as mw


def c_baseline(args: list[str]) -> dict[str, int]:
    cc = shutil.which(os.environ.get("CC", "cc")) or "gcc"
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "c_baseline"
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(exe),
                        str(HERE / "c_baseline.c")], check=True)
        out = subprocess.run([str(exe), *args], check=True, capture_output=True,
                             text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def binding(pages: int, dirty: int, iters: int, repeats: int) -> dict[str, int]:
    ps = mw.PAGE_SIZE
    m = mmap.mmap(-1, pages * ps)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t = mw.PagemapScanTracker()
    t.attach(addr, pages * ps)
    out = array.array("Q", bytes(8 * pages))
    targets = [addr + (i * (pages // dirty)) * ps for i in range(dirty)]
    scan, memset, clock = t.scan, ctypes.memset, time.perf_counter_ns
    length = pages * ps
    noreset, withreset = [], []
    try:
        for _ in range(repeats):
            for a in targets:
                memset(a, 1, 1)
            t0 = clock()
            for _ in range(iters):
                scan(addr, length, out, False)
            noreset.append((clock() - t0) // iters)
            assert scan(addr, length, out, False) == dirty
            total = 0
            for _ in range(iters):
                for a in targets:
                    memset(a, 1, 1)
                t0 = clock()
                n = scan(addr, length, out, True)
                total += clock() - t0
                assert n == dirty
            withreset.append(total // iters)
        # perf_counter_ns() pair cost, subtracted from the per-call timing.
        t0 = clock()
        for _ in range(iters):
            clock()
        timer = (clock() - t0) // iters
    finally:
        t.detach()
    return {
        "scan_noreset": int(statistics.median(noreset)),
        "dirty_scan_reset": max(0, int(statistics.median(withreset)) - timer),
    }


def main() -> int:
    ok, reason = mw.pagemap_scan_available()
    if not ok:
        print(f"pagemap_scan unavailable: {reason}", file=sys.stderr)
        return 1
    args = sys.argv[1:]
    pages, dirty, iters, repeats = (int(a) for a in (args + ["1024", "10", "20000", "7"][len(args):]))
    c = c_baseline([str(pages), str(dirty), str(iters), str(repeats)])
    py = binding(pages, dirty, iters, repeats)
    print(f"pages={pages} dirty={dirty} iterations={iters} repeats={repeats}")
    print(f"{'measurement':18} {'C ns/call':>10} {'binding ns/call':>16} {'ratio':>6} {'overhead ns':>12}")
    for k in c:
        print(f"{k:18} {c[k]:>10} {py[k]:>16} {py[k] / c[k]:>6.3f} {py[k] - c[k]:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
