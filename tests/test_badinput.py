"""Bad input (issue 3, section 4): clear exceptions, never a crash."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
from array import array
from typing import Any

import pytest
from support import BACKENDS, PAGE, Child, address_of, anon, backend_params, touch

import memwatch

ANY = backend_params()


@pytest.fixture(params=ANY)
def watch(request: pytest.FixtureRequest) -> Any:
    m = anon(8)
    w = memwatch.Watch(m, backend=request.param)
    yield w
    w.close()
    m.release()


# -- out buffers ----------------------------------------------------------------


def _bad_outs() -> list[Any]:
    outs: list[Any] = [
        pytest.param(lambda: bytes(64), id="bytes"),
        pytest.param(lambda: memoryview(bytearray(64)).toreadonly(), id="readonly-view"),
        pytest.param(lambda: memoryview(array("Q", bytes(64)))[::2], id="strided-view"),
        pytest.param(lambda: array("I", bytes(64)), id="itemsize-4"),
        pytest.param(lambda: array("B", bytes(64)), id="itemsize-1"),
        pytest.param(lambda: bytearray(64), id="bytearray"),
        pytest.param(lambda: [0] * 8, id="list"),
        pytest.param(lambda: None, id="None"),
    ]
    try:
        import numpy as np
    except ImportError:
        return outs

    def readonly() -> Any:
        a = np.zeros(8, dtype=np.uint64)
        a.flags.writeable = False
        return a

    outs += [
        pytest.param(readonly, id="np-readonly"),
        pytest.param(lambda: np.zeros(16, dtype=np.uint64)[::2], id="np-strided"),
        pytest.param(lambda: np.zeros(8, dtype=np.uint32), id="np-uint32"),
        pytest.param(lambda: np.zeros((4, 4), dtype=np.uint64).T, id="np-fortran"),
    ]
    return outs


@pytest.mark.parametrize("make_out", _bad_outs())
@pytest.mark.parametrize("narrow", [False, True], ids=["whole", "narrowed"])
def test_bad_out_is_typeerror(watch: memwatch.Watch, make_out: Any, narrow: bool) -> None:
    kwargs: dict[str, Any] = {"start": PAGE} if narrow else {}
    with pytest.raises(TypeError):
        watch.dirty_into(make_out(), **kwargs)
    with pytest.raises(TypeError):
        watch.dirty_into(make_out(), reset=True, **kwargs)


def test_bad_out_resets_nothing() -> None:
    name = next(b.name for b in memwatch.backends() if b.available and b.partial_reset)
    with anon(4) as m, memwatch.Watch(m, backend=name) as w:
        touch(m, [1])
        with pytest.raises(TypeError):
            w.dirty_into(bytes(64), reset=True)
        assert list(w.dirty()) == [PAGE]


# -- ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (-PAGE, None),
        (9 * PAGE, None),
        (0, 9 * PAGE),
        (4 * PAGE, 5 * PAGE),
        (8 * PAGE, 1),
        (0, -1),
        (1, None),
        (PAGE + 7, PAGE),
    ],
)
def test_range_outside_is_valueerror(
    watch: memwatch.Watch, start: int, length: int | None
) -> None:
    out = array("Q", bytes(64))
    with pytest.raises(ValueError):
        watch.dirty(start=start, length=length)
    with pytest.raises(ValueError):
        watch.dirty_into(out, start=start, length=length)
    if BACKENDS[watch.backend].partial_reset:
        with pytest.raises(ValueError):
            watch.reset(start, length)


@pytest.mark.parametrize("bad", ["0", 1.0, None, True])
def test_range_wrong_type_is_typeerror(watch: memwatch.Watch, bad: object) -> None:
    if bad is None:  # None is fine for length, not for start
        with pytest.raises(TypeError):
            watch.dirty(start=bad)  # type: ignore[arg-type]
        return
    with pytest.raises(TypeError):
        watch.dirty(start=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        watch.dirty(length=bad)  # type: ignore[arg-type]


# -- targets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "exc"),
    [
        pytest.param(b"x" * 100, TypeError, id="bytes"),
        pytest.param(memoryview(bytearray(100)).toreadonly(), TypeError, id="readonly"),
        pytest.param(memoryview(bytearray(8192))[::2], TypeError, id="strided"),
        pytest.param(bytearray(), ValueError, id="empty"),
        pytest.param([1, 2, 3], TypeError, id="list"),
        pytest.param("text", TypeError, id="str"),
        pytest.param(None, TypeError, id="None"),
        pytest.param(1.5, TypeError, id="float"),
    ],
)
def test_bad_target(target: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        memwatch.Watch(target)


def test_readonly_mmap_target() -> None:
    ro = mmap.mmap(-1, PAGE, prot=mmap.PROT_READ)
    try:
        with pytest.raises(TypeError, match="writable"):
            memwatch.Watch(ro)
    finally:
        ro.close()


def test_int_target_arguments() -> None:
    with pytest.raises(TypeError, match="length"):
        memwatch.Watch(0x10000)
    with pytest.raises(ValueError):
        memwatch.Watch(0x10000, 0)
    with pytest.raises(ValueError):
        memwatch.Watch(-PAGE, PAGE)
    with pytest.raises(ValueError):
        memwatch.Watch((1 << 64) - PAGE, 2 * PAGE)
    with pytest.raises(TypeError):
        memwatch.Watch(True, PAGE)
    with pytest.raises(TypeError):
        memwatch.Watch(0x10000, "4096")  # type: ignore[arg-type]
    with anon(1) as m, pytest.raises(TypeError, match="length"):
        memwatch.Watch(m, PAGE)


@pytest.mark.parametrize("backend", ANY)
def test_unmapped_int_target(backend: str) -> None:
    """A hole: the registering backends fail with the kernel's errno; the
    page-table readers (syscall, softdirty) see nothing dirty there."""
    m = anon(4)
    addr = address_of(m)
    m.release()  # unmapped: now a hole (nothing else maps there this quickly)
    if backend in ("syscall", "softdirty"):
        with memwatch.Watch(addr, 4 * PAGE, backend=backend) as w:
            assert list(w.dirty(reset=True)) == []
        return
    with pytest.raises(OSError) as info:
        w = memwatch.Watch(addr, 4 * PAGE, backend=backend)
        # Some backends only notice at the first scan.
        w.dirty()
        w.close()
    assert not isinstance(info.value, memwatch.UnsupportedError)


def test_bad_backend_argument() -> None:
    with anon(1) as m:
        with pytest.raises(ValueError, match="unknown backend"):
            memwatch.Watch(m, backend="nope")
        with pytest.raises(TypeError):
            memwatch.Watch(m, backend=None)  # type: ignore[arg-type]


# -- the buffer stays put -----------------------------------------------------------


def test_watched_bytearray_cannot_be_resized() -> None:
    buf = bytearray(3 * PAGE)
    w = memwatch.Watch(buf)
    with pytest.raises(BufferError):
        buf.extend(b"more")
    with pytest.raises(BufferError):
        del buf[:10]
    with pytest.raises(BufferError):
        buf.clear()
    buf[0] = 1  # writes in place are fine
    w.close()
    buf.clear()


def test_watched_mmap_cannot_be_closed_or_resized() -> None:
    m = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE)
    with memwatch.Watch(m):
        with pytest.raises(BufferError):
            m.close()
        with pytest.raises((BufferError, SystemError, OSError)):
            m.resize(4 * PAGE)
        assert not m.closed
    m.close()


def test_watch_keeps_target_alive() -> None:
    import gc

    w = memwatch.Watch(bytearray(2 * PAGE))
    gc.collect()
    w.dirty()  # the bytearray is still alive through the export
    w.close()


# -- closed Watch -------------------------------------------------------------------------


def test_closed_watch_raises(watch: memwatch.Watch) -> None:
    watch.close()
    with pytest.raises(ValueError, match="closed"):
        watch.dirty()
    with pytest.raises(ValueError, match="closed"):
        watch.dirty(reset=True, start=PAGE, length=PAGE)
    with pytest.raises(ValueError, match="closed"):
        watch.dirty_into(array("Q", [0]))
    with pytest.raises(ValueError, match="closed"):
        watch.dirty_into(bytes(8))  # closed wins over a bad out: no crash either way
    with pytest.raises(ValueError, match="closed"):
        watch.reset()
    watch.close()


def test_closed_alloc_raises() -> None:
    buf = memwatch.alloc(PAGE)
    buf.close()
    with pytest.raises(ValueError):
        memwatch.get_write_watch(buf)
    with pytest.raises(ValueError):
        memwatch.reset_write_watch(buf)


def test_write_watch_bad_arguments() -> None:
    with memwatch.alloc(PAGE) as buf:
        with pytest.raises(ValueError):
            memwatch.get_write_watch(buf, max_count=-1)
        with pytest.raises(TypeError):
            memwatch.get_write_watch(buf, max_count=1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            memwatch.get_write_watch(bytearray(10))
        with pytest.raises(TypeError):
            memwatch.reset_write_watch(object())
    with pytest.raises(ValueError):
        memwatch.alloc(0)
    with pytest.raises(TypeError):
        memwatch.alloc(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        memwatch.alloc(PAGE, backend="nope")


# -- processes ----------------------------------------------------------------------------


def test_pid_argument_types() -> None:
    with anon(1) as m, pytest.raises(TypeError, match="buffer"):
        memwatch.Watch(m, pid=os.getppid())
    with pytest.raises(ValueError):
        memwatch.Watch(0x10000, PAGE, pid=-1)
    with pytest.raises(ValueError):
        memwatch.Watch(0x10000, PAGE, pid=0)
    with pytest.raises(TypeError):
        memwatch.Watch(0x10000, PAGE, pid="1")
    with pytest.raises(TypeError):
        memwatch.Watch(0x10000, PAGE, pid=True)


def test_own_pid_means_this_process() -> None:
    with anon(2) as m:
        addr = address_of(m)
        with memwatch.Watch(addr, 2 * PAGE, pid=os.getpid()) as w:
            assert w.pid is None
            m[PAGE] = 1
            assert list(w.dirty()) == [PAGE]


def _dead_child() -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p


def test_dead_process_pid_is_processlookuperror() -> None:
    p = _dead_child()
    with pytest.raises(ProcessLookupError):
        memwatch.Watch(0x10000, PAGE, pid=p.pid)
    with pytest.raises(ProcessLookupError):
        memwatch.Watch(0x10000, PAGE, pid=p)  # an object with .pid


def test_dead_process_pidfd_is_processlookuperror() -> None:
    with Child(1) as child:
        fd = os.pidfd_open(child.pid)
        try:
            child.kill()
            with pytest.raises(ProcessLookupError):
                memwatch.Watch(child.address, PAGE, pid=memwatch.PidFd(fd))
        finally:
            os.close(fd)


def test_pidfd_wrapper() -> None:
    with Child(1) as child:
        with memwatch.PidFd.open(child.pid) as pfd:
            assert pfd.pid == child.pid
            assert pfd.fileno() >= 0
            assert str(child.pid) in repr(pfd)
        with pytest.raises(ValueError):
            pfd.fileno()
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a pidfd"):
            memwatch.PidFd(r)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(TypeError):
        memwatch.PidFd("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        memwatch.PidFd(-1)


def test_remote_without_remote_backend_is_unsupported() -> None:
    if any(b.available and b.remote for b in memwatch.backends()):
        pytest.skip("a remote backend is available here (guest): see test_guest.py")
    with Child(2) as child:
        with pytest.raises(memwatch.UnsupportedError) as info:
            memwatch.Watch(child.address, 2 * PAGE, pid=child.pid)
        msg = str(info.value)
        assert "another process" in msg
        assert BACKENDS["syscall"].reason in msg
        assert BACKENDS["softdirty"].reason in msg
        assert set(info.value.reasons) >= {"syscall", "softdirty"}
        with pytest.raises(memwatch.UnsupportedError, match="another process"):
            memwatch.Watch(child.address, 2 * PAGE, pid=child.proc, backend="pagemap_scan")


# -- the bare syscall ---------------------------------------------------------------------


def test_process_memwatch_argument_types() -> None:
    with pytest.raises(TypeError):
        memwatch.process_memwatch("x", 0, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        memwatch.process_memwatch(memwatch.PIDFD_SELF, 1.0, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        memwatch.process_memwatch(memwatch.PIDFD_SELF, -1, 0, 1)
    with pytest.raises(ValueError):
        memwatch.process_memwatch(memwatch.PIDFD_SELF, 0, -1, 1)
    with pytest.raises(OverflowError):
        memwatch.process_memwatch(memwatch.PIDFD_SELF, 1 << 64, 0, 1)
    with pytest.raises(OverflowError):
        memwatch.process_memwatch(memwatch.PIDFD_SELF, 0, 0, 1 << 32)


def test_process_memwatch_enosys_on_stock_kernel() -> None:
    if BACKENDS["syscall"].available:
        pytest.skip("process_memwatch exists here (guest): see test_guest.py")
    out = array("Q", bytes(64))
    with anon(1) as m:
        for flags in (memwatch.Flags.SD_GET, memwatch.Flags.SD_GET | memwatch.Flags.SD_CLEAR):
            with pytest.raises(OSError) as info:
                memwatch.process_memwatch(memwatch.PIDFD_SELF, address_of(m), PAGE, flags, out)
            assert info.value.errno == errno.ENOSYS


class _FakeProcess:
    """Shaped like psutil.Process: .pid and is_running()."""

    def __init__(self, pid: int, running: bool) -> None:
        self.pid = pid
        self._running = running

    def is_running(self) -> bool:
        return self._running


def test_process_object_that_has_exited() -> None:
    """A reaped Popen or a psutil.Process that is no longer running is never
    resolved through its (possibly reused) pid."""
    with Child(1) as child:
        with pytest.raises(ProcessLookupError):
            memwatch.Watch(child.address, PAGE, pid=_FakeProcess(child.pid, running=False))
        p = _dead_child()
        p.pid = child.pid  # as if the dead child's pid had been reused by `child`
        with pytest.raises(ProcessLookupError):
            memwatch.Watch(child.address, PAGE, pid=p)
