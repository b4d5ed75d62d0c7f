"""Bad input: clear exceptions in the facade's own words, never a crash."""

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
    """A hole: the registering backends refuse it with one OSError(ENOMEM)
    naming the range (not a raw UFFDIO_REGISTER/mprotect errno); the
    page-table readers (syscall, softdirty) see nothing dirty there."""
    m = anon(4)
    addr = address_of(m)
    m.release()  # unmapped: now a hole (nothing else maps there this quickly)
    if backend in ("syscall", "softdirty"):
        with memwatch.Watch(addr, 4 * PAGE, backend=backend) as w:
            assert list(w.dirty(reset=True)) == []
        return
    with pytest.raises(OSError) as info:
        memwatch.Watch(addr, 4 * PAGE, backend=backend)
    assert info.value.errno == errno.ENOMEM
    assert str(info.value) == _unmapped(addr, 4 * PAGE, addr, addr + 4 * PAGE)


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


def test_watched_mapping_attributes_are_read_only() -> None:
    """get_write_watch() computes absolute addresses from them: a stray
    assignment must not silently corrupt its results."""
    with memwatch.alloc(PAGE) as buf:
        with pytest.raises(AttributeError):
            buf.address = 0  # type: ignore[misc]
        with pytest.raises(AttributeError):
            buf.watch = None  # type: ignore[misc,assignment]
        buf[0:1] = b"x"
        assert memwatch.get_write_watch(buf)[0] == [buf.address]


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


# -- the facade's own words, never pybind11's -------------------------------------------

PYBIND11_TEXT = ("incompatible function arguments", "Invoked with", "_memwatch.")
BAD_INTS = [2**63, 2**64 - PAGE, 0xFFFF800000000000, 2**64, 2**70, -1, 1.5, "4096",
            None, object()]


def _words(exc: BaseException) -> str:
    text = str(exc)
    for bad in PYBIND11_TEXT:
        assert bad not in text, text
    assert text, type(exc)
    return text


def _refused(call: Any) -> BaseException:
    with pytest.raises((TypeError, ValueError, OverflowError)) as info:
        call()
    _words(info.value)
    return info.value


@pytest.mark.parametrize("backend", ANY)
def test_watch_addresses_in_the_kernel_half(backend: str) -> None:
    """Newcomer M2: Watch(2**63, 4096) gave pybind11's "incompatible function
    arguments" dump with the tracker's repr."""
    for address in (2**63, 2**64 - PAGE, 0xFFFF800000000000):
        err = _refused(lambda a=address: memwatch.Watch(a, PAGE, backend=backend))
        assert f"{address:#x}" in str(err)


@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_watch_bad_int_arguments(value: object) -> None:
    _refused(lambda: memwatch.Watch(value, PAGE))
    with anon(1) as m:
        _refused(lambda: memwatch.Watch(address_of(m), value))


@pytest.mark.parametrize("value", ["yes", 1, 0, None, 1.0, object()], ids=repr)
def test_reset_flag_must_be_a_bool(watch: memwatch.Watch, value: object) -> None:
    """Newcomer M2: dirty_into(out, reset="yes") gave pybind11's dump; a
    truthy non-bool must not be taken as a request to reset either."""
    out = array("Q", bytes(8 * 8))
    for call in (lambda: watch.dirty_into(out, reset=value),
                 lambda: watch.dirty(reset=value),
                 lambda: memwatch.get_write_watch(watch, reset=value)):
        err = _refused(call)
        assert isinstance(err, TypeError) and "reset must be a bool" in str(err)


@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_narrowing_bad_values(watch: memwatch.Watch, value: object) -> None:
    out = array("Q", bytes(8 * 8))
    _refused(lambda: watch.dirty_into(out, start=value))
    _refused(lambda: watch.dirty(start=value))
    _refused(lambda: watch.reset(value))
    if value is not None:  # length=None means "to the end"
        _refused(lambda: watch.dirty_into(out, length=value))
        _refused(lambda: watch.dirty(length=value))
        _refused(lambda: watch.reset(0, value))


NOT_INTS = [-1, 2**64, 2**70, 1.5, "4096", None, object()]


@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_write_watch_layer_bad_values(value: object) -> None:
    if value is not None:
        _refused(lambda: memwatch.alloc(value))  # type: ignore[arg-type]
    with memwatch.alloc(PAGE) as buf:
        if value is not None and value != 2**64 and value != 2**70:  # huge caps are fine
            _refused(lambda: memwatch.get_write_watch(buf, max_count=value))  # type: ignore[arg-type]


def test_alloc_larger_than_the_address_space() -> None:
    err = _refused(lambda: memwatch.alloc(2**70))
    assert "address space" in str(err)


@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_process_memwatch_bad_values(value: object) -> None:
    """The raw call leaves every representable value to the kernel (whose
    errno comes back as OSError); what cannot cross the C boundary is
    refused in words."""
    out = array("Q", bytes(8))
    _refused(lambda: memwatch.process_memwatch(memwatch.PIDFD_SELF, value, PAGE, 1, out))
    _refused(lambda: memwatch.process_memwatch(memwatch.PIDFD_SELF, 0, value, 1, out))
    _refused(lambda: memwatch.process_memwatch(memwatch.PIDFD_SELF, 0, PAGE, value, out))
    if value != -1:
        _refused(lambda: memwatch.process_memwatch(value, 0, PAGE, 1, out))


@pytest.mark.parametrize("value", [-1, 2**31, 2**70, 1.5, "3", None, True], ids=repr)
def test_pidfd_bad_values(value: object) -> None:
    _refused(lambda: memwatch.PidFd(value))  # type: ignore[arg-type]


def test_pidfd_open_bad_values() -> None:
    for value in ("1", 1.0, None, True):
        _refused(lambda v=value: memwatch.PidFd.open(v))  # type: ignore[arg-type]
    _refused(lambda: memwatch.PidFd.open(0))
    with pytest.raises(ProcessLookupError, match="no process with pid"):
        memwatch.PidFd.open(2**70)


def test_raw_bindings_say_what_is_wrong() -> None:
    """The private trackers too: every argument converted with a message."""
    from memwatch import _memwatch as mw

    t = mw.MprotectTracker()
    with anon(2) as m:
        addr = address_of(m)
        assert "start must be an int, not str" in _words(_refused(lambda: t.attach("1", PAGE)))
        assert "beyond the user address space" in _words(_refused(lambda: t.attach(2**63, PAGE)))
        assert "does not fit in 64 bits" in _words(_refused(lambda: t.attach(2**64, PAGE)))
        assert "must not be negative" in _words(_refused(lambda: t.attach(addr, -1)))
        t.attach(addr, 2 * PAGE)
        try:
            out = array("Q", bytes(16))
            assert "reset must be a bool" in _words(
                _refused(lambda: t.scan(addr, PAGE, out, "yes")))
        finally:
            t.detach()


# -- ranges that are not mapped --------------------------------------------------------------

REGISTERING = [p for p in ANY if p.values[0] in ("pagemap_scan", "uffd", "mprotect")]


def _unmapped(start: int, length: int, lo: int, hi: int) -> str:
    return (f"[Errno {errno.ENOMEM}] range {start:#x}+{length:#x} is not entirely mapped "
            f"in this process ({lo:#x}..{hi:#x} is not mapped)")


def _refused_unmapped(call: Any) -> str:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno == errno.ENOMEM
    return _words(info.value)


def _raw_map(npages: int) -> int:
    """A private anonymous mapping made with mmap(2) directly: the tests
    below unmap parts of it, which an mmap.mmap would unmap again (possibly
    someone else's memory by then) when it is collected."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, npages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return int(addr)


@pytest.mark.parametrize("backend", REGISTERING)
def test_address_zero_names_the_range(backend: str) -> None:
    """Newcomer M3: Watch(0, 4096) gave "[Errno 22] Invalid argument
    (UFFDIO_REGISTER: Invalid argument)" or "[Errno 12] ... (mprotect: ...)"."""
    text = _refused_unmapped(lambda: memwatch.Watch(0, PAGE, backend=backend))
    assert text == _unmapped(0, PAGE, 0, PAGE)


@pytest.mark.parametrize("backend", REGISTERING)
def test_huge_length_fails_before_allocating(backend: str) -> None:
    """Newcomer M4: Watch(addr, 1 << 46) allocated a 2 GiB bitmap (1-2 s)
    before failing, and 1 << 50 raised MemoryError: std::bad_alloc."""
    import resource
    import time

    with anon(4) as m:
        addr = address_of(m)
        for length in (1 << 46, 1 << 50):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.monotonic()
            text = _refused_unmapped(lambda n=length: memwatch.Watch(addr, n, backend=backend))
            assert "is not entirely mapped" in text
            assert time.monotonic() - t0 < 0.5
            grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            assert grown_kib < 64 * 1024, grown_kib


@pytest.mark.parametrize("backend", REGISTERING)
def test_partial_hole_leaves_memory_writable(backend: str) -> None:
    """Review C2/newcomer C2 from the facade's side: a range with a hole is
    refused before anything is protected, so the mapped prefix stays
    writable (this would crash the test process with mprotect otherwise)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = _raw_map(4)  # no Python object owns it: nothing munmaps it again later
    assert libc.munmap(addr + 2 * PAGE, 2 * PAGE) == 0  # the tail is now a hole
    text = _refused_unmapped(lambda: memwatch.Watch(addr, 4 * PAGE, backend=backend))
    assert text == _unmapped(addr, 4 * PAGE, addr + 2 * PAGE, addr + 4 * PAGE)
    ctypes.memset(addr, 1, 1)
    ctypes.memset(addr + PAGE, 2, 1)
    assert libc.munmap(addr, 2 * PAGE) == 0


@pytest.mark.parametrize("backend", REGISTERING)
def test_reset_after_munmap_names_the_range(backend: str) -> None:
    """Newcomer M3: reset() after munmap gave "FileNotFoundError: [Errno 2]
    No such file or directory (UFFDIO_WRITEPROTECT: ...)" (uffd-based) or
    ENOMEM (mprotect).  Whatever still fails now says it in words."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = _raw_map(4)  # no Python object owns it: nothing munmaps it again later
    w = memwatch.Watch(addr, 4 * PAGE, backend=backend)
    try:
        assert libc.munmap(addr, 4 * PAGE) == 0
        try:
            w.reset()
        except OSError as err:
            assert err.errno == errno.ENOMEM
            assert str(err) == _unmapped(addr, 4 * PAGE, addr, addr + 4 * PAGE)
        else:
            # mprotect skips what is gone; pagemap_scan write-protects only
            # populated pages, and nothing is populated any more.
            assert backend != "uffd", "UFFDIO_WRITEPROTECT refuses an unmapped range"
    finally:
        w.close()


def test_range_unmapped_under_a_watch_names_it() -> None:
    """A hole punched into an int-address Watch: whatever fails says which
    range and which hole, never a bare errno string."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = _raw_map(4)  # no Python object owns it: nothing munmaps it again later
    w = memwatch.Watch(addr, 4 * PAGE, backend="uffd" if BACKENDS["uffd"].available
                       else "pagemap_scan")
    try:
        assert libc.munmap(addr + PAGE, PAGE) == 0
        for call in (w.reset, w.dirty, lambda: w.dirty(reset=True)):
            try:
                call()
            except OSError as err:
                assert str(err) == _unmapped(addr, 4 * PAGE, addr + PAGE, addr + 2 * PAGE)
    finally:
        w.close()
        libc.munmap(addr, 4 * PAGE)


def test_uffd_file_mapping_says_why(tmp_path: Any) -> None:
    """Newcomer M5: uffd on a file-backed shared mapping gave a bare
    "[Errno 22] Invalid argument (UFFDIO_REGISTER ...)"."""
    if not BACKENDS["uffd"].available:
        pytest.skip(f"uffd unavailable here: {BACKENDS['uffd'].reason}")
    path = tmp_path / "data"
    path.write_bytes(bytes(4 * PAGE))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4 * PAGE) as fm:
        try:
            w = memwatch.Watch(fm, backend="uffd")
        except memwatch.UnsupportedError as err:
            assert "file" in str(err) and str(path) in str(err)
            assert "pagemap_scan" in str(err)
        else:  # a filesystem whose shared mappings uffd can write-protect
            w.close()


def test_oserror_says_strerror_once() -> None:
    """The binding printed "Device or resource busy (UFFDIO_REGISTER: Device
    or resource busy)"."""
    from memwatch import _memwatch as mw

    t = mw.MprotectTracker()
    with pytest.raises(OSError) as info:
        t.attach(0, PAGE)
    text = str(info.value)
    assert text.count(os.strerror(info.value.errno)) == 1, text
    assert text.startswith(f"[Errno {info.value.errno}] {os.strerror(info.value.errno)} ("), text


def test_numpy_integer_address() -> None:
    """Newcomer M7: Watch(np.uint64(addr), 4096) said "length is taken from
    the buffer"; a numpy integer is an address like an int."""
    np = pytest.importorskip("numpy")
    with anon(2) as m:
        addr = address_of(m)
        with memwatch.Watch(np.uint64(addr), np.int64(2 * PAGE)) as w:
            assert w.address == addr and w.length == 2 * PAGE


def test_unexportable_out_is_not_called_read_only(watch: memwatch.Watch) -> None:
    """Newcomer M7: a numpy datetime64 out buffer was "a read-only
    numpy.ndarray"; it is writable, it just cannot export a buffer."""
    np = pytest.importorskip("numpy")
    out = np.zeros(8, dtype="M8[s]")
    with pytest.raises(TypeError) as info:
        watch.dirty_into(out)
    assert "read-only" not in str(info.value)
    assert "cannot export" in str(info.value) or "8-byte" in str(info.value)


def test_closed_mid_call_says_closed() -> None:
    """Newcomer M7: a Watch closed by another thread while a call was on its
    way said either "operation on a closed Watch" or "tracker is detached",
    depending on timing.  A call that already holds the tracker's method
    (as a racing thread does) now gets the same words."""
    with anon(2) as m:
        w = memwatch.Watch(m)
        scan = w._scan  # what dirty_into() has fetched when close() overtakes it
        w.close()
        out = array("Q", bytes(16))
        with pytest.raises(ValueError, match="operation on a closed Watch"):
            scan(address_of(m), 2 * PAGE, out, False)
        with pytest.raises(ValueError, match="^operation on a closed Watch$"):
            w.dirty_into(out)


def test_mprotect_range_limit_is_an_oserror() -> None:
    """Newcomer M7: the mprotect backend's 256-range limit was a plain
    ValueError, as if the caller's arguments were wrong."""
    if not BACKENDS["mprotect"].available:
        pytest.skip(f"mprotect unavailable: {BACKENDS['mprotect'].reason}")
    maps = [mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE) for _ in range(257)]
    watches = []
    try:
        with pytest.raises(OSError) as info:
            for m in maps:
                watches.append(memwatch.Watch(m, backend="mprotect"))
        assert info.value.errno == errno.ENOSPC
        assert "at most 256 ranges" in str(info.value)
        assert 0 < len(watches) <= 256  # fewer if another test left one open
    finally:
        for w in watches:
            w.close()
        for m in maps:
            m.close()
