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
from typing import Any, Callable, ClassVar

import pytest
import test_overlap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PAGE, Child, address_of, anon

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

    def scanner(self) -> Callable[[int, int, Any, bool], int]:
        # The real trackers return a C function with scan()'s signature.
        return lambda start, length, out, reset=False: self.scan(start, length, out, reset)

    def reset(self, start: int, length: int) -> None:
        self.calls.append(("reset", start, length))
        self._maybe_fail()
        self.dirty = {p for p in self.dirty if not start <= p < start + length}

    # The registry's entry points (memwatch/_registry.py) while shared.
    def set_shared(self, shared: bool) -> None:
        self.calls.append(("set_shared", shared))

    def scan_shared(self, start: int, length: int, out: Any, reset: bool = False) -> int:
        return self.scan(start, length, out, reset)

    def reset_shared(self, start: int, length: int) -> None:
        self.reset(start, length)

    def forget_if_foreign(self) -> bool:
        return False


class FakeSoftDirty(FakeTracker):
    """clear_refs as the kernel does it: one soft-dirty state per process,
    every reset (whatever its range) clears all of it, and a reset scan
    refuses an `out` too short for every dirty page (SoftDirty::scan)."""

    partial_reset: ClassVar[bool] = False
    atomic: ClassVar[bool] = False
    false_positives: ClassVar[bool] = True
    # Soft-dirty pages per target pid (the kernel's process-wide state).
    process: ClassVar[dict[int, set[int]]] = {}

    @property  # type: ignore[override]
    def dirty(self) -> set[int]:
        return FakeSoftDirty.process.setdefault(self.args[0], set())

    @dirty.setter
    def dirty(self, pages: set[int]) -> None:
        FakeSoftDirty.process[self.args[0]] = set(pages)

    def attach(self, start: int, length: int) -> None:
        super().attach(start, length)
        self.dirty = set()  # SoftDirty::attach writes clear_refs

    def scan(self, start: int, length: int, out: Any, reset: bool = False) -> int:
        if reset:
            n = sum(1 for p in self.dirty if start <= p < start + length)
            if n > len(memoryview(out).cast("B").cast("Q")):
                raise ValueError("softdirty cannot reset only the reported pages")
        n = super().scan(start, length, out, False)
        if reset:
            self.dirty = set()
        return n

    def reset(self, start: int, length: int) -> None:
        self.calls.append(("reset", start, length))
        self._maybe_fail()
        self.dirty = set()  # the whole process


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
    FakeSoftDirty.process.clear()
    yield FakeTracker.instances
    FakeTracker.instances.clear()
    FakeSoftDirty.process.clear()


def _fdinfo_pid(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError("not a pidfd")


def test_backends_reflect_fakes(fakes: list[FakeTracker]) -> None:
    bs = {b.name: b for b in memwatch.backends()}
    assert bs["syscall"].available and bs["softdirty"].available
    # clear_refs clears the whole process; the registry makes it partial.
    assert bs["softdirty"].partial_reset
    assert not _backends.tracker_class("softdirty").partial_reset


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


def test_softdirty_partial_reset_through_the_registry(fakes: list[FakeTracker]) -> None:
    """clear_refs clears the whole process; the registry keeps what each
    reset clears beyond what was asked in the Watch's pending pages, so
    softdirty resets exactly the pages asked for (partial_reset=True)."""
    with anon(8) as m, memwatch.Watch(m, backend="softdirty") as w:
        (t,) = fakes
        assert t.args == (os.getpid(),)
        t.dirty = {w.address + PAGE, w.address + 5 * PAGE, w.address + 6 * PAGE}
        w.reset(PAGE, PAGE)  # clears the process, keeps 5 and 6 pending
        assert t.dirty == set()
        assert list(w.dirty()) == [5 * PAGE, 6 * PAGE]
        t.dirty = {w.address}
        out = array("Q", bytes(8))
        assert w.dirty_into(out, reset=True) == 1 and out[0] == 0
        assert w.dirty_into(out, reset=True) == 1 and out[0] == 5 * PAGE
        assert list(w.dirty(reset=True, start=6 * PAGE)) == [6 * PAGE]
        assert list(w.dirty()) == []
        # A write made after a partial reset is seen again.
        t.dirty = {w.address + 5 * PAGE}
        assert list(w.dirty(reset=True, start=0, length=PAGE)) == []
        assert list(w.dirty(reset=True)) == [5 * PAGE]
        # Bad out buffers are still TypeError, before anything is cleared.
        t.dirty = {w.address + 2 * PAGE}
        with pytest.raises(TypeError):
            w.dirty_into(bytes(64), reset=True, start=PAGE)
        assert list(w.dirty(reset=True)) == [2 * PAGE]


def test_softdirty_watches_share_one_process(fakes: list[FakeTracker]) -> None:
    """Several softdirty Watches on one process: none's reset (a whole-process
    clear_refs) hides a write from another; syscall beside them is refused."""
    with anon(12) as m:
        base = address_of(m)
        a = memwatch.Watch(base, 8 * PAGE, backend="softdirty")
        b = memwatch.Watch(base + 4 * PAGE, 8 * PAGE, backend="softdirty")  # overlaps 4..7
        c = memwatch.Watch(base + 11 * PAGE, PAGE, backend="softdirty")  # inside b
        proc = FakeSoftDirty.process[os.getpid()]
        proc.update(base + p * PAGE for p in (1, 5, 9, 11))
        assert list(a.dirty(reset=True)) == [PAGE, 5 * PAGE]
        assert FakeSoftDirty.process[os.getpid()] == set(), "clear_refs cleared it all"
        assert list(b.dirty()) == [PAGE, 5 * PAGE, 7 * PAGE]
        a.reset()
        assert list(c.dirty(reset=True)) == [0]
        assert list(b.dirty(reset=True, length=2 * PAGE)) == [PAGE]
        assert list(b.dirty()) == [5 * PAGE, 7 * PAGE]
        # A new Watch's attach clears the process too: nothing is lost.
        FakeSoftDirty.process[os.getpid()].add(base + 6 * PAGE)
        d = memwatch.Watch(base, 12 * PAGE, backend="softdirty")
        assert list(d.dirty()) == []
        assert list(b.dirty()) == [2 * PAGE, 5 * PAGE, 7 * PAGE]
        assert list(a.dirty()) == [6 * PAGE]
        with pytest.raises(memwatch.UnsupportedError, match="softdirty Watches share"):
            memwatch.Watch(base + 2 * PAGE, PAGE, backend="syscall")
        with anon(1) as m2:  # disjoint pages, same process: still refused
            with pytest.raises(memwatch.UnsupportedError, match="clear_refs"):
                memwatch.Watch(m2, backend="syscall")
            m2w = memwatch.Watch(m2)  # auto moves on
            assert m2w.backend != "syscall"
            m2w.close()
        for w in (a, b, c, d):
            w.close()
    with anon(1) as m3, memwatch.Watch(m3, backend="syscall"):
        pass  # every softdirty Watch is closed: allowed again


def test_alloc_auto_takes_softdirty_when_it_is_the_best_left(
    fakes: list[FakeTracker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a kernel with only softdirty and mprotect (an old one without
    userfaultfd), alloc()'s auto wants partial reset: softdirty has it now,
    and ranks before mprotect."""
    real_probe = _backends._probe

    def probe(name: str) -> tuple[bool, str]:
        if name == "softdirty":
            return True, ""
        if name == "mprotect":
            return real_probe(name)
        return False, f"{name} disabled by the test"

    monkeypatch.setattr(_backends, "_probe", probe)
    with memwatch.alloc(2 * PAGE) as buf:
        assert buf.watch.backend == "softdirty"
        FakeSoftDirty.process[os.getpid()] = {buf.address, buf.address + PAGE}
        assert memwatch.get_write_watch(buf, reset=True, max_count=1) == ([buf.address], PAGE)
        assert memwatch.get_write_watch(buf, reset=True) == ([buf.address + PAGE], PAGE)
        assert memwatch.get_write_watch(buf, reset=True) == ([], PAGE)
    rows = {c.backend.name: c for c in _backends.explain(partial_reset=True)}
    assert rows["softdirty"].chosen
    assert "ranked lower: it costs more than softdirty" in rows["mprotect"].why
    assert "disabled by the test" in rows["uffd"].why


class _FakeSoftDirtyModel(test_overlap.Model):
    """test_overlap's model, with each write also setting the fake kernel's
    soft-dirty bit (the fake cannot see memory writes)."""

    def apply(self, op: object, mem: memoryview) -> None:
        super().apply(op, mem)
        if isinstance(op, test_overlap.Write):
            FakeSoftDirty.process.setdefault(os.getpid(), set()).update(
                self.base + p * PAGE for p in op.pages
            )


@settings(
    max_examples=test_overlap.MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(program=st.lists(test_overlap.ops, max_size=40))
def test_softdirty_watches_match_the_model(
    fakes: list[FakeTracker], monkeypatch: pytest.MonkeyPatch, program: list[object]
) -> None:
    """Up to four softdirty Watches at once over overlapping ranges, random
    writes, scans (whole, narrowed, short buffers, with and without reset),
    partial resets, opens and closes, against test_overlap's model -- with a
    fake kernel whose every reset clears the whole process, as clear_refs
    does.  Exact: the fake has no false positives.  The real clear_refs runs
    the same program in the guest (test_overlap.py, softdirty)."""
    monkeypatch.setattr(test_overlap, "EXACT", {"softdirty"})
    FakeSoftDirty.process.clear()
    with anon(test_overlap.NPAGES) as mem:
        model = _FakeSoftDirtyModel("softdirty", address_of(mem))
        try:
            for op in program:
                model.apply(op, mem)
            for slot in list(model.watches):
                model.dirty_op(test_overlap.Dirty(slot, True, 0, None, None))
        finally:
            model.close()
