"""Huge sparse ranges: a Watch costs what is populated, not what is reserved.

Two targets per backend, both with the same 256 MiB populated (written once
before the Watch):

``dense``   a 512 MiB mapping,
``sparse``  a MAP_NORESERVE reservation of 1 TiB (pagemap_scan) or 64 GiB
            (uffd, mprotect: their attach still write-protects or sizes
            per page of the range).

and three operations, each timed on its own:

``attach``      ``Watch(addr, size)`` (then closed, untimed),
``first_scan``  ``dirty(reset=True)`` after rewriting the populated part,
``clean_scan``  ``dirty(reset=True)`` with nothing written.

Every benchmark records ``extra_info`` = {backend, target, op, vmpte_kib}
(page-table growth in KiB from /proc/self/status, measured over the first
round).  Compare ``sparse`` with ``dense`` within one run.

Run:  python -m pytest benchmarks/bench_sparse.py -q
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import GUEST

import memwatch

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
MIB = 1 << 20
# Smaller in the TCG guest (Python and page faults 15-35x slower there).
POPULATED = (32 if GUEST else 256) * MIB
# In the TCG guest a sync-uffd rewrite of the populated part took over 100 s;
# bench_scaling.py::test_sparse measures the same question there.
pytestmark = pytest.mark.skipif(GUEST, reason="host only (see bench_scaling.py::test_sparse)")
AVAILABLE = [b.name for b in memwatch.backends() if b.available and b.partial_reset]
SPARSE_SIZE = {"pagemap_scan": 1 << 40, "syscall": 1 << 40}


def vm_pte_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1])
    return 0


class Target:
    def __init__(self, backend: str, kind: str) -> None:
        self.size = (
            2 * POPULATED if kind == "dense" else SPARSE_SIZE.get(backend, 64 << 30)
        )
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE)
        self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.base = (self.size // 2) & ~(MIB - 1)
        self.fill(1)
        self.backend = backend

    def fill(self, value: int) -> None:
        ctypes.memset(self.addr + self.base, value, POPULATED)

    def close(self) -> None:
        self.map.close()


@pytest.fixture(params=AVAILABLE)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["dense", "sparse"])
def target(request: pytest.FixtureRequest, backend: str) -> Iterator[Target]:
    t = Target(backend, str(request.param))
    yield t
    t.close()


def _info(benchmark: Any, t: Target, kind: str, op: str, grown: int) -> None:
    benchmark.extra_info.update(
        {"backend": t.backend, "target": kind, "op": op, "vmpte_kib": grown}
    )


@pytest.mark.parametrize("op", ["attach", "first_scan", "clean_scan"])
def test_sparse(benchmark: Any, target: Target, op: str) -> None:
    kind = "dense" if target.size == 2 * POPULATED else "sparse"
    before = vm_pte_kib()
    if op == "attach":
        watches: list[memwatch.Watch] = []

        def attach() -> None:
            watches.append(
                memwatch.Watch(target.addr, target.size, backend=target.backend)
            )

        def teardown() -> None:
            while watches:
                watches.pop().close()

        benchmark.pedantic(attach, teardown=teardown, rounds=3, iterations=1)
        _info(benchmark, target, kind, op, vm_pte_kib() - before)
        return
    with memwatch.Watch(target.addr, target.size, backend=target.backend) as w:
        value = [2]

        def setup() -> None:
            if op == "first_scan":
                value[0] ^= 3
                target.fill(value[0])
            else:
                w.reset()

        n = benchmark.pedantic(
            lambda: len(w.dirty(reset=True)), setup=setup, rounds=3, iterations=1
        )
        expected = POPULATED // mmap.PAGESIZE if op == "first_scan" else 0
        assert n == expected
        _info(benchmark, target, kind, op, vm_pte_kib() - before)
