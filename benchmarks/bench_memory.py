"""Memory: what watching costs in resident memory and page tables, per GiB.

Per backend, two targets of 1 GiB (64 MiB in the TCG guest), both private
anonymous, no huge pages:

``populated``  every page written before the Watch; after the Watch, every
               page is written again and collected once, so bitmaps and
               per-page state are at their largest;
``empty``      a MAP_NORESERVE reservation nothing touched (a Watch should
               then cost next to nothing).

The timed part is ``Watch(...)`` itself (attach; closed untimed).  Growth of
VmRSS and VmPTE (/proc/self/status) over the whole sequence, net of the
populated data itself, goes into extra_info; the summary gives it per
watched GiB.
"""

from __future__ import annotations

import ctypes
import mmap
from array import array
from typing import Any

import pytest
from conftest import GUEST, available, smoke, vm_kib

import memwatch

MIB = 1 << 20
PAGE = mmap.PAGESIZE
SIZE = (64 if GUEST else 1024) * MIB
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


@pytest.mark.parametrize("target", ["populated", "empty"])
@pytest.mark.parametrize("backend", available())
def test_memory(benchmark: Any, request: pytest.FixtureRequest, backend: str,
                target: str) -> None:
    size = 4 * MIB if smoke(request.config) else SIZE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if target == "populated":
        ctypes.memset(addr, 1, size)
    out = array("Q", bytes(8 * (size // PAGE)))
    rss0, pte0 = vm_kib("VmRSS"), vm_kib("VmPTE")
    watches: list[memwatch.Watch] = []

    def close_all() -> None:  # before each round: one Watch at a time
        while watches:
            watches.pop().close()

    try:
        benchmark.pedantic(lambda: watches.append(memwatch.Watch(addr, size, backend=backend)),
                           setup=close_all, rounds=1 if smoke(request.config) else 3,
                           iterations=1)
        w = watches[-1]
        if target == "populated":
            # One byte a page, a strided copy: under TCG a memset over sync-uffd
            # write-protected pages took ~12 ms a fault (20x the strided write).
            view = memoryview(m)
            view[::PAGE] = b"\x02" * (size // PAGE)
            view.release()
            assert w.dirty_into(out, reset=True) == size // PAGE
        else:
            assert w.dirty_into(out, reset=True) == 0
        rss, pte = vm_kib("VmRSS") - rss0, vm_kib("VmPTE") - pte0
    finally:
        close_all()
        m.close()
    benchmark.group = f"memory-{target}"
    benchmark.extra_info.update(kind="memory", backend=backend, target=target,
                                mib=size // MIB, rss_kib=rss, pte_kib=pte)
