"""The binding's own cost: dirty_into against the same loop in plain C.

``test_vs_c[<backend>-<case>-<via>]``
    A get-and-reset scan of a populated private range, with the case's pages
    written (untimed) before each call, against benchmarks/c_baseline.c
    doing the same ioctl/syscall with the same arguments on the same kind of
    range in the same run (a subprocess, run once per backend and case, just
    before the first of its rows).  ``via``: ``dirty_into`` is
    ``Watch.dirty_into(out, reset=True)``; ``scanner`` the C function it
    calls (``tracker.scanner()``, METH_FASTCALL); ``scan`` the pybind11
    method ``tracker.scan(start, length, out, True)``.  Cases: ``1page`` (a
    1-page range, that page written: the per-call overhead; target <= 0.5 us
    over C), ``1000pages`` (10 of them written) and ``1GiB`` (262144 pages,
    10 written: target <= 1.05x C).  Both sides subtract the cost of their
    clock pair.  ``tight_ns`` (extra_info, the table's ``tight`` columns):
    the same call timed in a plain loop as c_baseline.c times its own,
    without pytest-benchmark's runner frames (~0.2 us per round).  Backends with a C twin: pagemap_scan (c_baseline ``lib``)
    and syscall (``syscall``).
``test_threads[<backend>-<n>]``
    n = 1 or 2 Python threads, each polling its own clean populated 256 MiB
    range (64 MiB in the guest) with ``dirty_into(reset=True)``; the binding
    releases the GIL, so two threads should do close to twice the scans per
    second on two free cores (this machine's cores are shared: compare the
    two in one run only).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import subprocess
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GUEST, available, smoke

import memwatch

HERE = Path(__file__).resolve().parent
PAGE = mmap.PAGESIZE
MIB = 1 << 20
C_MODE = {"pagemap_scan": "lib", "syscall": "syscall"}
CASES = {"1page": (1, 1), "1000pages": (1000, 10), "1GiB": ((1 << 30) // PAGE, 10)}
ROUNDS = {"1page": (500 if GUEST else 20000), "1000pages": (200 if GUEST else 5000),
          "1GiB": (20 if GUEST else 200)}
VIAS = ["dirty_into", "scanner", "scan"]


@pytest.fixture(scope="module")
def c_baseline() -> Iterator[Path]:
    cc = shutil.which(os.environ.get("CC", "cc")) or "gcc"
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "c_baseline"
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(exe),
                        str(HERE / "c_baseline.c")], check=True)
        yield exe


def _timer_pair_ns() -> float:
    clock = time.perf_counter_ns
    pair = []
    for _ in range(20000):
        t0 = clock()
        pair.append(clock() - t0)
    pair.sort()
    return float(pair[len(pair) // 2])


_C_RESULTS: dict[tuple[str, str, int], dict[str, int]] = {}


def _c_run(exe: Path, backend: str, case: str, rounds: int) -> dict[str, int]:
    """c_baseline's medians for (backend, case), once per run: every ``via``
    row of the case is compared with the same C figure."""
    key = (backend, case, rounds)
    if key not in _C_RESULTS:
        pages, dirty = CASES[case]
        iters, repeats = max(3, rounds // 5), 5
        res = subprocess.run([str(exe), str(pages), str(dirty), str(iters), str(repeats),
                              C_MODE[backend]], check=True, capture_output=True, text=True)
        _C_RESULTS[key] = {line.split()[0]: int(line.split()[1])
                           for line in res.stdout.splitlines()}
    return _C_RESULTS[key]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", [b for b in available() if b in C_MODE])
def test_vs_c(benchmark: Any, request: pytest.FixtureRequest, c_baseline: Path,
              backend: str, case: str, via: str) -> None:
    pages, dirty = CASES[case]
    rounds = 3 if smoke(request.config) else ROUNDS[case]
    c = _c_run(c_baseline, backend, case, rounds)
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    ctypes.memset(addr, 0, pages * PAGE)
    out = array("Q", bytes(8 * pages))
    view = memoryview(m)
    step = pages // dirty * PAGE
    payload = b"\x01" * dirty
    try:
        with memwatch.Watch(m, backend=backend) as w:
            call = _caller(w, via, out)

            def write() -> None:
                view[0:dirty * step:step] = payload

            n = benchmark.pedantic(call, setup=write, rounds=rounds, iterations=1,
                                   warmup_rounds=10)
            assert n == dirty
            tight = _tight_median_ns(call, write, rounds)
    finally:
        view.release()
        m.close()
    benchmark.group = f"binding-{case}"
    benchmark.extra_info.update(kind="binding", backend=backend, case=case, via=via, pages=pages,
                                dirty=dirty, c_median_ns=c["dirty_scan_reset"],
                                timer_ns=_timer_pair_ns(), tight_ns=tight)


def _tight_median_ns(call: Callable[[], int], write: Callable[[], None], rounds: int) -> float:
    """The same call timed the way c_baseline.c times its own: a clock pair
    right around it, in a plain loop (pytest-benchmark's runner adds its own
    Python frames, ~0.2 us, to every round); median minus the clock pair."""
    clock = time.perf_counter_ns
    spans = []
    for _ in range(rounds):
        write()
        t0 = clock()
        call()
        spans.append(clock() - t0)
    spans.sort()
    return float(spans[len(spans) // 2]) - _timer_pair_ns()


def _caller(w: memwatch.Watch, via: str, out: array[int]) -> Callable[[], int]:
    """The timed call: one get-and-reset of the whole range through *via*."""
    if via == "dirty_into":
        into = w.dirty_into
        return lambda: into(out, reset=True)
    tracker = w._tracker  # the Watch is alone on its pages: its direct tracker
    assert tracker is not None
    address, length = w.address, w.length
    if via == "scanner":
        if not hasattr(tracker, "scanner"):
            pytest.skip("this build has no tracker.scanner()")
        scan = tracker.scanner()
    else:
        scan = tracker.scan
    return lambda: scan(address, length, out, True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", [b for b in available(partial_reset=True)
                                     if b in ("pagemap_scan", "syscall")])
def test_threads(benchmark: Any, request: pytest.FixtureRequest, backend: str,
                 threads: int) -> None:
    size = (4 if smoke(request.config) else (64 if GUEST else 256)) * MIB
    scans = 3 if smoke(request.config) else (10 if GUEST else 100)
    maps, watches = [], []
    for _ in range(threads):
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        m.madvise(mmap.MADV_NOHUGEPAGE)
        ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 0, size)
        maps.append(m)
        watches.append(memwatch.Watch(m, backend=backend))
    outs = [array("Q", bytes(8 * 1024)) for _ in range(threads)]

    spans: list[list[tuple[int, int]]] = [[] for _ in range(threads)]

    def poller(w: memwatch.Watch, out: array[int], mine: list[tuple[int, int]]) -> None:
        clock = time.perf_counter_ns
        for _ in range(scans):
            t0 = clock()
            w.dirty_into(out, reset=True)
            mine.append((t0, clock()))

    def run() -> None:
        for sp in spans:
            sp.clear()
        ts = [threading.Thread(target=poller, args=(w, o, sp))
              for w, o, sp in zip(watches, outs, spans)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    try:
        benchmark.pedantic(run, rounds=1 if smoke(request.config) else 5, iterations=1,
                           warmup_rounds=1)
    finally:
        for w in watches:
            w.close()
        for m in maps:
            m.close()
    benchmark.group = f"threads-{backend}"
    benchmark.extra_info.update(kind="threads", backend=backend, threads=threads, scans=scans,
                                mib=size // MIB, overlap=_overlap(spans))


def _overlap(spans: list[list[tuple[int, int]]]) -> float:
    """Share of thread 0's time inside dirty_into during which thread 1 was
    inside it too (last round).  Near 0 would mean the scans serialize (the
    GIL held across the kernel call); with 2 free cores it approaches 1."""
    if len(spans) < 2 or not spans[0]:
        return 0.0
    both = 0
    for a0, a1 in spans[0]:
        for b0, b1 in spans[1]:
            both += max(0, min(a1, b1) - max(a0, b0))
    total = sum(b - a for a, b in spans[0])
    return both / total if total else 0.0
