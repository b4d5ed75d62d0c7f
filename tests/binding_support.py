"""Helpers for the binding-level tests (test_binding*.py, test_privileges.py):
raw memory regions and the C++ trackers of memwatch._memwatch, one at a time,
without the facade.  Not a test module itself.

On the host (no CONFIG_MEM_SOFT_DIRTY, no process_memwatch) pagemap_scan,
uffd and mprotect run; syscall and softdirty carry the ``guest`` mark and run
in the QEMU guest (ci/vm-run.sh ... pytest -m guest).
"""

from __future__ import annotations

import array
import ctypes
import os
from typing import Any, Callable, TypeVar

import pytest

from memwatch import _memwatch as mw
from memwatch import _probes

PS = mw.PAGE_SIZE

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20


class Region:
    """npages of private anonymous memory between two PROT_NONE guard pages
    (so the kernel cannot merge the mapping with a neighbour: soft-dirty would
    then report the neighbour's VM_SOFTDIRTY as writes)."""

    def __init__(self, npages: int, thp: bool = False) -> None:
        self.npages = npages
        self.size = npages * PS
        base = libc.mmap(None, self.size + 2 * PS, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        self._base = base
        self.addr = base + PS
        # Transparent huge pages make soft-dirty report a whole 2 MiB huge
        # page for one write (a legitimate false positive): keep the base
        # tests exact; test_thp_* covers huge pages.
        if not thp:
            libc.madvise(base, self.size + 2 * PS, MADV_NOHUGEPAGE)
        else:
            libc.madvise(base, self.size + 2 * PS, MADV_HUGEPAGE)
        for guard in (base, base + PS + self.size):
            if libc.mprotect(guard, PS, PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")

    def write(self, page: int, offset: int = 0, value: int = 0xAB) -> None:
        # ctypes.memset releases the GIL: usable from writer threads.
        ctypes.memset(self.addr + page * PS + offset, value, 1)

    def read(self, page: int) -> int:
        return ctypes.c_ubyte.from_address(self.addr + page * PS).value

    def view(self, page: int, npages: int = 1) -> memoryview:
        arr = (ctypes.c_char * (npages * PS)).from_address(self.addr + page * PS)
        return memoryview(arr).cast("B")

    def close(self) -> None:
        libc.munmap(self._base, self.size + 2 * PS)


def out_buf(n: int) -> array.array[int]:
    return array.array("Q", bytes(8 * n))


def pages(out: array.array[int], n: int) -> list[int]:
    assert all(o % PS == 0 for o in out[:n])
    return [o // PS for o in out[:n]]


# ----------------------------------------------------------------- mechanisms

Factory = Callable[[], Any]


def _syscall() -> Any:
    return mw.SyscallTracker(mw.PIDFD_SELF)


def _syscall_nrr() -> Any:
    return mw.SyscallTracker(mw.PIDFD_SELF, no_reused_regions=True)


def _softdirty() -> Any:
    return mw.SoftDirtyTracker(os.getpid())


def _probe(fn: Callable[[], tuple[bool, str, int]], name: str) -> Callable[[], tuple[bool, str]]:
    return lambda: _probes.run(name, fn)


MECHS: dict[str, tuple[Factory, Callable[[], tuple[bool, str]]]] = {
    "pagemap_scan": (mw.PagemapScanTracker, _probe(mw.pagemap_scan_available, "pagemap_scan")),
    "uffd": (mw.UffdTracker, _probe(mw.uffd_available, "uffd")),
    "mprotect": (mw.MprotectTracker, _probe(mw.mprotect_available, "mprotect")),
    "syscall": (_syscall, _probe(mw.syscall_available, "syscall")),
    "syscall_nrr": (_syscall_nrr, _probe(mw.syscall_available, "syscall")),
    "softdirty": (_softdirty, _probe(mw.softdirty_available, "softdirty")),
}
GUEST_ONLY = {"syscall", "syscall_nrr", "softdirty"}


def params(names: list[str]) -> list[Any]:
    out = []
    for name in names:
        marks = [pytest.mark.guest] if name in GUEST_ONLY else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


ALL = list(MECHS)
PARTIAL = [n for n in ALL if n != "softdirty"]  # partial_reset=True
HOST_FAULT = ["uffd", "mprotect"]


def skip_if_unavailable(name: str) -> None:
    ok, reason = MECHS[name][1]()
    if not ok:
        where = (
            "runs in the QEMU guest booted from the kernel built from linux/ "
            "(ci/vm-run.sh -- pytest -m guest)"
            if name in GUEST_ONLY
            else "unavailable on this machine"
        )
        pytest.skip(f"{name}: {where}; probe says: {reason}")


class Attached:
    def __init__(self, name: str, region: Region) -> None:
        self.name = name
        self.region = region
        self.t = MECHS[name][0]()
        self.t.attach(region.addr, region.size)

    def scan(self, first: int = 0, npages: int | None = None, cap: int = 1024,
             reset: bool = False) -> list[int]:
        npages = self.region.npages - first if npages is None else npages
        out = out_buf(cap)
        n = self.t.scan(self.region.addr + first * PS, npages * PS, out, reset)
        assert 0 <= n <= cap
        return pages(out, n)


F = TypeVar("F", bound=Callable[..., None])


def mechs(names: list[str]) -> Callable[[F], F]:
    mark: Callable[[F], F] = pytest.mark.parametrize("mech", params(names), indirect=True)
    return mark


def uffd_kernel_mode() -> bool:
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        unpriv = f.read().strip() == "1"
    return unpriv or os.geteuid() == 0

