"""Overlapping Watches: one kernel registration per page, pending bits per Watch.

The kernel keeps one bit of write state per page and mechanism family:

``uffd-wp``     the uffd-wp bit of a PTE (``pagemap_scan``, ``uffd``); a VMA
                belongs to one userfaultfd, so a second registration of a page
                fails with EBUSY;
``soft-dirty``  the soft-dirty bit (``syscall``, ``softdirty``); anyone may
                clear it, and ``softdirty`` clears the whole process;
``mprotect``    the protection of a page (one SIGSEGV slot per page).

Two Watches over one page (two libraries in one process, two small
bytearrays on one heap page) would consume each other's bit.  So a *domain*
per (target process, family) owns the registrations: a list of disjoint
*segments*, each one tracker (one registration) of one mechanism.  A new
Watch registers only the parts of its range no segment covers yet and reuses
the segments that do; a segment is detached when the last Watch overlapping
it closes, and never re-segmented while in use (no registration gap, hence no
false positive from re-registering).  A segment may therefore stay
registered over pages that only a closed Watch covered; they cost faults but
are never reported to anyone.

Each Watch (a :class:`Member`) sees the kernel state through *harvests*: a
scan-with-reset of a segment part whose pages go into the pending set of
every member whose range holds them.  A member's scan with reset harvests its
range, then reports and clears its own pending pages; a scan without reset
peeks (no kernel reset) and merges with its pending pages; a reset harvests
into the others and clears its own.  So every member sees every write made
after its own last reset, whatever the others do.

Fast path: a member alone on exactly one segment equal to its range, with
nothing pending, is *exclusive* -- its Watch calls the tracker directly
(``tracker.scan``), with no lock or copy.  When another Watch joins, the
segment's tracker is switched with ``set_shared(True)``: that waits for any
direct call in flight, after which direct calls raise
``_memwatch.TrackerShared`` and the Watch retries through its member.

Mechanisms of one family never overlap: a pagemap_scan Watch and a uffd
Watch on one page, or syscall and softdirty, raise :class:`Conflict` (the
facade turns it into UnsupportedError, and ``backend="auto"`` tries the next
mechanism).

``softdirty`` resets through ``/proc/PID/clear_refs``, which clears the
soft-dirty bit of every page of the whole process.  So a softdirty domain
*sweeps* before every clear: it reads the kernel's soft-dirty state of every
segment (every softdirty Watch of that process, from this interpreter) into
the pending pages of each member whose range holds them, then clears once.
Several softdirty Watches on one process thus coexist, each resets only what
it asked (partial reset), and no Watch's reset hides a write from another.
A softdirty member therefore never takes the direct fast path.  What stays
process-wide: (a) a write made between the sweep's pagemap read and the
clear is lost for everyone (the mechanism is not atomic); (b) anything else
that clears the same process's soft-dirty bits -- another memwatch user, a
syscall-backend Watch (refused here for that reason), CRIU's pre-dump --
erases what this domain has not swept yet; (c) each clear takes the target's
mmap write lock and walks all of its page tables, whatever the Watch's size.

False positives this design adds: none in the steady state.  A page written
while two members shared it and then reset by one stays pending for the
other until that one resets it -- which is the point.
"""

from __future__ import annotations

import sys
import threading
import traceback
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _memwatch

if TYPE_CHECKING:
    from ._backends import Tracker

__all__ = ["FAMILY", "Conflict", "Member", "join"]

PAGE: int = _memwatch.PAGE_SIZE
FAMILY: dict[str, str] = {
    "syscall": "soft-dirty",
    "softdirty": "soft-dirty",
    "pagemap_scan": "uffd-wp",
    "uffd": "uffd-wp",
    "mprotect": "mprotect",
}
# Entries per harvest call: 512 KiB of offsets.
_HARVEST_CHUNK = 1 << 16


class Conflict(Exception):
    """A Watch cannot use this mechanism here; str() says why."""


def _span(start: int, end: int) -> str:
    return f"{start:#x}+{end - start:#x}"


class Segment:
    """One registration: a tracker attached to [start, end)."""

    __slots__ = ("backend", "end", "members", "shared", "start", "tracker")

    def __init__(self, start: int, end: int, backend: str, tracker: Tracker) -> None:
        self.start = start
        self.end = end
        self.backend = backend
        self.tracker = tracker
        self.members: set[Member] = set()
        self.shared = False


class Member:
    """One Watch's share of a domain."""

    __slots__ = (
        "__weakref__",
        "backend",
        "domain",
        "end",
        "on_mode",
        "pending",
        "segments",
        "start",
    )

    def __init__(
        self,
        domain: Domain,
        start: int,
        end: int,
        backend: str,
        on_mode: Callable[[Tracker | None], None],
    ) -> None:
        self.domain = domain
        self.start = start
        self.end = end
        self.backend = backend
        # Absolute addresses of pages harvested for this member and not yet
        # reported with reset / reset.
        self.pending: set[int] = set()
        self.segments: list[Segment] = []
        # Called (domain lock held) with the tracker to call directly, or
        # None when the member must go through scan()/reset() here.
        self.on_mode = on_mode

    def exclusive_tracker(self) -> Tracker | None:
        """sole_tracker() while no other member uses it and nothing is pending."""
        if self.backend == "softdirty" or self.pending:
            return None  # softdirty: its clear_refs reaches every Watch: always sweep first
        tracker = self.sole_tracker()
        if tracker is None or self.segments[0].members != {self}:
            return None
        return tracker

    def sole_tracker(self) -> Tracker | None:
        """The tracker of this member's one segment when that segment is
        exactly its range, else None.  It stays attached until this member
        leaves (whoever else joins), and raises TrackerShared on direct
        calls whenever the domain shares it (the C API's fast path)."""
        if len(self.segments) != 1:
            return None
        seg = self.segments[0]
        if seg.start == self.start and seg.end == self.end:
            return seg.tracker
        return None

    # -- the shared path -------------------------------------------------

    def scan(self, start: int, length: int, out: Any, reset: bool) -> int:
        """Offsets (from *start*) of this member's dirty pages in the range."""
        view = memoryview(out).cast("B").cast("Q")
        cap = len(view)
        end = start + length
        dom = self.domain
        with dom.lock:
            if dom.closed:
                raise ValueError("operation on a closed Watch")
            if reset:
                if self.backend == "softdirty":
                    dom.sweep(clear=True)
                else:
                    for seg, a, b in self._parts(start, end):
                        dom.harvest(seg, a, b)
                mine = self.pending
            else:
                mine = set(self.pending)
                for seg, a, b in self._parts(start, end):
                    mine.update(dom.peek(seg, a, b))
            pages = sorted(p for p in mine if start <= p < end)
            n = min(cap, len(pages))
            for i in range(n):
                view[i] = pages[i] - start
            if reset:
                self.pending.difference_update(pages[:n])
                dom.update_modes()
            return n

    def reset(self, start: int, length: int) -> None:
        end = start + length
        dom = self.domain
        with dom.lock:
            if dom.closed:
                raise ValueError("operation on a closed Watch")
            if self.backend == "softdirty":
                dom.sweep(clear=True)
            else:
                for seg, a, b in self._parts(start, end):
                    dom.harvest(seg, a, b, skip=self)
            self.pending = {p for p in self.pending if not start <= p < end}
            dom.update_modes()

    def _parts(self, start: int, end: int) -> list[tuple[Segment, int, int]]:
        return [
            (s, max(s.start, start), min(s.end, end))
            for s in self.segments
            if s.start < end and start < s.end
        ]

    def leave(self, then: Callable[[], None] | None = None) -> None:
        """Close: detach the segments no other member overlaps, then call
        *then* (deferred together when a finaliser closes the Watch while
        this thread is inside the domain: see :class:`_DomainLock`)."""
        self.domain.leave(self, then)


class _DomainLock:
    """A domain's lock, which knows which thread holds it.

    The cyclic garbage collector can run a finaliser (``Watch.__del__``, a
    ``WatchedMapping``'s) at any allocation, also while this thread is inside
    a domain operation (join, scan, reset, leave) holding the lock: the
    finaliser's close() would wait on the lock forever.  Such a close is
    deferred instead: :meth:`defer` queues it, and the thread that holds the
    lock runs it right after releasing it.  (An RLock would let the nested
    close change the domain's membership in the middle of the operation.)
    """

    __slots__ = ("_deferred", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._deferred: list[Callable[[], None]] = []

    def __enter__(self) -> None:
        self._lock.acquire()
        self._owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self._owner = 0
        self._lock.release()
        while self._deferred and not self.held_here():
            _run_deferred(self._deferred.pop(0))

    def held_here(self) -> bool:
        """True when the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def defer(self, fn: Callable[[], None]) -> None:
        """Run *fn* once the calling thread, which holds the lock, releases it."""
        self._deferred.append(fn)


def _run_deferred(fn: Callable[[], None]) -> None:
    # It stands for a finaliser's close(): an error is printed the way Python
    # prints one raised in __del__, never raised into the operation that
    # happened to trigger the garbage collection.
    try:
        fn()
    except Exception:  # noqa: BLE001 - printed, as from __del__
        print("Exception ignored in a deferred memwatch close:", file=sys.stderr)
        traceback.print_exc()


class Domain:
    """The registrations of one mechanism family in one target process."""

    def __init__(self, key: tuple[int, str]) -> None:
        self.key = key
        self.lock = _DomainLock()
        self.segments: list[Segment] = []
        self.members: set[Member] = set()
        self.closed = False

    # -- harvesting (lock held) ------------------------------------------

    def _collect(self, seg: Segment, a: int, b: int, reset: bool) -> list[int]:
        buf = array("Q", bytes(8 * min(_HARVEST_CHUNK, (b - a) // PAGE or 1)))
        pages: list[int] = []
        pos = a
        while pos < b:
            n = seg.tracker.scan_shared(pos, b - pos, buf, reset)
            pages.extend(pos + off for off in buf[:n])
            if n < len(buf):
                break
            pos += buf[n - 1] + PAGE
        return pages

    def harvest(self, seg: Segment, a: int, b: int, skip: Member | None = None) -> None:
        """Reset [a, b) of *seg* in the kernel; give its written pages to
        every member (but *skip*) whose range holds them."""
        pages = self._collect(seg, a, b, True)
        if not pages:
            return
        for m in seg.members:
            if m is skip or m.end <= a or b <= m.start:
                continue
            if m.start <= a and b <= m.end:
                m.pending.update(pages)
            else:
                m.pending.update(p for p in pages if m.start <= p < m.end)

    def peek(self, seg: Segment, a: int, b: int) -> list[int]:
        return self._collect(seg, a, b, False)

    def sweep(self, *, clear: bool) -> None:
        """softdirty: move the soft-dirty state of every segment into its
        members' pending pages, then (with *clear*) clear the whole process
        once through clear_refs.  The lock is held; see the module doc."""
        for seg in self.segments:
            pages = self.peek(seg, seg.start, seg.end)
            if not pages:
                continue
            for m in seg.members:
                if m.start <= seg.start and seg.end <= m.end:
                    m.pending.update(pages)
                elif m.start < seg.end and seg.start < m.end:
                    m.pending.update(p for p in pages if m.start <= p < m.end)
        if clear and self.segments:
            seg = self.segments[0]
            # SoftDirty::reset writes clear_refs: the whole process, any range.
            seg.tracker.reset_shared(seg.start, seg.end - seg.start)

    def update_modes(self) -> None:
        """Give each member its direct tracker or the shared path."""
        for m in self.members:
            direct = m.exclusive_tracker()
            seg = m.segments[0] if direct is not None else None
            if seg is not None and seg.shared:
                seg.tracker.set_shared(False)
                seg.shared = False
            m.on_mode(direct)
        for seg in self.segments:
            alone = (
                len(seg.members) == 1 and next(iter(seg.members)).exclusive_tracker()
            )
            if not alone and not seg.shared:
                seg.tracker.set_shared(True)
                seg.shared = True

    # -- membership ------------------------------------------------------

    def join(
        self,
        start: int,
        end: int,
        backend: str,
        make: Callable[[], Tracker],
        on_mode: Callable[[Tracker | None], None],
    ) -> Member:
        with self.lock:
            self._check(start, end, backend)
            overlapping = [s for s in self.segments if s.start < end and start < s.end]
            member = Member(self, start, end, backend, on_mode)
            created: list[Segment] = []
            if backend == "softdirty" and self.segments:
                # A new segment's attach writes clear_refs: keep what the
                # Watches already here have not collected.
                self.sweep(clear=False)
            try:
                pos = start
                for s in sorted(overlapping, key=lambda s: s.start):
                    if pos < s.start:
                        created.append(self._attach(pos, s.start, backend, make))
                    pos = max(pos, s.end)
                if pos < end:
                    created.append(self._attach(pos, end, backend, make))
            except BaseException:
                for seg in created:
                    seg.tracker.detach()
                raise
            # Switch the overlapped segments to shared *before* harvesting,
            # so that no direct call of their old owner runs after it.
            for s in overlapping:
                if not s.shared:
                    for m in s.members:
                        m.on_mode(None)
                    s.tracker.set_shared(True)
                    s.shared = True
            # The new Watch starts clean: what was written in the reused
            # segments so far belongs to the others.
            if backend == "softdirty":
                self.sweep(clear=False)  # the Watch's first reset clears
            else:
                for s in overlapping:
                    self.harvest(s, max(s.start, start), min(s.end, end))
            member.segments = sorted(overlapping + created, key=lambda s: s.start)
            for s in member.segments:
                s.members.add(member)
            self.segments = sorted(self.segments + created, key=lambda s: s.start)
            self.members.add(member)
            self.update_modes()
            return member

    def _attach(
        self, a: int, b: int, backend: str, make: Callable[[], Tracker]
    ) -> Segment:
        tracker = make()
        tracker.attach(a, b - a)
        return Segment(a, b, backend, tracker)

    def _check(self, start: int, end: int, backend: str) -> None:
        pid, family = self.key
        for m in self.members:
            if (
                family == "soft-dirty"
                and m.backend != backend
                and "softdirty" in (backend, m.backend)
            ):
                raise Conflict(
                    f"another {m.backend} Watch ({_span(m.start, m.end)}) is open on "
                    f"process {pid}, and softdirty resets through /proc/{pid}/clear_refs, "
                    "which clears the soft-dirty state of the whole process, while the "
                    "syscall backend clears its own range without telling the others: "
                    "one would erase the other's writes (close it, or use the same "
                    "backend for both: softdirty Watches share one process safely)"
                )
        for s in self.segments:
            if s.start < end and start < s.end and s.backend != backend:
                raise Conflict(
                    f"another Watch ({s.backend}) covers {_span(s.start, s.end)}, which overlaps "
                    f"{_span(start, end)}; {s.backend} and {backend} keep their state in "
                    f"the same {family} bit of each page, so they cannot share pages"
                )

    def leave(self, member: Member, then: Callable[[], None] | None = None) -> None:
        """Take *member* out (detaching what only it used), then call *then*.

        Called by a finaliser while this thread is inside an operation on
        the domain (see :class:`_DomainLock`), both run once that operation
        has released the lock.
        """
        if self.lock.held_here():
            self.lock.defer(lambda: self.leave(member, then))
            return
        try:
            self._leave(member)
        finally:
            if then is not None:
                then()

    def _leave(self, member: Member) -> None:
        with self.lock:
            if member not in self.members:
                return
            self.members.discard(member)
            errors: list[BaseException] = []
            for s in member.segments:
                s.members.discard(member)
                if not s.members:
                    self.segments.remove(s)
                    try:
                        s.tracker.detach()
                    except (OSError, ValueError) as err:  # detach the others anyway
                        errors.append(err)
            member.segments = []
            member.pending = set()
            self.update_modes()
            if not self.members:
                _forget(self)
            if errors:
                raise errors[0]


_domains: dict[tuple[int, str], Domain] = {}
# Reentrant: a finaliser run by the garbage collector inside one of the
# short sections below may close the last Watch of another domain, which
# forgets that domain here (no section depends on another key's entry).
_domains_lock = threading.RLock()


def _forget(dom: Domain) -> None:
    with _domains_lock:
        if _domains.get(dom.key) is dom and not dom.members:
            del _domains[dom.key]


def join(
    pid: int,
    backend: str,
    start: int,
    end: int,
    make: Callable[[], Tracker],
    on_mode: Callable[[Tracker | None], None],
) -> Member:
    """Register [start, end) of process *pid* with *backend*.

    Raises :class:`Conflict` (nothing registered) when another mechanism
    of the same family holds an overlapping page, and whatever the tracker
    raises (OSError) when attaching fails.
    """
    key = (pid, FAMILY[backend])
    while True:
        with _domains_lock:
            dom = _domains.get(key)
            if dom is None:
                dom = _domains[key] = Domain(key)
        member = dom.join(start, end, backend, make, on_mode)
        with _domains_lock:
            if _domains.get(key) is dom:
                return member
        # The domain was emptied and forgotten between lookup and join.
        dom.leave(member)


# Trackers of the parent inherited through fork(): never destroyed in the
# child (a destructor could take a lock held by a thread of the parent).
_inherited: list[Any] = []


def after_fork_in_child() -> None:
    """Forget every registration; takes no lock another thread may hold."""
    global _domains_lock
    _domains_lock = threading.RLock()
    for dom in list(_domains.values()):
        dom.lock = _DomainLock()
        dom.closed = True
        for seg in dom.segments:
            seg.tracker.forget_if_foreign()  # lock-free (src/tracker.hpp)
            _inherited.append(seg.tracker)
        dom.segments = []
        dom.members = set()
    _domains.clear()


def domains() -> list[Domain]:
    """The live domains (for tests)."""
    with _domains_lock:
        return list(_domains.values())
