"""Per-call overhead of PagemapScanTracker.scan() vs the plain C loop.

Builds benchmarks/c_baseline.c, runs it, runs the same measurement through
the binding (memwatch._memwatch), and prints both and their ratio:

    python3 benchmarks/bench_scan_overhead.py [pages] [dirty] [iterations] [repeats]

Both sides: a `pages`-page populated anonymous range under async uffd-wp, `dirty`
pages written (spread so that each is its own region), output buffer with
room for every page; every call timed on its own (timer cost subtracted),
median and 10th percentile over all calls (p10 is the steadier figure on a
busy machine).
  scan_noreset     scan(reset=False) in a tight loop (state constant)
  dirty_scan_reset write the pages (untimed), then time one scan(reset=True)
Only meaningful on a host where the pagemap_scan backend is available.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import shutil
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
from memwatch import _probes


def c_baseline(args: list[str]) -> dict[str, tuple[int, int]]:
    cc = shutil.which(os.environ.get("CC", "cc")) or "gcc"
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "c_baseline"
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(exe),
                        str(HERE / "c_baseline.c")], check=True)
        out = subprocess.run([str(exe), *args], check=True, capture_output=True,
                             text=True).stdout
    res = {}
    for line in out.splitlines():
        name, med, p10 = line.split()
        res[name] = (int(med), int(p10))
    return res


def _stats(samples: list[int], tcost: int) -> tuple[int, int]:
    samples.sort()
    med, p10 = samples[len(samples) // 2], samples[len(samples) // 10]
    return max(0, med - tcost), max(0, p10 - tcost)


def binding(pages: int, dirty: int, iters: int, repeats: int) -> dict[str, tuple[int, int]]:
    ps = mw.PAGE_SIZE
    m = mmap.mmap(-1, pages * ps, flags=mmap.MAP_PRIVATE)  # anonymous private, as in C
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    ctypes.memset(addr, 0, pages * ps)  # populated, as c_baseline.c's range
    t = mw.PagemapScanTracker()
    t.attach(addr, pages * ps)
    out = array.array("Q", bytes(8 * pages))
    targets = [addr + (i * (pages // dirty)) * ps for i in range(dirty)]
    scan, memset, clock = t.scan, ctypes.memset, time.perf_counter_ns
    length = pages * ps
    noreset: list[int] = []
    withreset: list[int] = []
    try:
        for _ in range(repeats):
            for a in targets:
                memset(a, 1, 1)
            for _ in range(iters):
                t0 = clock()
                scan(addr, length, out, False)
                noreset.append(clock() - t0)
            assert scan(addr, length, out, False) == dirty
        for _ in range(repeats):
            for _ in range(iters):
                for a in targets:
                    memset(a, 1, 1)
                t0 = clock()
                n = scan(addr, length, out, True)
                withreset.append(clock() - t0)
                assert n == dirty
        # Cost of a perf_counter_ns() pair, subtracted like the C side does.
        pair = []
        for _ in range(100000):
            t0 = clock()
            pair.append(clock() - t0)
        pair.sort()
        tcost = pair[len(pair) // 2]
    finally:
        t.detach()
    return {"scan_noreset": _stats(noreset, tcost),
            "dirty_scan_reset": _stats(withreset, tcost)}


def main() -> int:
    ok, reason = _probes.run("pagemap_scan", mw.pagemap_scan_available)
    if not ok:
        print(f"pagemap_scan unavailable: {reason}", file=sys.stderr)
        return 1
    args = sys.argv[1:]
    pages, dirty, iters, repeats = (int(a) for a in (args + ["1024", "10", "20000", "7"][len(args):]))
    c = c_baseline([str(pages), str(dirty), str(iters), str(repeats)])
    py = binding(pages, dirty, iters, repeats)
    print(f"pages={pages} dirty={dirty} iterations={iters} repeats={repeats}")
    print(f"{'measurement':18} {'stat':>4} {'C ns':>8} {'binding ns':>11} {'ratio':>6} {'overhead':>9}")
    for k in c:
        for i, stat in enumerate(("med", "p10")):
            cv, pv = c[k][i], py[k][i]
            print(f"{k:18} {stat:>4} {cv:>8} {pv:>11} {pv / cv:>6.3f} {pv - cv:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
