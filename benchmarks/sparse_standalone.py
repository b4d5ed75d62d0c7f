"""Sparse check outside pytest: dirty_into over 1 GiB .. 1 TiB reservations.

    python3 benchmarks/sparse_standalone.py            # pagemap_scan/uffd/mprotect on a host
    bash ci/vm-run.sh -- env PYTHONPATH=$PWD python3 benchmarks/sparse_standalone.py

64 MiB populated in the middle of each reservation, 1 % of it written before
every timed Watch.dirty_into(out, reset=True); median and minimum of 11
rounds.  bench_scaling.py::test_sparse asks the same question inside the
benchmark session; in the TCG guest that session showed syscall 1.6x and
mprotect 4x at 1 TiB while this script, same kernel and API, showed 0.88x
and 0.94x (README, Benchmarks): compare the two when the suite's number
looks off.
"""

import ctypes
import mmap
import statistics
import time
from array import array

import memwatch

P = mmap.PAGESIZE
MIB, GIB, POP = 1 << 20, 1 << 30, 64 << 20


def region(size: int) -> tuple[mmap.mmap, int, int]:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_NORESERVE", 0x4000))
    m.madvise(mmap.MADV_NOHUGEPAGE)
    a = ctypes.addressof(ctypes.c_char.from_buffer(m))
    base = (size - POP) // 2 // MIB * MIB
    ctypes.memset(a + base, 0, POP)
    return m, a, base


def main() -> None:
    out = array("Q", bytes(8 * (POP // P)))
    names = [b.name for b in memwatch.backends()
             if b.available and b.name in ("syscall", "pagemap_scan", "uffd", "mprotect")]
    for backend in names:
        for size in (GIB, 16 * GIB, 1 << 40, GIB):
            m, a, base = region(size)
            mv = memoryview(m)
            n = POP // P // 100
            step = POP // n // P * P
            with memwatch.Watch(a, size, backend=backend) as w:
                ts = []
                for i in range(12):
                    mv[base:base + n * step:step] = bytes([(i & 1) + 1]) * n
                    t1 = time.perf_counter_ns()
                    c = w.dirty_into(out, reset=True)
                    t2 = time.perf_counter_ns()
                    assert c >= n, (c, n)
                    if i:
                        ts.append(t2 - t1)
                print(f"{backend:<13} {size >> 30:>5} GiB reserved: dirty_into median "
                      f"{statistics.median(ts) / 1e3:8.0f} us, min {min(ts) / 1e3:8.0f} us",
                      flush=True)
            mv.release()
            m.close()


if __name__ == "__main__":
    main()
