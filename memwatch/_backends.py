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

__all__ = ["Backend", "backends"]


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


# Priority order: the order backend="auto" tries them in.
_SPECS: tuple[_Spec, ...] = (
    _Spec("syscall", _memwatch.SyscallTracker, _memwatch.syscall_available, _syscall_args),
    _Spec("pagemap_scan", _memwatch.PagemapScanTracker, _memwatch.pagemap_scan_available),
    _Spec(
        "softdirty", _memwatch.SoftDirtyTracker, _memwatch.softdirty_available, _softdirty_args
    ),
    _Spec("uffd", _memwatch.UffdTracker, _memwatch.uffd_available),
    _Spec("mprotect", _memwatch.MprotectTracker, _memwatch.mprotect_available),
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
        partial_reset: can reset part of a watched range (``softdirty``
            cannot: ``clear_refs`` clears the whole process).
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
        partial_reset=bool(cls.partial_reset),
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


def choose(
    requested: str,
    *,
    remote: bool = False,
    partial_reset: bool = False,
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
    requirement = " and ".join(needs) or "track page writes"
    candidates: Sequence[Backend] = (
        backends() if requested == "auto" else [_backend(requested)]
    )
    reasons: dict[str, str] = {}
    for b in candidates:
        if skip and b.name in skip:
            reasons[b.name] = skip[b.name]
        elif remote and not b.remote:
            reasons[b.name] = "cannot watch another process"
        elif partial_reset and not b.partial_reset:
            reasons[b.name] = (
                "cannot reset part of a range (it clears the whole process)"
            )
        elif not b.available:
            reasons[b.name] = b.reason
        else:
            return b
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
