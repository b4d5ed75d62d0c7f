"""Scaling: get-and-reset over populated regions and sparse reservations.

``test_scaling[<backend>-<MiB>-<percent>]``
    a populated private mapping of 4 MiB .. MEMWATCH_BENCH_MAX_MIB (default
    4 GiB on a host: the 24 GiB machine is shared with kernel builds and
    guests; 64 MiB in the TCG guest), with 0 %, 1 % or 100 % of its pages
    written (in the untimed setup) before each timed
    ``dirty_into(out, reset=True)``; extra_info gives pages and dirty pages,
    so the summary shows ns per scanned page and per dirty page.  uffd and
    mprotect at 100 % stop at 1 GiB (a fault per page in every setup).
``test_sparse[<backend>-<GiB reserved>]``
    the same populated part (1 GiB on a host, 64 MiB in the guest; 1 % of it
    written per round) inside a MAP_NORESERVE reservation of 1 GiB .. 1 TiB;
    the summary divides by the smallest reservation (target: <= 1.1x at
    1 TiB for every backend that claims to scale).  softdirty reads 8 bytes
    of /proc/PID/pagemap per reserved page, so it stops at 16 GiB.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from array import array
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import GUEST, MAX_MIB, available, smoke

import memwatch

PAGE = mmap.PAGESIZE
MIB = 1 << 20
GIB = 1 << 30
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
SIZES_MIB = [s for s in (4, 16, 64, 256, 1024, 4096, 16384) if s <= MAX_MIB]
PERCENT = (0, 1, 100)
FAULTING = ("uffd", "mprotect")  # a fault per written page
SPARSE_GIB = (1, 16, 256, 1024)
SPARSE_POPULATED = (64 if GUEST else 1024) * MIB
SPARSE_MAX_GIB = {"softdirty": 16}
SPARSE_ROUNDS = int(os.environ.get("MEMWATCH_BENCH_SPARSE_ROUNDS", "3" if GUEST else "9"))


class Region:
    """A private anonymous reservation of *size* bytes whose [base, base+populated)
    part is populated, no huge pages (one page per write on every backend)."""

    def __init__(self, size: int, populated: int) -> None:
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE)
        self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.view = memoryview(self.map)
        self.base = (size - populated) // 2 // MIB * MIB
        self.populated = populated
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        ctypes.memset(addr + self.base, 0, populated)
        self.out = array("Q", bytes(8 * (populated // PAGE)))
        self.flip = 0

    def write(self, npages: int) -> None:
        """One byte into *npages* pages spread over the populated part."""
        if npages:
            step = self.populated // PAGE // npages * PAGE
            self.flip ^= 1
            self.view[self.base:self.base + npages * step:step] = bytes([self.flip + 1]) * npages

    def close(self) -> None:
        self.view.release()
        self.map.close()


def _scaling_cases() -> list[Any]:
    cases = []
    for b in available():
        for mib in SIZES_MIB:
            for pct in PERCENT:
                if b in FAULTING and pct == 100 and mib > 1024:
                    continue
                cases.append(pytest.param(b, mib, pct, id=f"{b}-{mib:05d}MiB-{pct:03d}pct"))
    return cases


@pytest.mark.parametrize(("backend", "mib", "percent"), _scaling_cases())
def test_scaling(benchmark: Any, request: pytest.FixtureRequest, backend: str, mib: int,
                 percent: int) -> None:
    if smoke(request.config) and mib != SIZES_MIB[0]:
        pytest.skip("smoke pass: smallest size only")
    size = mib * MIB
    pages = size // PAGE
    dirty = pages * percent // 100
    region = Region(size, size)
    try:
        with memwatch.Watch(region.map, backend=backend) as w:
            out = region.out

            def setup() -> None:
                region.write(dirty)

            rounds = 1 if smoke(request.config) else (3 if mib >= 1024 or GUEST else 7)
            n = benchmark.pedantic(lambda: w.dirty_into(out, reset=True), setup=setup,
                                   rounds=rounds, iterations=1, warmup_rounds=0)
            assert n >= dirty
    finally:
        region.close()
    benchmark.group = f"scaling-{backend}"
    benchmark.extra_info.update(kind="scaling", backend=backend, mib=mib, percent=percent,
                                pages=pages, dirty=dirty)


def _sparse_cases() -> list[Any]:
    return [pytest.param(b, g, id=f"{b}-{g:04d}GiB") for b in available(partial_reset=False)
            for g in SPARSE_GIB if g <= SPARSE_MAX_GIB.get(b, 1 << 20)]


@pytest.fixture(scope="module")
def sparse_regions() -> Iterator[dict[int, Region]]:
    made: dict[int, Region] = {}
    yield made
    for r in made.values():
        r.close()


@pytest.mark.parametrize(("backend", "gib"), _sparse_cases())
def test_sparse(benchmark: Any, request: pytest.FixtureRequest,
                sparse_regions: dict[int, Region], backend: str, gib: int) -> None:
    if smoke(request.config) and gib not in (1, 1024):
        pytest.skip("smoke pass: smallest and largest reservation only")
    populated = 4 * MIB if smoke(request.config) else SPARSE_POPULATED
    size = max(gib * GIB, populated)
    # One region per size at a time (the populated part is resident).
    for g in [g for g in sparse_regions if g != gib]:
        sparse_regions.pop(g).close()
    if gib not in sparse_regions:
        sparse_regions[gib] = Region(size, populated)
    region = sparse_regions[gib]
    dirty = populated // PAGE // 100
    addr = ctypes.addressof(ctypes.c_char.from_buffer(region.map))
    with memwatch.Watch(addr, size, backend=backend) as w:
        # softdirty resets the whole process: its out must hold every page
        # of the range (8 bytes a reserved page: why it stops at 16 GiB).
        out = array("Q", bytes(8 * (size // PAGE))) if backend == "softdirty" else region.out
        rounds = 1 if smoke(request.config) else SPARSE_ROUNDS
        n = benchmark.pedantic(lambda: w.dirty_into(out, reset=True),
                               setup=lambda: region.write(dirty), rounds=rounds,
                               iterations=1, warmup_rounds=1)
        assert n >= dirty
    benchmark.group = f"sparse-{backend}"
    benchmark.extra_info.update(kind="sparse", backend=backend, reserved_gib=gib,
                                populated_mib=populated // MIB, dirty=dirty)
