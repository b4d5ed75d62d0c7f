"""``memwatch.Watch``: track which pages of a range are written."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import numbers
import operator
import os
import threading
import weakref
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from . import _backends, _common, _memwatch, _registry
from ._common import UnsupportedError
from ._process import _Process, _resolve_process

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    from ._backends import Tracker

__all__ = ["Watch"]

PAGE_SIZE: Final[int] = _memwatch.PAGE_SIZE
_PIDFD_SELF: Final[int] = _memwatch.PIDFD_SELF
# dirty() collects through a reusable buffer of at most this many entries
# (512 KiB); backends without partial reset get one entry per page instead,
# so that a scan with reset always completes in one call.
_MAX_CHUNK: Final = 1 << 16
# No Linux architecture maps user memory at or above 2**63.
_USER_LIMIT: Final = 1 << 63

_ScanFn = Callable[[int, int, Any, bool], int]


def _buffer_range(target: object) -> tuple[int, int, memoryview]:
    """(address, nbytes, export) of a buffer-protocol object of this process."""
    try:
        view = memoryview(target)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "target must be a buffer (bytearray, mmap, numpy array, memoryview, "
            f"...) or an int address, not {type(target).__name__}"
        ) from None
    try:
        if view.readonly:
            raise TypeError("target must be writable: a read-only buffer is never written")
        if not view.c_contiguous:
            raise TypeError("target must be C-contiguous")
        if view.nbytes == 0:
            raise ValueError("target is empty: nothing to watch")
        # ctypes asks for a plain writable contiguous buffer, which works for
        # any item format (numpy record dtypes included).
        probe = ctypes.c_char.from_buffer(view)
        address = ctypes.addressof(probe)
        del probe
    except BaseException:
        view.release()
        raise
    return address, view.nbytes, view


def _out_capacity(out: object) -> int:
    """Entries *out* holds; TypeError unless it is a writable C-contiguous
    one-dimensional buffer of 8-byte items (the backends' own rule)."""
    try:
        view = memoryview(out)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"out must be a writable buffer of 8-byte items, not {type(out).__name__}"
        ) from None
    except ValueError as err:  # numpy datetime64 & co: the binding's words
        raise TypeError(
            f"out must be a buffer of 8-byte integers; this {type(out).__module__}."
            f"{type(out).__qualname__} cannot export one: {err}"
        ) from None
    with view:
        if view.readonly or not view.c_contiguous or view.ndim != 1 or view.itemsize != 8:
            raise TypeError(
                "out must be a writable C-contiguous one-dimensional buffer of "
                "8-byte items (array('Q'), numpy.uint64, ...)"
            )
        return len(view)


def _int_arg(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def _closed_scan(start: int, length: int, out: Any, reset: bool) -> int:
    raise ValueError("operation on a closed Watch")


# Every open Watch, so that a forked child can close its copies at once.
_live: weakref.WeakSet[Watch] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Takes no lock another thread of the parent may have held at fork():
    # the registry recreates its locks and forgets the parent's trackers
    # (never destroying them here), then each Watch is marked closed.
    _registry.after_fork_in_child()
    for watch in list(_live):
        with contextlib.suppress(Exception):
            watch._forget_after_fork()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Watch:
    """Track which pages of a range of memory are written.

    ``Watch(target, length=None, *, pid=None, backend="auto", atomic=None,
    kernel_writes=None, partial_reset=None)``

    *target* is either a buffer-protocol object of this process (bytearray,
    mmap, numpy array, memoryview, ...; writable and C-contiguous) or an int
    address, in which case *length* (bytes) is required.  The watched range is
    the whole pages covering the target: :attr:`address` is the target's start
    rounded down to a page boundary and :attr:`length` the covered span rounded
    up.  **Every offset memwatch reports or accepts is a byte offset from**
    :attr:`address`, the page-aligned start, not from the target's first
    byte; :attr:`target_offset` is where the target begins (``0`` for an
    mmap or an aligned address), so byte ``i`` of the target lives in the page
    at offset ``(target_offset + i) // page_size * page_size``.  Pages are
    watched whole: a write by anything else to a shared page (say a heap
    neighbour of a small bytearray) counts.  With the kernel-level backends
    (syscall, softdirty) a write into a transparent huge page reports all of
    its base pages; :func:`memwatch.alloc` mappings avoid that
    (``MADV_NOHUGEPAGE``).

    While the Watch is open it holds a buffer export of *target*, so a
    bytearray cannot be resized (``BufferError``) nor an mmap closed under it.
    An int address carries no such guarantee: keeping the range mapped while
    it is watched is then the caller's job.

    *pid* names another process (then *target* must be an int address in that
    process): an int is always a process id, a :class:`memwatch.PidFd` wraps a
    pidfd, and any object with an int ``.pid`` (``subprocess.Popen``,
    ``psutil.Process``) stands for that pid.  The Watch opens (or duplicates)
    a pidfd at once, so the target cannot be swapped by pid reuse; a process
    that has exited gives ProcessLookupError, then or later.  Only backends
    with ``remote=True`` (``syscall``, ``softdirty``) can do this.

    *backend* is ``"auto"`` or one of ``"syscall"``, ``"pagemap_scan"``,
    ``"uffd"``, ``"softdirty"``, ``"mprotect"``.  What the Watch needs is
    said with three keywords, named after :class:`memwatch.Backend`'s
    capabilities, each ``True`` (required), ``False`` (not needed) or
    ``None`` (preferred, the default):

    * *atomic*: a scan with reset loses no write made during it (other
      threads, the kernel, a device keep writing while you collect);
      ``softdirty`` is not atomic.
    * *kernel_writes*: writes the kernel makes into the range are seen
      (``read(2)``, ``readv``, ``recv_into``, io_uring into the buffer);
      ``mprotect`` cannot (the system call fails with ``EFAULT``), nor a
      user-mode-only userfaultfd (``python -m memwatch info`` says).
    * *partial_reset*: part of the range can be reset (every backend can).

    ``auto`` takes, among the backends that work here and have every
    required capability, the one missing the fewest preferred ones, then the
    cheapest by measured cost (README "Kernels").  So a plain ``Watch(buf)``
    gets an atomic backend that sees kernel writes whenever one works here,
    and ``False`` lets ``auto`` trade that for speed: on Linux 6.1,
    ``Watch(buf, atomic=False)`` takes ``softdirty`` instead of ``uffd``
    (far cheaper at thousands of written pages) -- right when the thread
    that writes is the one that collects.  ``memwatch._backends.explain(...)`` (``memwatch info``) says
    why each backend is or is not taken.  When nothing fits,
    :class:`memwatch.UnsupportedError` lists every backend's reason; a named
    *backend* without a required capability raises
    :class:`memwatch.CapabilityError` (a ValueError too) saying which and why.

    ``softdirty`` resets through ``/proc/PID/clear_refs``, which clears the
    soft-dirty state of the *whole* target process.  memwatch first moves
    that state into every softdirty Watch of the process (so several coexist
    and each resets only what it asks), but what stays process-wide is
    beyond it: anything else clearing the same process's soft-dirty bits
    (CRIU's pre-dump, another tool) erases writes no Watch has collected; a
    write landing between a scan's pagemap read and its clear is lost
    (``atomic=False``); and every clear takes the target's mmap write lock
    while it walks all its page tables (README, "Kernels").

    A new Watch resets its range: it reports only writes made after it was
    created.  It is a context manager; :meth:`close` undoes every
    registration and protection and is idempotent; any other method of a
    closed Watch raises ValueError.  A Watch belongs to the process that
    created it: in a child made by ``fork()`` every inherited Watch is closed
    (without touching the parent's registrations, which a userfaultfd would
    otherwise let the child undo).  A Watch is not safe to close while
    another thread is inside one of its methods.
    """

    __slots__ = (
        "__weakref__",
        "_address",
        "_backend",
        "_buf",
        "_buf_lock",
        "_cap",
        "_direct_ok",
        "_export",
        "_length",
        "_member",
        "_npages",
        "_partial",
        "_pid",
        "_proc",
        "_scan",
        "_target_offset",
        "_tracker",
    )

    def __init__(
        self,
        target: object,
        length: int | None = None,
        *,
        pid: object = None,
        backend: str = "auto",
        atomic: bool | None = None,
        kernel_writes: bool | None = None,
        partial_reset: bool | None = None,
    ) -> None:
        self._scan: _ScanFn = _closed_scan
        # The tracker to call directly while this Watch is alone on its
        # pages (the fast path), else None; see memwatch/_registry.py.
        self._tracker: Tracker | None = None
        self._member: _registry.Member | None = None
        self._export: memoryview | None = None
        self._proc: _Process | None = None
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, not {type(backend).__name__}")
        required = _backends.check_requirements(
            atomic=atomic, kernel_writes=kernel_writes, partial_reset=partial_reset
        )
        try:
            self._setup(target, length, pid, backend, required)
        except BaseException:
            self._teardown()
            raise

    def _setup(
        self,
        target: object,
        length: int | None,
        pid: object,
        backend: str,
        required: dict[str, bool | None],
    ) -> None:
        page = PAGE_SIZE
        is_address = isinstance(target, numbers.Integral) and not isinstance(target, bool)
        if is_address:
            target = _int_arg("address", target)  # numpy integers are addresses too
            if length is None:
                raise TypeError("an int address needs a length")
            length = _int_arg("length", length)
            if target < 0:
                raise ValueError(f"address must not be negative, got {target:#x}")
            if length <= 0:
                raise ValueError(f"length must be positive, got {length}")
            if target + length > _USER_LIMIT:
                # The facade's one range check for an int address; nothing at
                # or above 2**63 ever reaches the binding (pc's wording).
                raise ValueError(
                    f"range {target:#x}+{length:#x} is beyond the user address space"
                )
            begin, nbytes = target, length
        else:
            if length is not None:
                raise TypeError("length is taken from the buffer; pass only an int address with it")
            if pid is not None:
                raise TypeError(
                    "a buffer belongs to this process; to watch another process "
                    "pass an int address and a length with pid="
                )
            begin, nbytes, self._export = _buffer_range(target)

        self._proc = _resolve_process(pid)
        remote = self._proc is not None
        start = begin - begin % page
        end = -(-(begin + nbytes) // page) * page
        self._address = start
        self._length = end - start
        self._target_offset = begin - start
        self._pid = self._proc.pid if self._proc is not None else None
        self._npages = self._length // page
        target_pid = self._proc.pid if self._proc is not None else os.getpid()
        pidfd = self._proc.pidfd if self._proc is not None else _PIDFD_SELF

        # Overlap with other Watches of the same target is the registry's
        # business: it refuses a mechanism whose state another mechanism
        # already holds on these pages (Conflict), and "auto" then moves on.
        skipped: dict[str, str] = {}
        while True:
            chosen = _backends.choose(backend, remote=remote, skip=skipped, **required)
            if is_address and not chosen.remote:
                # The backends that register or protect the range need all
                # of it mapped (the page-table readers, syscall and
                # softdirty, see a hole as clean).  Checked before anything is
                # allocated or protected: a bitmap for a 1 TiB typo, a
                # PROT_READ prefix.
                hole = _common.unmapped_part(None, start, end - start)
                if hole is not None:
                    raise _common.range_error(start, end - start, None, hole)
            self._backend = chosen.name
            self._partial = chosen.partial_reset
            self._direct_ok = self._partial and self._proc is None
            if self._partial:
                self._cap = min(self._npages, _MAX_CHUNK)
            else:
                self._cap = self._npages
            self._buf = array("Q", bytes(8 * self._cap))
            self._buf_lock = threading.Lock()
            name = chosen.name

            def make(name: str = name) -> Tracker:
                tracker = _backends.new_tracker(name, pid=target_pid, pidfd=pidfd)
                if self._proc is not None:
                    # The tracker may have opened /proc/PID/...: make sure PID
                    # was still our process when it did.
                    self._proc.check_alive()
                return tracker

            try:
                self._member = _registry.join(
                    target_pid, name, start, end, make, self._mode_setter()
                )
            except _registry.Conflict as conflict:
                if backend != "auto":
                    raise UnsupportedError(
                        f"backend {name!r} cannot watch {start:#x}+{end - start:#x} "
                        f"here: {conflict}",
                        requirement="watch pages another Watch holds",
                        reasons={name: str(conflict)},
                    ) from None
                skipped[name] = str(conflict)
                continue
            except OSError as err:
                raise self._translate(err) from err
            break
        self._reset_range(start, self._length)
        _live.add(self)

    def _mode_setter(self) -> Callable[[Tracker | None], None]:
        ref = weakref.ref(self)

        def set_mode(direct: Tracker | None) -> None:
            watch = ref()
            if watch is not None:
                watch._set_mode(direct)

        return set_mode

    def _set_mode(self, direct: Tracker | None) -> None:
        """Called by the registry (its lock held) when this Watch becomes
        alone on its pages (*direct* is its tracker) or shares them (None)."""
        self._tracker = direct
        if direct is None:
            self._scan = self._shared_scan
        elif self._direct_ok:
            # scan() as a C function bound once: no pybind11 dispatch per call.
            self._scan = direct.scanner()
        else:
            self._scan = self._checked_scan

    def _sole_tracker(self) -> Tracker | None:
        """For the C API (src/capi.cpp): the tracker to call directly,
        without the GIL, while the registry does not share it (it raises
        TrackerShared then); None when every call must come here."""
        member = self._member
        if member is None or not self._direct_ok:
            return None
        return member.sole_tracker()

    # -- internals ---------------------------------------------------------

    def _translate(self, err: OSError) -> Exception:
        """The one place where a backend's OSError gets its meaning."""
        proc = self._proc
        if proc is None:
            if err.errno in _common._UNMAPPED_ERRNOS:
                hole = _common.unmapped_part(None, self._address, self._length)
                if hole is not None:
                    return _common.range_error(self._address, self._length, None, hole)
                path = _common.shared_file_part(None, self._address, self._length)
                if path is not None and self.backend == "uffd":
                    return UnsupportedError(
                        f"the uffd backend cannot watch {self._address:#x}+"
                        f"{self._length:#x}: it includes a shared mapping of the file "
                        f"{path}, which synchronous userfaultfd write-protect cannot "
                        "register; use pagemap_scan or mprotect",
                        requirement="watch a file-backed shared mapping",
                        reasons={"uffd": "no file-backed shared mappings"},
                    )
            return err
        if isinstance(err, ProcessLookupError) or proc.exited():
            return ProcessLookupError(errno.ESRCH, f"process {proc.pid} has exited")
        if isinstance(err, PermissionError):
            return PermissionError(
                err.errno,
                f"not allowed to watch process {proc.pid} ({err.strerror}): "
                "reading needs ptrace read access and resetting ptrace attach "
                "access (same user and kernel.yama.ptrace_scope permitting, or "
                "CAP_SYS_PTRACE)",
            )
        return err

    def _checked_scan(self, start: int, length: int, out: Buffer, reset: bool) -> int:
        """scan() for remote watches and backends without partial reset."""
        if reset and not self._partial and length:
            cap = _out_capacity(out)  # TypeError first, as the backend would
            if start != self._address or length != self._length:
                raise self._partial_error("reset part of the watched range")
            if cap < self._npages:
                raise self._partial_error(
                    f"scan with reset into a buffer of {cap} entries, which may "
                    f"fill before the end of the {self._npages}-page range"
                )
        tracker = self._tracker
        if self._member is None:
            raise ValueError("operation on a closed Watch")
        try:
            if tracker is None:
                n = self._member.scan(start, length, out, reset)
            else:
                n = tracker.scan(start, length, out, reset)
        except _memwatch.TrackerShared:
            return self._scan(start, length, out, reset)
        except OSError as err:
            raise self._translate(err) from err
        if self._proc is not None:
            self._proc.check_alive()
        return n

    def _shared_scan(self, start: int, length: int, out: Buffer, reset: bool) -> int:
        """scan() while other Watches share some of this Watch's pages (and
        always for softdirty): the checks the binding makes on the direct
        path, before anything is reset."""
        if reset is not True and reset is not False and type(reset).__name__ not in (
            "bool_", "bool"
        ):
            raise TypeError(f"reset must be a bool, not {type(reset).__name__}")
        _out_capacity(out)
        return self._checked_scan(start, length, out, bool(reset))

    def _partial_error(self, what: str) -> UnsupportedError:
        return UnsupportedError(
            f"the {self.backend} backend cannot {what}: it resets the whole "
            "process at once, and memwatch never clears more than asked; reset "
            "the whole range, or use a backend with partial_reset=True",
            requirement="partial reset",
            reasons={self.backend: "no partial reset"},
        )

    def _reset_range(self, start: int, length: int) -> None:
        if not self._partial and length and (
            start != self._address or length != self._length
        ):
            raise self._partial_error("reset part of the watched range")
        member = self._member
        if member is None:
            raise ValueError("operation on a closed Watch")
        tracker = self._tracker
        try:
            if tracker is None:
                member.reset(start, length)
            else:
                try:
                    tracker.reset(start, length)
                except _memwatch.TrackerShared:
                    member.reset(start, length)
        except OSError as err:
            raise self._translate(err) from err
        if self._proc is not None:
            self._proc.check_alive()

    def _narrow(self, start: object, length: object) -> tuple[int, int]:
        """Validate a (start, length) query; return (offset, bytes)."""
        if self._member is None:
            raise ValueError("operation on a closed Watch")
        start = _int_arg("start", start)
        if start < 0 or start > self._length:
            raise ValueError(
                f"start {start:#x} is outside the watched range (0..{self._length:#x})"
            )
        if start % PAGE_SIZE:
            raise ValueError(f"start {start:#x} is not a multiple of the page size")
        if length is None:
            length = self._length - start
        else:
            length = _int_arg("length", length)
            if length < 0:
                raise ValueError(f"length must not be negative, got {length}")
            length = -(-length // PAGE_SIZE) * PAGE_SIZE
            if start + length > self._length:
                raise ValueError(
                    f"range {start:#x}+{length:#x} is outside the watched range "
                    f"(0..{self._length:#x})"
                )
        return start, length

    def _teardown(self) -> None:
        self._scan = _closed_scan
        self._tracker = None
        member, self._member = self._member, None
        if member is None:
            self._release()
        else:
            # The export and the pidfd go after the registration (deferred
            # together when a finaliser closes this Watch inside a registry
            # operation of the same thread: memwatch/_registry.py).
            member.leave(then=self._release)

    def _forget_after_fork(self) -> None:
        """In a fork() child: closed, without touching any registration."""
        self._scan = _closed_scan
        self._tracker = None
        self._member = None
        self._buf_lock = threading.Lock()
        self._release()

    def _release(self) -> None:
        if self._export is not None:
            self._export.release()
            self._export = None
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    # -- public API --------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._member is None

    @property
    def address(self) -> int:
        """The watched range's start: the target's first page boundary."""
        return self._address

    @property
    def length(self) -> int:
        """The watched range's length in bytes (whole pages)."""
        return self._length

    @property
    def backend(self) -> str:
        """The mechanism in use (``"pagemap_scan"``, ...)."""
        return self._backend

    @property
    def page_size(self) -> int:
        return PAGE_SIZE

    @property
    def pid(self) -> int | None:
        """The watched process, or None for this one."""
        return self._pid

    @property
    def target_offset(self) -> int:
        """Where the target begins, in bytes from :attr:`address`."""
        return self._target_offset

    def close(self) -> None:
        """Stop watching: undo every registration and protection; idempotent."""
        self._teardown()

    def __enter__(self) -> Self:
        if self._member is None:
            raise ValueError("operation on a closed Watch")
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def __del__(self) -> None:
        # Nothing sensible can be done with an error at finalisation.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._teardown()

    def __repr__(self) -> str:
        state = "closed" if self._member is None else "open"
        where = "" if self.pid is None else f" pid={self.pid}"
        try:
            return (
                f"<memwatch.Watch {state} backend={self.backend!r}{where} "
                f"address={self.address:#x} length={self.length:#x}>"
            )
        except AttributeError:
            return "<memwatch.Watch (failed)>"

    def dirty_into(
        self,
        out: Buffer,
        *,
        reset: bool = False,
        start: int = 0,
        length: int | None = None,
    ) -> int:
        """Write the offsets of dirty pages into *out*; return how many.

        *out* is any writable C-contiguous buffer of 8-byte items
        (``array('Q')``, a ``numpy.uint64`` array, ...; TypeError otherwise).
        Offsets are bytes from :attr:`address`, ascending, and the call stops
        when *out* is full.  With *reset*, exactly the reported pages (and the
        clean pages before the stop point) are reset, atomically where the
        backend is ``atomic``: call again to get the rest.  *start* (a
        multiple of the page size) and *length* (rounded up to pages) narrow
        the query to part of the watched range.  Nothing is allocated.
        """
        try:
            if start == 0 and length is None:
                try:
                    return self._scan(self._address, self._length, out, reset)
                except _memwatch.TrackerShared:  # another Watch joined meanwhile
                    return self._scan(self._address, self._length, out, reset)
            begin, nbytes = self._narrow(start, length)
            try:
                n = self._scan(self._address + begin, nbytes, out, reset)
            except _memwatch.TrackerShared:
                n = self._scan(self._address + begin, nbytes, out, reset)
        except OSError as err:  # zero cost unless raised (3.11+)
            raise self._translate(err) from err
        if begin and n:
            view = memoryview(out).cast("B").cast("Q")
            for i in range(n):
                view[i] += begin
        return n

    def dirty(
        self, *, reset: bool = False, start: int = 0, length: int | None = None
    ) -> array[int]:
        """The offsets of all dirty pages, as a new ``array('Q')``.

        Same arguments and meaning as :meth:`dirty_into`, but never stops
        short: it loops until the whole (narrowed) range has been scanned.
        """
        if start == 0 and length is None:
            if self._member is None:
                raise ValueError("operation on a closed Watch")
            base, nbytes = 0, self._length
        else:
            base, nbytes = self._narrow(start, length)
        lock = self._buf_lock
        if lock.acquire(blocking=False):
            try:
                return self._collect(self._buf, base, nbytes, reset)
            finally:
                lock.release()
        # Another thread is using the shared buffer: use a private one.
        return self._collect(array("Q", bytes(8 * self._cap)), base, nbytes, reset)

    def _collect(self, buf: array[int], base: int, nbytes: int, reset: bool) -> array[int]:
        cap = self._cap
        result: array[int] | None = None
        address = self._address
        while True:
            try:
                if nbytes:
                    try:
                        n = self._scan(address + base, nbytes, buf, reset)
                    except _memwatch.TrackerShared:  # another Watch joined meanwhile
                        n = self._scan(address + base, nbytes, buf, reset)
                else:
                    n = 0
            except OSError as err:
                raise self._translate(err) from err
            if base:
                part = array("Q", [x + base for x in buf[:n]])
            else:
                part = buf[:n]
            if result is None:
                result = part
            else:
                result.extend(part)
            if n < cap or cap == 0:
                return result
            step = buf[n - 1] + PAGE_SIZE
            base += step
            nbytes -= step
            if nbytes <= 0:
                return result

    def reset(self, start: int = 0, length: int | None = None) -> None:
        """Mark the range clean; *start*/*length* as for :meth:`dirty_into`.

        A backend with ``partial_reset=False`` would refuse anything but the
        whole watched range with UnsupportedError; every backend has it now
        (softdirty through memwatch's sweeps).
        """
        if start == 0 and length is None:
            if self._member is None:
                raise ValueError("operation on a closed Watch")
            self._reset_range(self._address, self._length)
            return
        begin, nbytes = self._narrow(start, length)
        if nbytes:
            self._reset_range(self._address + begin, nbytes)
