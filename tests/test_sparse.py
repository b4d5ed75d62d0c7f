"""Huge sparse ranges (issue 7, item 7): cost follows what is populated.

A Watch over a large MAP_NORESERVE reservation of which little is populated
must report every write (into populated pages and into holes alike) while
its page-table memory stays proportional to the populated part.  Timing is
measured in benchmarks/bench_sparse.py, never asserted here; these tests
assert correctness and a *memory* bound (VmPTE from /proc/self/status).
"""

from __future__ import annotations

import ctypes
import mmap
import resource

import pytest
from support import BACKENDS, PAGE, backend_params

import memwatch

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
GIB = 1 << 30
# softdirty reads one /proc/PID/pagemap entry per page of the range (8 bytes
# per 4 KiB page: 16 MiB for 8 GiB, 2 GiB for a TiB, on every scan), so its
# cost follows the range, not the populated part: it does not claim to scale
# and is not run on these reservations (its partial reset, which put it into
# backend_params(partial_reset=True), is tested in test_overlap/test_api).
SPARSE = [p for p in backend_params(partial_reset=True) if p.values[0] != "softdirty"]


def vm_pte_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1])
    raise AssertionError("no VmPTE in /proc/self/status")


class Reservation:
    """A private anonymous MAP_NORESERVE mapping of *size* bytes."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.size = size
        # Keep transparent huge pages out, whatever the host's THP mode: a
        # first write into a 2 MiB hole must map one base page.
        self.map.madvise(mmap.MADV_NOHUGEPAGE)

    def write(self, offset: int, value: int = 1) -> None:
        ctypes.memset(self.addr + offset, value, 1)

    def read(self, offset: int) -> int:
        return ctypes.c_ubyte.from_address(self.addr + offset).value

    def populate(self, offset: int, nbytes: int, value: int = 1) -> None:
        ctypes.memset(self.addr + offset, value, nbytes)

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def reservation(request: pytest.FixtureRequest) -> Reservation:
    r = Reservation(getattr(request, "param", 64 * GIB))
    request.addfinalizer(r.close)
    return r


@pytest.mark.parametrize("backend", SPARSE)
def test_writes_into_sparse_reservation_are_reported(
    backend: str, reservation: Reservation
) -> None:
    size = reservation.size if backend == "pagemap_scan" else 8 * GIB
    populated = size // 2
    reservation.populate(populated, 64 * PAGE)
    with memwatch.Watch(reservation.addr, size, backend=backend) as w:
        assert list(w.dirty()) == []
        holes = [
            0,
            3 * PAGE,
            5 * GIB - PAGE,
            size - PAGE,
        ]  # with and without a page table
        inside = [populated, populated + 63 * PAGE]
        for off in holes + inside:
            reservation.write(off, 7)
        # A read fault on a hole maps the zero page: not a write.
        assert reservation.read(2 * GIB) == 0
        assert list(w.dirty(reset=True)) == sorted(holes + inside)
        assert list(w.dirty()) == []
        # Written again, after the reset: the pages now have protected PTEs.
        for off in holes:
            reservation.write(off, 8)
        # The zero page read above, then written: a fresh page, reported.
        reservation.write(2 * GIB, 9)
        assert list(w.dirty(reset=True)) == sorted([*holes, 2 * GIB])


@pytest.mark.parametrize("backend", SPARSE)
def test_partial_reset_in_sparse_reservation(
    backend: str, reservation: Reservation
) -> None:
    size = 8 * GIB
    with memwatch.Watch(reservation.addr, size, backend=backend) as w:
        a, b = GIB, 6 * GIB
        reservation.write(a)
        reservation.write(b)
        w.reset(start=0, length=4 * GIB)
        assert list(w.dirty()) == [b]
        reservation.write(a + PAGE)
        assert list(w.dirty(reset=True)) == [a + PAGE, b]


@pytest.mark.parametrize("backend", SPARSE)
def test_page_tables_follow_the_populated_part(backend: str) -> None:
    """Watching a 1 TiB reservation with 64 MiB populated costs page tables
    for about the 64 MiB (128 KiB of PTE tables), not for the terabyte (2
    GiB of markers before this fix)."""
    r = Reservation(1 << 40)
    try:
        pop = 64 << 20
        r.populate(r.size // 2, pop)
        before = vm_pte_kib()
        with memwatch.Watch(r.addr, r.size, backend=backend) as w:
            r.populate(r.size // 2, pop, 2)
            for off in (0, GIB, r.size - PAGE):
                r.write(off)
            n = len(w.dirty(reset=True))
            assert n == pop // PAGE + 3
            assert len(w.dirty(reset=True)) == 0
            w.reset()
            grown = vm_pte_kib() - before
        # Three new PTE tables (4 KiB each) plus upper levels; a marker
        # per page of the reservation would be 2 GiB.
        assert grown < 1024, f"VmPTE grew by {grown} KiB for 64 MiB populated"
    finally:
        r.close()


def test_pagemap_scan_dontneed_zap_is_not_a_write() -> None:
    """The documented limit (c) of pagemap_scan (src/pagemap_scan.cpp,
    protect_populated): MADV_DONTNEED on an anonymous page leaves pte_none,
    which populated-only write-protection cannot tell from a hole, so the zap
    is not reported (uffd reports it, mprotect does not); every later write
    to the page is."""
    if not BACKENDS["pagemap_scan"].available:
        pytest.skip(f"pagemap_scan unavailable: {BACKENDS['pagemap_scan'].reason}")
    r = Reservation(4 * PAGE)
    try:
        with memwatch.Watch(r.addr, 4 * PAGE, backend="pagemap_scan") as w:
            r.write(PAGE)
            w.reset()
            r.map.madvise(mmap.MADV_DONTNEED, PAGE, PAGE)
            assert list(w.dirty()) == []
            r.write(PAGE, 3)
            assert list(w.dirty(reset=True)) == [PAGE]
            r.map.madvise(mmap.MADV_DONTNEED, PAGE, PAGE)
            r.write(PAGE, 4)
            assert list(w.dirty(reset=True)) == [PAGE]
    finally:
        r.close()


@pytest.mark.parametrize("backend", SPARSE)
def test_huge_unmapped_range_fails_without_allocating(backend: str) -> None:
    """A huge length over a hole fails before anything per page is
    allocated (a 2 GiB bitmap for 2**46 bytes before)."""
    if backend != "pagemap_scan" and not hasattr(memwatch._common, "unmapped_part"):
        pytest.skip("needs the facade's mapped-range check (branch pc) before attach")
    probe = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(probe))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises((ValueError, OSError)):
        memwatch.Watch(addr, 1 << 46, backend=backend)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024
    probe.close()


@pytest.mark.parametrize(
    ("address", "length"),
    [
        (1 << 63, PAGE),
        ((1 << 63) - PAGE, 2 * PAGE),
        ((1 << 64) - PAGE, PAGE),
        (PAGE, 1 << 63),
    ],
)
def test_addresses_beyond_user_space_are_refused_by_the_facade(
    address: int, length: int
) -> None:
    with pytest.raises(ValueError, match="beyond the user address space") as info:
        memwatch.Watch(address, length)
    assert "incompatible function arguments" not in str(info.value)
