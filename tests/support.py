"""Helpers shared by the memwatch test modules (not a test module itself)."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

import memwatch

if TYPE_CHECKING:
    from typing_extensions import Self

PAGE = mmap.PAGESIZE
PROT_NONE = 0
IN_GUEST = os.environ.get("MEMWATCH_IN_GUEST") == "1"
# Wall-clock limits of subprocess-based tests (hang detectors) are sized for
# the host; Python under QEMU TCG runs 15-35x slower (and the CI machine is
# shared), so a guest run gives them ten times longer.
TIMEOUT_SCALE = 10 if IN_GUEST else 1
# Backends that only the patched QEMU guest kernel provides on this project's
# machines: the host kernel lacks process_memwatch and CONFIG_MEM_SOFT_DIRTY.
GUEST_ONLY = frozenset({"syscall", "softdirty"})
ALL_BACKENDS = tuple(b.name for b in memwatch.backends())
BACKENDS = {b.name: b for b in memwatch.backends()}


def skip_reason(name: str) -> str | None:
    b = BACKENDS[name]
    if b.available:
        return None
    if IN_GUEST:  # a guest kernel without it (the stock 6.1 one: ci/test-stock.sh)
        return f"backend {name} is unavailable on this kernel ({os.uname().release}): {b.reason}"
    if name in GUEST_ONLY:
        what = "process_memwatch" if name == "syscall" else "CONFIG_MEM_SOFT_DIRTY"
        return (
            f"backend {name} needs the QEMU guest kernel ({what}); it runs there "
            f"via ci/vm-run.sh (pytest -m guest). Here: {b.reason}"
        )
    return f"backend {name} is unavailable here: {b.reason}"


def backend_params(
    *, remote: bool = False, partial_reset: bool = False, kernel_writes: bool = False
) -> list[Any]:
    """One pytest.param per backend with the capabilities asked for.

    syscall and softdirty carry the ``guest`` mark; an unavailable backend is
    skipped with a reason that says where it runs.
    """
    params = []
    for name, b in BACKENDS.items():
        if remote and not b.remote:
            continue
        if partial_reset and not b.partial_reset:
            continue
        if kernel_writes and not b.sees_kernel_writes:
            continue
        marks: list[Any] = []
        if name in GUEST_ONLY:
            marks.append(pytest.mark.guest)
        reason = skip_reason(name)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def mprotect(addr: int, size: int, prot: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(addr, size, prot) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def anon(npages: int) -> memoryview:
    """*npages* private anonymous read-write pages, as a byte memoryview.

    The pages sit between two PROT_NONE guard pages, so their VMA can never
    merge with a mapping the interpreter creates next to it.  Such a merge
    marks the whole merged VMA VM_SOFTDIRTY, and the softdirty backend then
    reports every page dirty: a documented false positive, but one that would
    make exact assertions flaky in the guest.  Transparent huge pages are
    off for the mapping (the guest kernel has THP "always"): one write into a
    huge page makes the kernel-level backends report its 512 base pages, a
    documented false positive that page-granular assertions must not meet.
    Releasing the view (``with`` or ``release()``) unmaps everything.
    """
    m = mmap.mmap(
        -1,
        (npages + 2) * PAGE,
        flags=mmap.MAP_PRIVATE,  # fileno -1 adds MAP_ANONYMOUS
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
    )
    m.madvise(mmap.MADV_NOHUGEPAGE)
    base = address_of(m)
    mprotect(base, PAGE, PROT_NONE)
    mprotect(base + (npages + 1) * PAGE, PAGE, PROT_NONE)
    return memoryview(m)[PAGE : (npages + 1) * PAGE]


def address_of(buf: Any) -> int:
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c


def touch(buf: Any, pages: Iterable[int], byte: int = 0) -> None:
    """Write one byte in each page of *pages* (indexes) of *buf*."""
    for p in pages:
        buf[p * PAGE + byte] = (buf[p * PAGE + byte] + 1) & 0xFF


def offsets(pages: Any) -> list[int]:
    return [p * PAGE for p in sorted(pages)]


_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sys
    n = int(sys.argv[1])
    m = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
    c = ctypes.c_char.from_buffer(m)
    print(ctypes.addressof(c), flush=True)
    del c
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "q":
            break
        if cmd[0] == "w":
            for off in cmd[1:]:
                i = int(off)
                m[i] = (m[i] + 1) & 0xFF
        print("ok", flush=True)
    """
)


class Child:
    """A Python child process that owns an anonymous mapping and writes to it
    on command: the target of the remote-watching tests."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(npages)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def write(self, byte_offsets: list[int]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("w " + " ".join(map(str, byte_offsets)) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("q\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
