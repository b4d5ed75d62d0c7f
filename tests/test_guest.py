"""Tests that need the patched QEMU guest kernel (process_memwatch,
CONFIG_MEM_SOFT_DIRTY): the bare syscall and watching another process.

On the host every test here skips with a reason saying so; CI runs them in the
guest through ci/vm-run.sh with ``pytest -m guest``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
from array import array
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import BACKENDS, PAGE, Child, address_of, anon, backend_params, skip_reason
from test_differential import MAX_PAGES, PROFILE, ops, run_program

import memwatch
import memwatch._backends
from memwatch import Flags

pytestmark = pytest.mark.guest

needs_syscall = pytest.mark.skipif(
    not BACKENDS["syscall"].available, reason=skip_reason("syscall") or ""
)
REMOTE = backend_params(remote=True)
GET, CLEAR, NRR = Flags.SD_GET, Flags.SD_CLEAR, Flags.SD_NO_REUSED_REGIONS
SELF = memwatch.PIDFD_SELF


def _pm(start: int, length: int, flags: int, vec: Any = None, pidfd: int = SELF) -> int:
    return memwatch.process_memwatch(pidfd, start, length, flags, vec)


def _get(start: int, npages: int, flags: int = GET, pidfd: int = SELF) -> list[int]:
    vec = array("Q", bytes(8 * npages))
    n = _pm(start, npages * PAGE, flags, vec, pidfd)
    return [x // PAGE for x in vec[:n]]


# -- the bare system call -------------------------------------------------------


# The differential test (tests/test_differential.py) runs the syscall backend in
# the mode memwatch._backends picks; here it runs in both modes the kernel accepts,
# so a mode the backend does not use by default cannot rot unnoticed.
@needs_syscall
@pytest.mark.parametrize("no_reused_regions", [False, True], ids=["default", "nrr"])
@PROFILE
@given(
    npages=st.integers(1, MAX_PAGES),
    program=st.lists(ops, max_size=14),
    chunk=st.sampled_from([1, 3, 1 << 16]),
)
def test_differential_syscall_modes(
    no_reused_regions: bool, npages: int, program: list[object], chunk: int
) -> None:
    with mock.patch.object(memwatch._backends, "_SYSCALL_NO_REUSED_REGIONS", no_reused_regions):
        run_program("syscall", npages, program, chunk)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _mprotect(addr: int, length: int, prot: int) -> None:
    if _libc.mprotect(addr, length, prot) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# The v2 review's NO_REUSED_REGIONS hole, end to end through the facade: a
# fresh mapping is reset, mprotect(R) then mprotect(RW) makes the PTE writable
# without a fault, a page is written, and fork() write-protects the PTE again.
# The next dirty() must report the page, in the mode the backend uses and in both
# raw modes.
@needs_syscall
@pytest.mark.parametrize("no_reused_regions", [False, True], ids=["default", "nrr"])
def test_syscall_write_then_fork_not_lost(no_reused_regions: bool) -> None:
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    mode = mock.patch.object(memwatch._backends, "_SYSCALL_NO_REUSED_REGIONS", no_reused_regions)
    with mode, anon(4) as m, memwatch.Watch(m, backend="syscall") as w:
        a = address_of(m)
        m[:] = b"x" * len(m)
        w.reset()
        _mprotect(a, 4 * PAGE, mmap.PROT_READ)
        _mprotect(a, 4 * PAGE, rw)
        m[PAGE + 5] = 7
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert [g // PAGE for g in w.dirty(reset=True)] == [1]
        assert list(w.dirty()) == []


@needs_syscall
def test_syscall_basic_cycle() -> None:
    with anon(10) as m:
        a = address_of(m)
        assert _get(a, 10) == list(range(10)), "a new mapping is dirty (VM_SOFTDIRTY)"
        assert _get(a, 10, GET | NRR) == [], "per-PTE only: nothing written yet"
        assert _pm(a, 10 * PAGE, CLEAR) == 0
        assert _get(a, 10) == []
        m[3 * PAGE + 7] = 1
        m[8 * PAGE] = 1
        assert _get(a, 10) == [3, 8]
        assert _get(a, 10, GET | NRR) == [3, 8]
        vec = array("Q", [0])
        assert _pm(a, 10 * PAGE, GET | CLEAR, vec) == 1 and vec[0] == 3 * PAGE
        assert _get(a, 10) == [8], "a full vec stops the clear after the last report"
        assert _pm(a + 8 * PAGE, PAGE, GET | CLEAR, vec) == 1
        assert _get(a, 10) == []
        assert _pm(a, 0, GET, vec) == 0, "len 0"


@needs_syscall
@pytest.mark.parametrize(
    ("start_off", "flags", "vec"),
    [
        pytest.param(0, 0, None, id="no-flags"),
        pytest.param(0, 8, "vec", id="unknown-bit"),
        pytest.param(0, NRR, "vec", id="nrr-alone"),
        pytest.param(1, GET, "vec", id="unaligned-start"),
        pytest.param(0, GET, None, id="get-without-vec"),
        pytest.param(0, CLEAR, "vec", id="clear-with-vec"),
    ],
)
def test_syscall_einval(start_off: int, flags: int, vec: str | None) -> None:
    with anon(2) as m:
        buf = array("Q", [0, 0]) if vec else None
        with pytest.raises(OSError) as info:
            _pm(address_of(m) + start_off, 2 * PAGE, flags, buf)
        assert info.value.errno == errno.EINVAL


@needs_syscall
def test_syscall_ebadf_and_esrch() -> None:
    r, w = os.pipe()
    try:
        with anon(1) as m, pytest.raises(OSError) as info:
            _pm(address_of(m), PAGE, GET, array("Q", [0]), pidfd=r)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(r)
        os.close(w)
    with Child(1) as child:
        fd = os.pidfd_open(child.pid)
        try:
            child.kill()
            with pytest.raises(ProcessLookupError):
                _pm(child.address, PAGE, GET, array("Q", [0]), pidfd=fd)
        finally:
            os.close(fd)


@needs_syscall
def test_syscall_other_process_by_pidfd() -> None:
    with Child(6) as child, memwatch.PidFd.open(child.pid) as pfd:
        fd = pfd.fileno()
        assert _pm(child.address, 6 * PAGE, CLEAR, pidfd=fd) == 0
        assert _get(child.address, 6, pidfd=fd) == []
        child.write([PAGE + 1, 4 * PAGE])
        assert _get(child.address, 6, GET | CLEAR, pidfd=fd) == [1, 4]
        assert _get(child.address, 6, pidfd=fd) == []


# -- Watch on another process -------------------------------------------------------


@pytest.mark.parametrize("backend", REMOTE)
@pytest.mark.parametrize("form", ["pid", "popen", "pidfd"])
def test_remote_watch(backend: str, form: str) -> None:
    with Child(8) as child:
        pfd = memwatch.PidFd.open(child.pid)
        pid: Any = {"pid": child.pid, "popen": child.proc, "pidfd": pfd}[form]
        try:
            with memwatch.Watch(child.address, 8 * PAGE, pid=pid, backend=backend) as w:
                assert w.pid == child.pid and w.backend == backend
                assert w.address == child.address
                assert list(w.dirty()) == [] or backend == "softdirty"
                child.write([PAGE + 5, 6 * PAGE])
                got = set(w.dirty(reset=True))
                if backend == "softdirty":
                    assert {PAGE, 6 * PAGE} <= got
                else:
                    assert got == {PAGE, 6 * PAGE}
                child.write([2 * PAGE])
                out = array("Q", bytes(8 * 8))
                n = w.dirty_into(out)
                assert 2 * PAGE in set(out[:n])
        finally:
            pfd.close()


@pytest.mark.parametrize("backend", REMOTE)
def test_remote_target_dies(backend: str) -> None:
    with Child(2) as child:
        w = memwatch.Watch(child.address, 2 * PAGE, pid=child.pid, backend=backend)
        child.write([0])
        child.kill()
        with pytest.raises(ProcessLookupError):
            w.dirty()
        with pytest.raises(ProcessLookupError):
            w.dirty_into(array("Q", bytes(16)))
        with pytest.raises(ProcessLookupError):
            w.reset()
        w.close()
        w.close()


@pytest.mark.skipif(
    not any(b.available and b.remote for b in BACKENDS.values()),
    reason="no backend can watch another process here: needs the QEMU guest kernel "
    "(process_memwatch or CONFIG_MEM_SOFT_DIRTY), run via ci/vm-run.sh",
)
def test_remote_auto_picks_a_remote_backend() -> None:
    first = next(b.name for b in memwatch.backends() if b.available and b.remote)
    with Child(1) as child, memwatch.Watch(child.address, PAGE, pid=child.pid) as w:
        assert w.backend == first


@pytest.mark.parametrize("backend", REMOTE)
def test_cli_watch(backend: str) -> None:
    with Child(4) as child:
        child.write([PAGE])
        proc = subprocess.run(
            [sys.executable, "-m", "memwatch", "watch", "--pid", str(child.pid),
             "--address", hex(child.address), "--length", str(4 * PAGE),
             "--interval", "0.05", "--count", "2", "--backend", backend],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"# pid {child.pid}")
        assert len(lines) == 3


# -- softdirty in this process ------------------------------------------------------


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] == "softdirty"])
def test_softdirty_write_watch_pops_one_page(backend: str) -> None:
    """GetWriteWatch's max_count=1 + reset pops the lowest written page,
    also on softdirty (its whole-process clear_refs is swept first)."""
    with memwatch.alloc(4 * PAGE, backend=backend) as buf:
        buf[PAGE] = 1
        buf[3 * PAGE] = 1
        assert memwatch.get_write_watch(buf)[0] == [buf.address + PAGE, buf.address + 3 * PAGE]
        assert memwatch.get_write_watch(buf, reset=True, max_count=1)[0] == [buf.address + PAGE]
        assert memwatch.get_write_watch(buf, reset=True)[0] == [buf.address + 3 * PAGE]
        assert memwatch.get_write_watch(buf)[0] == []
