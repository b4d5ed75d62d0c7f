"""pagemap_scan before/after, side by side: two builds of the extension.

    python3 benchmarks/pagemap_passes.py BEFORE_DIR AFTER_DIR [rounds=5]

Each *_DIR holds a ``memwatch`` package (e.g. a copy of main's build in
place).  Workers (one process per build and round, alternating, so both
see the same machine load) measure with the pagemap_scan backend, CPU
time of the calling thread, median of many calls:

  poll 1G      dirty_into(out, reset=True) of a clean, populated 1 GiB
  poll 1T      the same 1 GiB populated inside a 1 TiB reservation
  reset N      write N pages (strided over the 1 GiB, untimed), then one
               dirty_into(out, reset=True); checked to report exactly N

Prints medians (us) per build and the after/before ratio; the poll rows
also as % of a core at 60 Hz.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from array import array

GIB = 1 << 30
PS = mmap.PAGESIZE


def worker() -> None:
    import memwatch

    res: dict[str, float] = {}
    tt = time.thread_time_ns
    m = mmap.mmap(-1, GIB, flags=mmap.MAP_PRIVATE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    view = memoryview(m)
    for off in range(0, GIB, PS):
        view[off] = 1
    out = array("Q", bytes(8 * 16384))
    with memwatch.Watch(m, backend="pagemap_scan") as w:
        into = w.dirty_into
        cpu = []
        for _ in range(40):
            t0 = tt()
            n = into(out, reset=True)
            cpu.append(tt() - t0)
            assert n == 0
        res["poll 1G"] = statistics.median(cpu) / 1e3
        pages = GIB // PS
        for dirty in (1, 100, 10000):
            stride = pages // dirty
            cpu = []
            for r in range(15):
                for i in range(dirty):
                    view[(i * stride + r % stride) * PS] = r & 0xFF
                t0 = tt()
                n = into(out, reset=True)
                cpu.append(tt() - t0)
                assert n == dirty, (n, dirty)
            res[f"reset {dirty}"] = statistics.median(cpu) / 1e3
    view.release()
    m.close()
    # 1 GiB populated inside a 1 TiB reservation.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    tib = 1 << 40
    addr = libc.mmap(None, tib, 3, 0x22 | 0x4000, -1, 0)  # PRIVATE|ANON|NORESERVE
    assert addr not in (None, ctypes.c_void_p(-1).value)
    buf = (ctypes.c_char * tib).from_address(addr)
    base = addr + tib // 2
    libc.madvise(ctypes.c_void_p(base), ctypes.c_size_t(GIB), 15)  # NOHUGEPAGE
    ctypes.memset(base, 1, GIB)
    with memwatch.Watch(memoryview(buf), backend="pagemap_scan") as w:
        cpu = []
        for _ in range(40):
            t0 = tt()
            n = w.dirty_into(out, reset=True)
            cpu.append(tt() - t0)
            assert n == 0
        res["poll 1T"] = statistics.median(cpu) / 1e3
    print(json.dumps(res))


def main() -> None:
    before, after = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    got: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(rounds):
        for name, path in (("before", before), ("after", after)):
            env = dict(os.environ, PYTHONPATH=path)
            p = subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True,
                               capture_output=True, text=True)
            got[name].append(json.loads(p.stdout))
    keys = list(got["before"][0])
    print(f"{'us (median of ' + str(rounds) + ' workers)':32} {'before':>9} {'after':>9} {'ratio':>6}")
    for k in keys:
        b = statistics.median(r[k] for r in got["before"])
        a = statistics.median(r[k] for r in got["after"])
        extra = f"   {b * 60 / 1e4:.2f} % -> {a * 60 / 1e4:.2f} % of a core at 60 Hz" if k.startswith("poll") else ""
        print(f"{k:32} {b:9.1f} {a:9.1f} {a / b:6.2f}{extra}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
