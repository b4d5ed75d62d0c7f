"""The facade's remote and no-partial-reset logic, on any host.

The syscall and softdirty backends exist only in the QEMU guest; here fake
tracker classes (same methods and capability attributes as the extension's)
stand in for them, as psutil's tests fake /proc, so that pid handling, pidfd
ownership, liveness checks, error translation and the partial-reset refusal
are exercised on every machine.  The real backends run the same scenarios in
the guest (test_guest.py, test_api.py with -m guest).
"""

from __future__ import annotations

import errno
import os
from array import array
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from support import PAGE, Child, anon

import memwatch
from memwatch import _backends


class FakeTracker:
    """Dirty state in a set; ``fail`` makes the next call raise it."""

    remote: ClassVar[bool] = True
    partial_reset: ClassVar[bool] = True
    atomic: ClassVar[bool] = True
    sees_kernel_writes: ClassVar[bool] = True
    false_positives: ClassVar[bool] = False
    instances: ClassVar[list[FakeTracker]] = []

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.dirty: set[int] = set()  # absolute page addresses
        self.fail: OSError | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.range: tuple[int, int] | None = None
        FakeTracker.instances.append(self)

    name = "fake"
    page_size = PAGE

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    def attach(self, start: int, length: int) -> None:
        self.calls.append(("attach", start, length))
        self.range = (start, length)

    def detach(self) -> None:
        self.calls.append(("detach",))
        self.range = None

    def scan(self, start: int, length: int, out: Any, reset: bool = False) -> int:
        self.calls.append(("scan", start, length, reset))
        self._maybe_fail()
        view = memoryview(out).cast("B").cast("Q")
        n = 0
        for page in sorted(p for p in self.dirty if start <= p < start + length):
            if n == len(view):
                break
            view[n] = page - start
            n += 1
            if reset:
                self.dirty.discard(page)
        return n

    def reset(self, start: int, length: int) -> None:
        self.calls.append(("reset", start, length))
        self._maybe_fail()
        self.dirty = {p for p in self.dirty if not start <= p < start + length}


class FakeSoftDirty(FakeTracker):
    partial_reset: ClassVar[bool] = False
    atomic: ClassVar[bool] = False
    false_positives: ClassVar[bool] = True


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeTracker]]:
    """syscall and softdirty replaced by available fakes."""
    specs = dict(_backends._BY_NAME)
    specs["syscall"] = specs["syscall"]._replace(cls=FakeTracker)
    specs["softdirty"] = specs["softdirty"]._replace(cls=FakeSoftDirty)
    real_probe = _backends._probe

    def probe(name: str) -> tuple[bool, str]:
        return (True, "") if name in ("syscall", "softdirty") else real_probe(name)

    monkeypatch.setattr(_backends, "_BY_NAME", specs)
    monkeypatch.setattr(_backends, "_probe", probe)
    FakeTracker.instances.clear()
    yield FakeTracker.instances
    FakeTracker.instances.clear()


def _fdinfo_pid(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError("not a pidfd")


def test_backends_reflect_fakes(fakes: list[FakeTracker]) -> None:
    bs = {b.name: b for b in memwatch.backends()}
    assert bs["syscall"].available and bs["softdirty"].available
    assert not bs["softdirty"].partial_reset


@pytest.mark.parametrize("form", ["pid", "popen", "pidfd", "psutil-like"])
def test_remote_pid_forms_open_a_pidfd(fakes: list[FakeTracker], form: str) -> None:
    with Child(2) as child:
        class Proc:
            pid = child.pid

            def is_running(self) -> bool:
                return True

        pfd = memwatch.PidFd.open(child.pid)
        pid: Any = {
            "pid": child.pid, "popen": child.proc, "pidfd": pfd, "psutil-like": Proc()
        }[form]
        w = memwatch.Watch(child.address, 2 * PAGE, pid=pid)
        pfd.close()  # the Watch holds its own descriptor
        (t,) = fakes
        assert w.backend == "syscall" and w.pid == child.pid
        (fd, nrr) = t.args
        assert nrr is True, "NO_REUSED_REGIONS on every call"
        assert _fdinfo_pid(fd) == child.pid
        assert t.calls[:2] == [("attach", child.address, 2 * PAGE),
                               ("reset", child.address, 2 * PAGE)]
        t.dirty = {child.address + PAGE}
        assert list(w.dirty()) == [PAGE]
        w.close()
        assert ("detach",) in t.calls
        with pytest.raises(OSError):
            os.fstat(fd)  # closed with the Watch


def test_remote_target_exit_is_processlookuperror(fakes: list[FakeTracker]) -> None:
    with Child(2) as child:
        w = memwatch.Watch(child.address, 2 * PAGE, pid=child.pid, backend="softdirty")
        (t,) = fakes
        assert t.args == (child.pid,)
        child.kill()
        # The path-based backend reads nothing and raises nothing by itself:
        # the pidfd tells that the process is gone.
        with pytest.raises(ProcessLookupError, match=str(child.pid)):
            w.dirty()
        with pytest.raises(ProcessLookupError):
            w.dirty_into(array("Q", bytes(16)))
        with pytest.raises(ProcessLookupError):
            w.reset()
        w.close()


def test_remote_errors_translated(fakes: list[FakeTracker]) -> None:
    with Child(1) as child:
        w = memwatch.Watch(child.address, PAGE, pid=child.pid)
        (t,) = fakes
        t.fail = PermissionError(errno.EPERM, "Operation not permitted")
        with pytest.raises(PermissionError, match="ptrace") as info:
            w.dirty()
        assert info.value.errno == errno.EPERM
        t.fail = ProcessLookupError(errno.ESRCH, "No such process")
        with pytest.raises(ProcessLookupError, match=f"process {child.pid} has exited"):
            w.reset()
        t.fail = OSError(errno.EFAULT, "Bad address")
        with pytest.raises(OSError) as err:
            w.dirty()
        assert err.value.errno == errno.EFAULT
        w.close()


def test_remote_buffer_target_refused(fakes: list[FakeTracker]) -> None:
    with anon(1) as m, Child(1) as child, pytest.raises(TypeError, match="address"):
        memwatch.Watch(m, pid=child.pid)


def test_auto_remote_prefers_syscall(fakes: list[FakeTracker]) -> None:
    with Child(1) as child:
        with memwatch.Watch(child.address, PAGE, pid=child.pid) as w:
            assert w.backend == "syscall"
        with memwatch.Watch(child.address, PAGE, pid=child.pid, backend="softdirty") as w:
            assert w.backend == "softdirty"
        with pytest.raises(memwatch.UnsupportedError, match="uffd"):
            memwatch.Watch(child.address, PAGE, pid=child.pid, backend="uffd")


def test_softdirty_partial_reset_refused(fakes: list[FakeTracker]) -> None:
    with anon(8) as m, memwatch.Watch(m, backend="softdirty") as w:
        (t,) = fakes
        assert t.args == (os.getpid(),)
        t.dirty = {w.address + PAGE, w.address + 5 * PAGE}
        before = list(t.calls)
        for call in (
            lambda: w.reset(PAGE),
            lambda: w.reset(0, PAGE),
            lambda: w.dirty(reset=True, start=PAGE),
            lambda: w.dirty_into(array("Q", bytes(8 * 8)), reset=True, length=PAGE),
            lambda: w.dirty_into(array("Q", bytes(8 * 7)), reset=True),
        ):
            with pytest.raises(memwatch.UnsupportedError, match="partial_reset"):
                call()
        assert t.calls == before, "refused before reaching the backend"
        # Bad out buffers are still TypeError, not UnsupportedError.
        with pytest.raises(TypeError):
            w.dirty_into(bytes(64), reset=True, start=PAGE)
        # Non-resetting partial queries and whole-range resets are fine.
        assert list(w.dirty(start=4 * PAGE)) == [5 * PAGE]
        assert w.dirty_into(array("Q", bytes(8)), start=0) == 1
        assert list(w.dirty(reset=True, start=2 * PAGE, length=0)) == []
        assert list(w.dirty(reset=True)) == [PAGE, 5 * PAGE]
        t.dirty = {w.address}
        assert w.dirty_into(array("Q", bytes(8 * 8)), reset=True) == 1
        w.reset()
        # One softdirty Watch per process: a second one's resets would erase
        # the first one's state.
        with anon(1) as m2:
            with pytest.raises(memwatch.UnsupportedError, match="another softdirty"):
                memwatch.Watch(m2, backend="softdirty")
            m2w = memwatch.Watch(m2, backend="pagemap_scan")
            m2w.close()
    with anon(1) as m3, memwatch.Watch(m3, backend="softdirty"):
        pass  # the first one is closed: allowed again


def test_alloc_auto_skips_softdirty(
    fakes: list[FakeTracker], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_probe = _backends._probe

    def probe(name: str) -> tuple[bool, str]:
        if name == "softdirty":
            return True, ""
        if name == "mprotect":
            return real_probe(name)
        return False, f"{name} disabled by the test"

    monkeypatch.setattr(_backends, "_probe", probe)
    with memwatch.alloc(PAGE) as buf:
        assert buf.watch.backend == "mprotect", "auto needs partial reset for alloc()"
    with memwatch.alloc(2 * PAGE, backend="softdirty") as buf:
        with pytest.raises(memwatch.UnsupportedError):
            memwatch.get_write_watch(buf, reset=True, max_count=1)
        assert memwatch.get_write_watch(buf, reset=True) == ([], PAGE)
