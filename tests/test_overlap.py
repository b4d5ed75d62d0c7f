"""Overlapping Watches are independent (issue 7, item 1).

Several Watches over the same or overlapping pages each see every write made
after their own last reset, whatever the others do, and closing one never
blinds another (memwatch/_registry.py).  A differential test runs random
programs -- writes, scans with and without reset (whole, narrowed, into short
buffers), partial resets, closes and opens -- over up to four Watches at once
against a model, on every backend; the natural case (two small bytearrays on
one heap page) and the refusals (two mechanisms of one state family on one
page) have their own tests.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from array import array
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    BACKENDS,
    IN_GUEST,
    PAGE,
    address_of,
    anon,
    backend_params,
    skip_reason,
)

import memwatch
from memwatch import _registry

MAX_EXAMPLES = 8 if IN_GUEST else 60
NPAGES = 24
SLOTS = 4  # Watches open at once, at most

# Backends whose reports are exact on private anonymous NOHUGEPAGE pages
# written by one thread: all but softdirty (a VMA merge after a clear_refs
# makes the kernel report every page of it), checked as a superset.  softdirty
# runs here in the guest: its Watches share one process-wide clear_refs
# through the registry's sweeps (the host runs the same programs against a
# fake clear_refs: test_facade_fakes.py).
EXACT = {name for name in BACKENDS if name != "softdirty"}
# Before pa's hardening (branch pa: the uffd handler thread started before
# anything is protected, bitmaps in their own mmap) a uffd Watch on a heap
# buffer can hang in Watch() (newcomer H1) and an mprotect one can fault in
# its own SIGSEGV handler (C1): heap-buffer cases run once it is merged.
HEAP_SAFE = hasattr(memwatch._memwatch.MprotectTracker, "forget_if_foreign")


@dataclass(frozen=True)
class Open:
    slot: int
    first: int
    npages: int


@dataclass(frozen=True)
class Close:
    slot: int


@dataclass(frozen=True)
class Write:
    pages: frozenset[int]


@dataclass(frozen=True)
class Dirty:
    slot: int
    reset: bool
    start: int  # pages from the Watch's start
    length: int | None
    cap: int | None


@dataclass(frozen=True)
class Reset:
    slot: int
    start: int
    length: int | None


slots = st.integers(0, SLOTS - 1)


@st.composite
def opens(draw: st.DrawFn) -> Open:
    first = draw(st.integers(0, NPAGES - 1))
    return Open(draw(slots), first, draw(st.integers(1, NPAGES - first)))


ops = st.one_of(
    opens(),
    st.builds(Close, slots),
    st.builds(Write, st.frozensets(st.integers(0, NPAGES - 1), min_size=1, max_size=6)),
    st.builds(
        Dirty,
        slots,
        st.booleans(),
        st.integers(0, 4),
        st.none() | st.integers(0, 8),
        st.none() | st.integers(0, 4),
    ),
    st.builds(Reset, slots, st.integers(0, 4), st.none() | st.integers(0, 8)),
)


class Model:
    """What each open Watch must report: pages written since its reset."""

    def __init__(self, backend: str, base: int) -> None:
        self.backend = backend
        self.base = base
        self.watches: dict[int, memwatch.Watch] = {}
        self.ranges: dict[int, tuple[int, int]] = {}
        self.dirty: dict[int, set[int]] = {}

    def apply(self, op: object, mem: memoryview) -> None:
        if isinstance(op, Open):
            if op.slot in self.watches:
                return
            w = memwatch.Watch(
                self.base + op.first * PAGE, op.npages * PAGE, backend=self.backend
            )
            assert w.backend == self.backend
            self.watches[op.slot] = w
            self.ranges[op.slot] = (op.first, op.first + op.npages)
            self.dirty[op.slot] = set()
        elif isinstance(op, Close):
            w = self.watches.pop(op.slot, None)
            if w is not None:
                w.close()
                del self.ranges[op.slot], self.dirty[op.slot]
        elif isinstance(op, Write):
            for p in op.pages:
                mem[p * PAGE] = (mem[p * PAGE] + 1) % 256
                for slot, (a, b) in self.ranges.items():
                    if a <= p < b:
                        self.dirty[slot].add(p - a)
        elif isinstance(op, Dirty):
            self.dirty_op(op)
        elif isinstance(op, Reset):
            if op.slot not in self.watches:
                return
            w = self.watches[op.slot]
            npages = w.length // PAGE
            start = min(op.start, npages)
            length = None if op.length is None else min(op.length, npages - start)
            w.reset(start * PAGE, None if length is None else length * PAGE)
            end = npages if length is None else start + length
            self.dirty[op.slot] -= set(range(start, end))

    def dirty_op(self, op: Dirty) -> None:
        if op.slot not in self.watches:
            return
        w = self.watches[op.slot]
        npages = w.length // PAGE
        start = min(op.start, npages)
        length = None if op.length is None else min(op.length, npages - start)
        end = npages if length is None else start + length
        want = sorted(p for p in self.dirty[op.slot] if start <= p < end)
        kw = {
            "start": start * PAGE,
            "length": None if length is None else length * PAGE,
        }
        if op.cap is None:
            got = [x // PAGE for x in w.dirty(reset=op.reset, **kw)]
        else:
            out = array("Q", bytes(8 * op.cap))
            n = w.dirty_into(out, reset=op.reset, **kw)
            got = [x // PAGE for x in out[:n]]
        assert got == sorted(got)
        if self.backend in EXACT:
            if op.cap is None:
                assert got == want, f"slot {op.slot}"
            else:
                assert got == want[: op.cap], f"slot {op.slot}"
        else:
            # False positives allowed, never a miss among what was reported
            # up to the stop point.
            full = op.cap is not None and len(got) == op.cap
            stop = (got[-1] if got else start - 1) if full else end
            assert {p for p in want if p <= stop} <= set(got), f"slot {op.slot}"
        if op.reset:
            if op.cap is not None and len(got) == op.cap:
                cleared = set(range(start, got[-1] + 1)) if got else set()
            else:
                cleared = set(range(start, end))
            self.dirty[op.slot] -= cleared

    def close(self) -> None:
        for w in self.watches.values():
            w.close()
        self.watches.clear()


def run(backend: str, program: list[object]) -> None:
    with anon(NPAGES) as mem:
        model = Model(backend, address_of(mem))
        try:
            for op in program:
                model.apply(op, mem)
            # Finally every open Watch, scanned in full, agrees with the model.
            for slot in list(model.watches):
                model.dirty_op(Dirty(slot, True, 0, None, None))
        finally:
            model.close()
    assert not [d for d in _registry.domains() if d.key[0] != 0 and d.members], (
        "a closed Watch left a registration behind"
    )


@pytest.mark.parametrize("backend", backend_params(partial_reset=True))
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(program=st.lists(ops, max_size=40))
def test_overlapping_watches_match_the_model(
    backend: str, program: list[object]
) -> None:
    run(backend, program)


@pytest.mark.parametrize("backend", backend_params(partial_reset=True))
def test_same_range_and_partial_overlap(backend: str) -> None:
    """The review's a11_overlap.py scenario, on every backend."""
    with anon(8) as mem:
        base = address_of(mem)
        w1 = memwatch.Watch(base, 8 * PAGE, backend=backend)
        w2 = memwatch.Watch(base, 8 * PAGE, backend=backend)
        w3 = memwatch.Watch(base + 4 * PAGE, 4 * PAGE, backend=backend)
        mem[5 * PAGE] = 1
        w1.reset()
        assert list(w2.dirty()) == [5 * PAGE]  # w1's reset took nothing from w2
        assert list(w3.dirty()) == [PAGE]
        mem[PAGE] = 1
        assert list(w1.dirty(reset=True)) == [PAGE]
        assert list(w2.dirty(reset=True)) == [PAGE, 5 * PAGE]
        w2.close()
        mem[6 * PAGE] = 1
        assert list(w1.dirty()) == [6 * PAGE]  # closing w2 did not blind w1
        assert list(w3.dirty(reset=True)) == [PAGE, 2 * PAGE]
        w1.close()
        mem[7 * PAGE] = 1
        assert list(w3.dirty()) == [3 * PAGE]
        w3.close()


@pytest.mark.parametrize("backend", ["auto", *backend_params(partial_reset=True)])
def test_two_small_bytearrays_on_one_page(backend: str) -> None:
    """Two small heap buffers share a page: both Watches work (the review's
    a08_two_small.py / r_mprotect_two_small.py)."""
    if backend in ("uffd", "mprotect") and not HEAP_SAFE:
        pytest.skip(
            f"{backend} on heap buffers can hang or crash until branch pa is merged"
        )
    for size in (100, 1000, 3000):
        a = bytearray(size)
        b = bytearray(size)
        wa = memwatch.Watch(a, backend=backend)
        wb = memwatch.Watch(b, backend=backend)
        try:
            shared = (
                wa.address < wb.address + wb.length
                and wb.address < wa.address + wa.length
            )
            wa.reset()
            wb.reset()
            a[0] = 1
            b[0] = 1
            da = list(wa.dirty(reset=True))
            db = list(wb.dirty(reset=True))
            assert (wa.target_offset // PAGE) * PAGE in da
            assert (wb.target_offset // PAGE) * PAGE in db
            if shared:
                # b's write landed on a's page too (if it is): watched whole.
                pass
        finally:
            wa.close()
            wb.close()


def test_auto_moves_on_when_another_mechanism_holds_the_pages() -> None:
    names = [n for n in ("pagemap_scan", "uffd") if BACKENDS[n].available]
    if len(names) < 2 or not BACKENDS["mprotect"].available:
        pytest.skip("needs pagemap_scan, uffd and mprotect")
    with anon(4) as mem:
        base = address_of(mem)
        with memwatch.Watch(base, 4 * PAGE, backend="uffd") as wu:
            with pytest.raises(memwatch.UnsupportedError) as info:
                memwatch.Watch(base + PAGE, PAGE, backend="pagemap_scan")
            msg = str(info.value)
            assert f"{base:#x}+{4 * PAGE:#x}" in msg and "uffd" in msg
            # auto: pagemap_scan is refused for the overlap; the next backend
            # auto ranks (uffd, which shares; or syscall on the patched kernel).
            nxt = next(
                b.name for b in memwatch.backends()
                if b.available and b.name != "pagemap_scan"
            )
            with memwatch.Watch(base + PAGE, PAGE) as wa:
                assert wa.backend == nxt
                mem[PAGE] = 1
                assert list(wa.dirty()) == [0]
                assert list(wu.dirty()) == [PAGE]
        # Disjoint pages of different mechanisms of one family are fine.
        with (
            memwatch.Watch(base, PAGE, backend="uffd") as w1,
            memwatch.Watch(base + 2 * PAGE, PAGE, backend="pagemap_scan") as w2,
        ):
            mem[0] = 2
            mem[2 * PAGE] = 2
            assert list(w1.dirty()) == [0]
            assert list(w2.dirty()) == [0]


def test_fast_path_until_shared_and_back() -> None:
    """A Watch alone calls its tracker directly; sharing switches it to the
    registry, and it returns to the direct path once alone and drained."""
    backend = next(
        (n for n in ("pagemap_scan", "uffd", "mprotect") if BACKENDS[n].available), None
    )
    if backend is None:
        pytest.skip("no local backend")
    with anon(4) as mem:
        base = address_of(mem)
        w1 = memwatch.Watch(base, 4 * PAGE, backend=backend)
        assert w1._tracker is not None and w1._scan.__name__ == "scan"  # tracker.scanner()
        w2 = memwatch.Watch(base + PAGE, PAGE, backend=backend)
        assert w1._tracker is None and w2._tracker is None
        mem[PAGE] = 1
        w2.close()
        # w1 still has the harvested page pending, or it is in the kernel.
        assert list(w1.dirty(reset=True)) == [PAGE]
        assert w1._tracker is not None, "alone and drained: direct again"
        mem[0] = 1
        assert list(w1.dirty(reset=True)) == [0]
        w1.close()


@pytest.mark.parametrize("backend", backend_params(partial_reset=True))
def test_concurrent_scans_while_watches_come_and_go(backend: str) -> None:
    """One thread scans a Watch with reset in a loop (the direct path while it
    is alone) while another opens and closes overlapping Watches; every write
    made after the scanner's start is reported to it exactly once or more
    (never lost), and each short-lived Watch sees its own writes."""
    if not BACKENDS[backend].atomic:
        pytest.skip(
            f"{backend}'s scan-with-reset is not atomic (atomic=False): a write landing "
            "between a concurrent scan's pagemap read and its clear_refs is lost for "
            "every Watch (the mechanism's documented limit)"
        )
    with anon(8) as mem:
        base = address_of(mem)
        w = memwatch.Watch(base, 8 * PAGE, backend=backend)
        seen: set[int] = set()
        stop = threading.Event()
        errors: list[BaseException] = []

        def scanner() -> None:
            try:
                while not stop.is_set():
                    seen.update(w.dirty(reset=True))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        t = threading.Thread(target=scanner)
        t.start()
        try:
            for i in range(40):
                with memwatch.Watch(
                    base + (i % 4) * PAGE, 2 * PAGE, backend=backend
                ) as o:
                    off = (i % 4 + 1) * PAGE
                    ctypes.memset(base + off, i, 1)
                    assert PAGE in list(o.dirty())
        finally:
            stop.set()
            t.join()
        seen.update(w.dirty(reset=True))
        w.close()
        assert not errors, errors
        assert seen >= {PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE}
        gc.collect()


@pytest.mark.guest
def test_soft_dirty_family_refusals() -> None:
    """syscall and softdirty share the soft-dirty bit: a softdirty Watch
    shares its target with no other soft-dirty Watch (clear_refs clears the
    whole process), and syscall Watches share pages among themselves."""
    for name in ("syscall", "softdirty"):
        reason = skip_reason(name)
        if reason is not None:
            pytest.skip(reason)
    with anon(4) as mem:
        base = address_of(mem)
        with memwatch.Watch(base, 2 * PAGE, backend="syscall") as w1:
            with pytest.raises(memwatch.UnsupportedError, match="clear_refs"):
                memwatch.Watch(base + 3 * PAGE, PAGE, backend="softdirty")
            with memwatch.Watch(base + PAGE, 2 * PAGE, backend="syscall") as w2:
                mem[PAGE] = 1
                w1.reset()
                assert list(w2.dirty()) == [0]
                assert list(w1.dirty()) == []
        with (
            memwatch.Watch(base, PAGE, backend="softdirty"),
            pytest.raises(memwatch.UnsupportedError, match="clear_refs"),
        ):
            memwatch.Watch(base + 2 * PAGE, PAGE, backend="syscall")


@pytest.mark.parametrize("backend", backend_params(partial_reset=True))
def test_shared_path_checks_arguments_like_the_binding(backend: str) -> None:
    """A Watch that shares its pages (or any softdirty Watch) scans through
    the registry, not the binding: it must refuse what the binding refuses
    (a non-bool reset, an out buffer that cannot export 8-byte items) before
    anything is reset -- the guest run found softdirty taking reset="yes"."""
    np = pytest.importorskip("numpy")
    with anon(2) as mem:
        base = address_of(mem)
        w1 = memwatch.Watch(base, 2 * PAGE, backend=backend)
        w2 = memwatch.Watch(base, PAGE, backend=backend)
        try:
            mem[0] = 1
            out = array("Q", bytes(16))
            for value in ("yes", 1, 0, None):
                with pytest.raises(TypeError, match="reset must be a bool"):
                    w1.dirty_into(out, reset=value)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match="reset must be a bool"):
                    w1.dirty(reset=value)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="cannot export") as info:
                w1.dirty_into(np.zeros(2, dtype="M8[s]"))
            assert "read-only" not in str(info.value)
            assert w1.dirty_into(out, reset=np.bool_(True)) >= 1
            assert out[0] == 0, "refused calls reset nothing"
            assert 0 in list(w2.dirty())
        finally:
            w2.close()
            w1.close()
