"""pagemap_scan's two-pass scan (src/pagemap_scan.cpp, scan()) loses nothing.

scan() first walks WRITTEN-only without reset (the kernel's per-PTE fast
path) to find candidates, then runs the full masks -- written, populated
(PRESENT | SWAPPED), not the zero page -- and the reset only over spans
around them.  Each test pins one case a mask or a pass is there for; each
fails if the corresponding guarantee is broken (checked by breaking it:
see the notes of helper p11).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from array import array

import pytest
from support import BACKENDS, PAGE

import memwatch

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
MADV_FREE = getattr(mmap, "MADV_FREE", 8)
GIB = 1 << 30
HPAGE = 2 << 20


@pytest.fixture(autouse=True)
def _needs_pagemap_scan() -> None:
    if not BACKENDS["pagemap_scan"].available:
        pytest.skip(f"pagemap_scan unavailable: {BACKENDS['pagemap_scan'].reason}")


class Anon:
    """A private anonymous mapping, without THP unless *huge*."""

    def __init__(self, size: int, huge: bool = False, noreserve: bool = False) -> None:
        flags = mmap.MAP_PRIVATE | (MAP_NORESERVE if noreserve else 0)
        # Over-allocate to align the start to a huge page.
        self.raw = mmap.mmap(-1, size + HPAGE, flags=flags)
        raw_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.raw))
        self.pad = (-raw_addr) % HPAGE
        self.addr = raw_addr + self.pad
        self.size = size
        self.raw.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)

    def madvise(self, advice: int, offset: int, length: int) -> None:
        self.raw.madvise(advice, self.pad + offset, length)

    def write(self, offset: int, value: int = 1) -> None:
        ctypes.memset(self.addr + offset, value, 1)

    def read(self, offset: int) -> int:
        return ctypes.c_ubyte.from_address(self.addr + offset).value

    def close(self) -> None:
        self.raw.close()


@pytest.fixture
def anon(request: pytest.FixtureRequest) -> Anon:
    a = Anon(getattr(request, "param", 64 * PAGE))
    request.addfinalizer(a.close)
    return a


def watch(a: Anon) -> memwatch.Watch:
    return memwatch.Watch(a.addr, a.size, backend="pagemap_scan")


def test_write_to_never_touched_pages_is_reported(anon: Anon) -> None:
    # Page 0 sits in a table-less hole at attach; page 40 becomes pte_none
    # inside a populated table (a marker after attach's protect).
    anon.write(41 * PAGE)
    with watch(anon) as w:
        anon.write(0)
        anon.write(40 * PAGE)
        assert list(w.dirty()) == [0, 40 * PAGE]
        assert list(w.dirty(reset=True)) == [0, 40 * PAGE]
        assert list(w.dirty()) == []


def test_zero_page_read_is_not_reported_and_its_write_is(anon: Anon) -> None:
    # The PFNZERO mask: a read fault in a hole maps the shared zero page
    # without the uffd-wp bit, so WRITTEN-only (the first pass) sees it as
    # written; the second pass must drop it, every time (no reset clears it
    # without WP_MATCHING), and still report the write that replaces it.
    with watch(anon) as w:
        for p in range(0, 64, 2):
            assert anon.read(p * PAGE) == 0
        assert list(w.dirty()) == []
        assert list(w.dirty()) == []
        assert list(w.dirty(reset=True)) == []
        anon.write(6 * PAGE)
        assert list(w.dirty()) == [6 * PAGE]
        assert list(w.dirty(reset=True)) == [6 * PAGE]
        assert list(w.dirty(reset=True)) == []


def test_dontneed_and_free_after_reset_then_write(anon: Anon) -> None:
    for p in range(64):
        anon.write(p * PAGE)
    with watch(anon) as w:
        anon.madvise(mmap.MADV_DONTNEED, 3 * PAGE, 2 * PAGE)
        anon.madvise(MADV_FREE, 10 * PAGE, 2 * PAGE)
        # The zap (pte_none, no marker for anonymous memory) is no write:
        # the documented limit (c); MADV_FREE keeps the protected PTE.
        assert list(w.dirty(reset=True)) == []
        anon.write(3 * PAGE, 2)
        anon.write(11 * PAGE, 2)
        assert list(w.dirty(reset=True)) == [3 * PAGE, 11 * PAGE]
        assert anon.read(4 * PAGE) == 0  # read fault after the zap: zero page
        assert list(w.dirty(reset=True)) == []


def test_candidates_beyond_the_first_pass_array() -> None:
    # More first-pass candidates that are no write than the first pass
    # holds (128 regions): 500 zapped pages between protected ones (pte_none
    # without a marker, the documented limit (c)), half of them read back
    # as the zero page; then writes behind them, then a cap shorter than
    # what is written.  The fallback walk must see the writes, and the reset
    # must stop exactly at what was reported.
    a = Anon(4096 * PAGE)
    try:
        ctypes.memset(a.addr, 1, a.size)
        with watch(a) as w:
            for p in range(0, 1000, 2):
                a.madvise(mmap.MADV_DONTNEED, p * PAGE, PAGE)
            for p in range(0, 1000, 4):
                assert a.read(p * PAGE) == 0
            written = [p * PAGE for p in range(2000, 4096, 3)]
            for off in written:
                a.write(off, 2)
            assert list(w.dirty()) == written
            out = array("Q", bytes(8 * 100))
            assert w.dirty_into(out, reset=True) == 100
            assert list(out) == written[:100]
            assert list(w.dirty(reset=True)) == written[100:]
            assert list(w.dirty()) == []
    finally:
        a.close()


def test_scattered_writes_far_apart_are_each_reported() -> None:
    # Candidates more than a span gap (512 pages) apart: one second-pass
    # ioctl each; fewer than the first pass holds, more than one.  The range
    # is populated first, so that nothing but the writes is a candidate.
    a = Anon(64 << 20)
    try:
        ctypes.memset(a.addr, 1, a.size)
        with watch(a) as w:
            written = [p * PAGE for p in range(7, 16384, 700)]
            for off in written:
                a.write(off, 2)
            assert list(w.dirty(reset=True)) == written
            assert list(w.dirty(reset=True)) == []
            a.write(written[5] + PAGE)
            assert list(w.dirty(reset=True)) == [written[5] + PAGE]
    finally:
        a.close()


def test_sparse_tib_reservation_reports_writes_in_holes() -> None:
    a = Anon(1 << 40, noreserve=True)
    try:
        mid = (1 << 39)
        for p in range(16):
            a.write(mid + p * PAGE)
        with watch(a) as w:
            assert list(w.dirty(reset=True)) == []
            a.write(5 * PAGE)
            a.write(mid + 3 * PAGE)
            a.write((1 << 40) - PAGE)
            assert list(w.dirty(reset=True)) == [5 * PAGE, mid + 3 * PAGE, (1 << 40) - PAGE]
            assert list(w.dirty(reset=True)) == []
    finally:
        a.close()


def thp_enabled() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def is_thp(a: Anon) -> bool:
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        lo = int(line.split("-", 1)[0], 16) if "-" in line.split(" ", 1)[0] else None
        if lo is not None and lo <= a.addr < int(line.split(" ", 1)[0].split("-")[1], 16):
            for rest in lines[i + 1:]:
                if rest.startswith("AnonHugePages:"):
                    return int(rest.split()[1]) > 0
    return False


def test_thp_write_and_split() -> None:
    if not thp_enabled():
        pytest.skip("transparent huge pages disabled on this kernel")
    a = Anon(2 * HPAGE, huge=True)
    try:
        ctypes.memset(a.addr, 1, 2 * HPAGE)
        if not is_thp(a):
            pytest.skip("the kernel mapped no huge page (fragmented memory?)")
        with watch(a) as w:
            assert list(w.dirty(reset=True)) == []
            a.write(HPAGE + 5 * PAGE)
            got = list(w.dirty(reset=True))
            # A written THP reports its base page, or (huge PMD) all 512.
            assert HPAGE + 5 * PAGE in got
            assert set(got) <= set(range(HPAGE, 2 * HPAGE, PAGE))
            assert list(w.dirty(reset=True)) == []
            # Split the first huge page (partial MADV_DONTNEED), then write.
            a.madvise(mmap.MADV_DONTNEED, 100 * PAGE, PAGE)
            a.write(7 * PAGE)
            a.write(300 * PAGE)
            got = list(w.dirty(reset=True))
            assert 7 * PAGE in got and 300 * PAGE in got
            assert list(w.dirty(reset=True)) == []
    finally:
        a.close()


def test_fork_cow_in_parent_is_reported(anon: Anon) -> None:
    for p in range(64):
        anon.write(p * PAGE)
    with watch(anon) as w:
        pid = os.fork()
        if pid == 0:
            ctypes.memset(anon.addr + 9 * PAGE, 7, 1)  # child's own copy
            os._exit(0)
        os.waitpid(pid, 0)
        assert list(w.dirty()) == []
        anon.write(20 * PAGE, 5)  # COW break in the parent
        assert list(w.dirty(reset=True)) == [20 * PAGE]


def test_mremap_shrink_then_write_is_reported(anon: Anon) -> None:
    # mremap() shrinking the mapping behind the watched range keeps the
    # watched VMA (and its uffd-wp) intact.
    for p in range(64):
        anon.write(p * PAGE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mremap.restype = ctypes.c_void_p
    libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    with memwatch.Watch(anon.addr, 32 * PAGE, backend="pagemap_scan") as w:
        r = libc.mremap(anon.addr, 64 * PAGE, 48 * PAGE, 0)
        assert r == anon.addr, ctypes.get_errno()
        anon.write(31 * PAGE)
        anon.write(2 * PAGE)
        assert list(w.dirty(reset=True)) == [2 * PAGE, 31 * PAGE]
