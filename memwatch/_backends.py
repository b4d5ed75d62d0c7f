"""The five tracking mechanisms: what each can do, whether it works here.

Layering (as psutil does with ``_psplatform``): the public API in
``memwatch/__init__.py`` -> this registry, one entry per backend -> one
tracker class of the C++ extension ``memwatch._memwatch``.  Each probe really
performs the operation once (a scratch page at most) and is cached for the
life of the process, like psutil's ``can_use_pidfd_open``; nothing is chosen
from ``uname -r``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from . import _memwatch, _probes
from ._common import UnsupportedError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["Backend", "Choice", "backends", "explain"]


class Tracker(Protocol):
    """The methods every ``_memwatch.*Tracker`` class shares."""

    @property
    def name(self) -> str: ...

    @property
    def page_size(self) -> int: ...

    def attach(self, start: int, length: int, /) -> None: ...

    def detach(self) -> None: ...

    def scan(self, start: int, length: int, out: Buffer, reset: bool = ..., /) -> int: ...

    def reset(self, start: int, length: int, /) -> None: ...

    # scan() as a C function bound to this tracker (Watch's fast path).
    def scanner(self) -> Callable[[int, int, Buffer, bool], int]: ...

    # Used by memwatch/_registry.py when overlapping Watches share a tracker.
    def scan_shared(self, start: int, length: int, out: Buffer, reset: bool = ..., /) -> int: ...

    def reset_shared(self, start: int, length: int, /) -> None: ...

    def set_shared(self, shared: bool, /) -> None: ...

    def forget_if_foreign(self) -> bool: ...


# What a tracker constructor may need: the target's pid and a pidfd for it
# (PIDFD_SELF for this process); each _Spec picks its arguments.
def _no_args(pid: int, pidfd: int) -> tuple[object, ...]:
    return ()


# The syscall backend passes MEMWATCH_SD_NO_REUSED_REGIONS on every call.
# Without it, a VMA flagged VM_SOFTDIRTY (new, never reset, or merged with a
# new mapping) reads as dirty in full.  On the v3 kernel the mode is sound: a
# reset "arms" its range (per-page soft-dirty is maintained there and an armed
# VMA never merges with a fresh one), and in a VMA that was never armed every
# populated page is reported, so no write after a reset is lost, and fewer
# pages are reported than in the default mode.  tests/test_guest.py runs the
# differential test in both modes.
_SYSCALL_NO_REUSED_REGIONS: Final = True


def _syscall_args(pid: int, pidfd: int) -> tuple[object, ...]:
    return (pidfd, _SYSCALL_NO_REUSED_REGIONS)


def _softdirty_args(pid: int, pidfd: int) -> tuple[object, ...]:
    return (pid,)


class _Spec(NamedTuple):
    name: str
    cls: Callable[..., Tracker]
    probe: Callable[[], tuple[bool, str, int]]
    # (pid, pidfd) -> the constructor's arguments.
    args: Callable[[int, int], tuple[object, ...]] = _no_args
    # The facade gives partial resets the raw tracker cannot do: softdirty's
    # clear_refs clears the whole process, and memwatch/_registry.py keeps
    # what it clears in every other softdirty Watch's pending pages.
    registry_partial_reset: bool = False
    # What makes it worse than the backends ranked before it (for explain()).
    weakness: str = ""


# Priority order: the order backend="auto" tries them in.  Ranked by what a
# user loses: syscall (one call, atomic, any process) > pagemap_scan (atomic,
# this process) > uffd (atomic, but a fault + handler thread per first write)
# > softdirty (reads then clears: a write in between is lost; every scan reads
# the whole range's pagemap; every reset takes the target's mmap write lock)
# > mprotect (SIGSEGV per first write; kernel writes fail with EFAULT).
_SPECS: tuple[_Spec, ...] = (
    _Spec("syscall", _memwatch.SyscallTracker, _memwatch.syscall_available, _syscall_args),
    _Spec(
        "pagemap_scan", _memwatch.PagemapScanTracker, _memwatch.pagemap_scan_available,
        weakness="it cannot watch another process",
    ),
    _Spec(
        "uffd", _memwatch.UffdTracker, _memwatch.uffd_available,
        weakness="every first write after a reset costs a page fault served by a "
        "handler thread (slower than the kernel-side scanners when many pages are "
        "written)",
    ),
    _Spec(
        "softdirty", _memwatch.SoftDirtyTracker, _memwatch.softdirty_available,
        _softdirty_args, registry_partial_reset=True,
        weakness="its scan-with-reset is not atomic (a write between the pagemap read "
        "and the clear_refs that follows is lost), every scan reads the whole range's "
        "pagemap, and every reset write-locks the target's whole address space",
    ),
    _Spec(
        "mprotect", _memwatch.MprotectTracker, _memwatch.mprotect_available,
        weakness="every first write after a reset costs a SIGSEGV, and the kernel "
        "cannot write into a watched page (read(2) into it fails with EFAULT)",
    ),
)
_BY_NAME: dict[str, _Spec] = {s.name: s for s in _SPECS}
NAMES: tuple[str, ...] = tuple(s.name for s in _SPECS)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One tracking mechanism and what it can do on this machine.

    Attributes:
        name: ``"syscall"``, ``"pagemap_scan"``, ``"softdirty"``, ``"uffd"``
            or ``"mprotect"``; what ``Watch(..., backend=name)`` accepts.
        available: the probe succeeded on the running kernel, as this user.
        reason: why not, in words a user can act on; ``""`` when available.
        remote: can watch another process (``Watch(..., pid=...)``).
        partial_reset: can reset part of a watched range.  ``softdirty``
            can through memwatch's registry: ``clear_refs`` clears the whole
            process, so memwatch first moves the kernel's soft-dirty state
            into every softdirty Watch of that process.
        atomic: a scan with reset loses no write made during the scan.
        sees_kernel_writes: writes made by the kernel on the process's behalf
            (``read()``/``readv()`` into the buffer) are reported.
            ``mprotect`` cannot: such a syscall fails with ``EFAULT`` instead.
        false_positives: may report a page that was not written (never the
            other way round); ``softdirty`` may, after VMA merges.
    """

    name: str
    available: bool
    reason: str
    remote: bool
    partial_reset: bool
    atomic: bool
    sees_kernel_writes: bool
    false_positives: bool


@functools.cache
def _probe(name: str) -> tuple[bool, str]:
    return _probes.run(name, _BY_NAME[name].probe)


@functools.cache
def _user_mode_only(name: str) -> bool:
    """Whether this backend's userfaultfd would be user-mode-only here (it
    then cannot see writes made by the kernel)."""
    if name not in ("pagemap_scan", "uffd"):
        return False
    return bool(_memwatch.uffd_user_mode_only())


def _backend(name: str) -> Backend:
    spec = _BY_NAME[name]
    cls: Any = spec.cls
    ok, reason = _probe(name)
    return Backend(
        name=name,
        available=ok,
        reason=reason,
        # Read strictly: a tracker class without one of these is a bug, not
        # a False.
        remote=bool(cls.remote),
        partial_reset=bool(cls.partial_reset) or spec.registry_partial_reset,
        atomic=bool(cls.atomic),
        sees_kernel_writes=bool(cls.sees_kernel_writes) and not _user_mode_only(name),
        false_positives=bool(cls.false_positives),
    )


def backends() -> list[Backend]:
    """Every mechanism, in the order ``backend="auto"`` tries them.

    The probes run once per process (cached); the list is a fresh copy.
    """
    return [_backend(name) for name in NAMES]


def _clear_probe_cache() -> None:
    """Forget the cached probes (for tests)."""
    _probe.cache_clear()
    _user_mode_only.cache_clear()


def tracker_class(name: str) -> Callable[..., Tracker]:
    return _BY_NAME[name].cls


def new_tracker(name: str, *, pid: int, pidfd: int) -> Tracker:
    """A detached tracker of backend *name* for process *pid* (*pidfd*)."""
    spec = _BY_NAME[name]
    return spec.cls(*spec.args(pid, pidfd))


@dataclasses.dataclass(frozen=True)
class Choice:
    """One row of :func:`explain`: a backend and why ``auto`` takes it or not."""

    backend: Backend
    chosen: bool
    why: str


def _unfit(
    b: Backend,
    *,
    remote: bool,
    partial_reset: bool,
    kernel_writes: bool,
    skip: Mapping[str, str] | None,
) -> str | None:
    """Why *b* cannot do what is asked, or None if it can."""
    if skip and b.name in skip:
        return skip[b.name]
    if remote and not b.remote:
        return "cannot watch another process"
    if partial_reset and not b.partial_reset:
        return "cannot reset part of a range (it clears the whole process)"
    if kernel_writes and not b.sees_kernel_writes:
        if b.name in ("uffd", "pagemap_scan"):
            return (
                "cannot see writes made by the kernel here (its userfaultfd is "
                "user-mode-only: vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE)"
            )
        return "cannot see writes made by the kernel (read(2) into a page fails with EFAULT)"
    if not b.available:
        return b.reason
    return None


def explain(
    *,
    remote: bool = False,
    partial_reset: bool = False,
    kernel_writes: bool = False,
    skip: Mapping[str, str] | None = None,
) -> list[Choice]:
    """Every backend, in the order ``backend="auto"`` ranks them, with the
    one ``auto`` picks for what is asked and why each other one is not.

    *remote*: watch another process; *partial_reset*: reset part of a range;
    *kernel_writes*: see writes the kernel makes into the range (``read(2)``
    into a buffer).  *skip* maps backends already ruled out to the reason.
    At most one row has ``chosen=True`` (none when nothing fits).  This is
    what ``memwatch info`` prints.
    """
    rows: list[Choice] = []
    chosen: Backend | None = None
    for b in backends():
        why_not = _unfit(
            b, remote=remote, partial_reset=partial_reset,
            kernel_writes=kernel_writes, skip=skip,
        )
        if why_not is not None:
            rows.append(Choice(b, False, why_not))
        elif chosen is None:
            chosen = b
            rows.append(Choice(b, True, _why_chosen(b, rows)))
        else:
            weakness = _BY_NAME[b.name].weakness or "it ranks lower"
            rows.append(
                Choice(b, False, f"available, but {chosen.name} is preferred: {weakness}")
            )
    return [_with_mode(c) for c in rows]


def _with_mode(c: Choice) -> Choice:
    """Say which way uffd runs (it has only one way since 5.7 support)."""
    if c.backend.name == "uffd" and c.backend.available and bool(
        getattr(_memwatch.UffdTracker, "missing_mode", False)
    ):
        return dataclasses.replace(
            c,
            why=c.why + " [uffd runs in missing mode: it registers MISSING|WP and fills "
            "never-touched pages itself, so it needs no UFFD_FEATURE_WP_UNPOPULATED "
            "(Linux 5.7+)]",
        )
    return c


def _why_chosen(b: Backend, before: list[Choice]) -> str:
    if not before:
        return "chosen: the best mechanism, and it works here"
    missing = ", ".join(c.backend.name for c in before)
    return f"chosen: the best one left that can do what is asked ({missing} cannot here)"


def choose(
    requested: str,
    *,
    remote: bool = False,
    partial_reset: bool = False,
    kernel_writes: bool = False,
    skip: Mapping[str, str] | None = None,
) -> Backend:
    """The backend to use for *requested* (a name or ``"auto"``).

    *skip* maps backends already ruled out (e.g. by an overlapping Watch) to
    the reason.  Raises ValueError for an unknown name and UnsupportedError,
    naming what is missing, when no backend (or not the named one) can do
    what is asked.
    """
    if requested != "auto" and requested not in _BY_NAME:
        raise ValueError(
            f"unknown backend {requested!r}; expected 'auto' or one of "
            + ", ".join(repr(n) for n in NAMES)
        )
    needs = []
    if remote:
        needs.append("watch another process")
    if partial_reset:
        needs.append("reset part of a range")
    if kernel_writes:
        needs.append("see writes made by the kernel")
    requirement = " and ".join(needs) or "track page writes"
    candidates: Sequence[Backend] = (
        backends() if requested == "auto" else [_backend(requested)]
    )
    reasons: dict[str, str] = {}
    for b in candidates:
        why_not = _unfit(
            b, remote=remote, partial_reset=partial_reset,
            kernel_writes=kernel_writes, skip=skip,
        )
        if why_not is None:
            return b
        reasons[b.name] = why_not
    if requested == "auto":
        # Name the kernel-level reasons of the backends that would have had
        # the capability: that is what the user can act on.
        capable = {
            n: r
            for n, r in reasons.items()
            if not r.startswith("cannot ")
        }
        detail = "; ".join(f"{n}: {r}" for n, r in (capable or reasons).items())
        msg = f"no memwatch backend can {requirement} here ({detail})"
    else:
        msg = f"backend {requested!r} cannot {requirement} here: {reasons[requested]}"
    raise UnsupportedError(msg, requirement=requirement, reasons=reasons)
