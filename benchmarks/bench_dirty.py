"""Per-call cost of collecting dirty pages: the raw binding vs the facade.

For every available backend and 1, 10, 100, 1000, 10000 written pages (spread
evenly over a 10000-page mapping), time one scan *with reset* through:

``raw``         ``tracker.scan(start, length, out, True)`` (the C++ binding),
``dirty_into``  ``Watch.dirty_into(out, reset=True)`` (the zero-allocation path),
``dirty``       ``Watch.dirty(reset=True)`` (returns a new ``array('Q')``).

The writes happen in the untimed setup of every round.  All variants run in
one session so their ratios are comparable; test ids are
``test_scan[<backend>-<api>-<pages:05d>]`` and every benchmark carries
``extra_info`` = {backend, api, pages}; the session ends with a table of median
ratios (benchmarks/conftest.py), and ``python benchmarks/ratios.py FILE.json``
prints the same table from ``--benchmark-json=FILE.json``.

Run:  python -m pytest benchmarks/bench_dirty.py -q
In the QEMU guest (MEMWATCH_IN_GUEST=1) rounds are cut tenfold; compare
backends within one run only, never guest figures with host ones.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import memwatch

PAGE = mmap.PAGESIZE
REGION = 10_000  # pages (about 40 MiB)
PAGES = (1, 10, 100, 1000, 10_000)
APIS = ("raw", "dirty_into", "dirty")
ROUNDS = {1: 300, 10: 300, 100: 100, 1000: 30, 10_000: 10}
if os.environ.get("MEMWATCH_IN_GUEST") == "1":  # TCG: Python runs 15-35x slower
    ROUNDS = {n: max(5, r // 10) for n, r in ROUNDS.items()}
AVAILABLE = [b.name for b in memwatch.backends() if b.available]
# MEMWATCH_BENCH_BACKENDS=syscall,pagemap_scan limits the run (the whole
# matrix takes more than 18 minutes in the TCG guest).
if os.environ.get("MEMWATCH_BENCH_BACKENDS"):
    _wanted = os.environ["MEMWATCH_BENCH_BACKENDS"].split(",")
    AVAILABLE = [b for b in AVAILABLE if b in _wanted]

np: Any
try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the test extra
    np = None


class Target:
    """One mapping and its Watch per backend, reused by every case."""

    def __init__(self, backend: str) -> None:
        self.map = mmap.mmap(-1, REGION * PAGE, flags=mmap.MAP_PRIVATE)
        self.map[:] = bytes(REGION * PAGE)  # populate: time the scan, not first faults
        self.watch = memwatch.Watch(self.map, backend=backend)
        self.out = array("Q", bytes(8 * REGION))
        self.bytes: Any = np.frombuffer(self.map, dtype=np.uint8) if np is not None else None

    def writer(self, npages: int) -> Callable[[], None]:
        stride = REGION // npages
        if self.bytes is not None:
            idx = np.arange(npages, dtype=np.intp) * stride * PAGE
            view = self.bytes

            def write() -> None:
                view[idx] += 1
        else:
            offsets = [i * stride * PAGE for i in range(npages)]
            m = self.map

            def write() -> None:
                for off in offsets:
                    m[off] = (m[off] + 1) & 0xFF
        return write

    def close(self) -> None:
        self.bytes = None
        self.watch.close()
        self.map.close()


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, Target]]:
    made: dict[str, Target] = {}
    yield made
    for t in made.values():
        t.close()


CASES = [
    pytest.param(b, api, n, id=f"{b}-{api}-{n:05d}")
    for b in AVAILABLE
    for n in PAGES
    for api in APIS
]


@pytest.mark.parametrize(("backend", "api", "npages"), CASES)
def test_scan(
    benchmark: Any, targets: dict[str, Target], backend: str, api: str, npages: int
) -> None:
    if backend not in targets:
        targets[backend] = Target(backend)
    t = targets[backend]
    w, out = t.watch, t.out
    w.reset()
    tracker = w._tracker  # the raw binding under the facade
    assert tracker is not None
    address, length = w.address, w.length
    fn: Callable[[], object]
    if api == "raw":
        def fn() -> object:
            return tracker.scan(address, length, out, True)
    elif api == "dirty_into":
        def fn() -> object:
            return w.dirty_into(out, reset=True)
    else:
        def fn() -> object:
            return w.dirty(reset=True)

    benchmark.group = f"{backend}-{npages:05d}"
    benchmark.extra_info.update(backend=backend, api=api, pages=npages)
    result = benchmark.pedantic(
        fn, setup=t.writer(npages), rounds=ROUNDS[npages], iterations=1, warmup_rounds=1
    )
    count = result if isinstance(result, int) else len(result)
    assert count >= npages  # uffd/mprotect may add rare false positives; never fewer
