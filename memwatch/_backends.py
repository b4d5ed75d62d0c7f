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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from . import _memwatch, _probes
from ._common import CapabilityError, UnsupportedError

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



# -- what auto takes, and why ---------------------------------------------------
#
# The rule (README "Kernels", notes/a10.md):
#  1. Only a backend that works here and has every capability the caller
#     *requires* (True) can be chosen: auto never takes one that can lose a
#     write the caller said matters, or break its read(2) into the range.
#  2. Of those, the one missing the fewest capabilities the caller left at
#     their default (None: "preferred") -- a default Watch gets a backend
#     that resets atomically and sees kernel writes whenever one works here.
#  3. Then the cheapest: _COST_ORDER, derived from measured cycle costs
#     (_CYCLE_MS; real hardware first, see _cheaper), never guessed.  Passing
#     False ("not needed") for a capability lets step 3 pick a cheaper
#     backend without it: on Linux 6.1, Watch(buf, atomic=False) takes
#     softdirty instead of uffd (103 vs 620-13618 ms for 1 + 100 + 10000 pages).
# With nothing passed, this gives the order of NAMES (syscall, pagemap_scan,
# uffd, softdirty, mprotect): syscall, pagemap_scan and uffd have every
# capability; softdirty (not atomic) and mprotect (no kernel writes) miss one
# each, and softdirty is the cheaper.

# (keyword, Backend attribute, what it means, in the words of an error).
_CAPABILITIES: Final = (
    ("atomic", "atomic", "get and reset atomically (lose no write made during a scan)"),
    ("kernel_writes", "sees_kernel_writes", "see writes made by the kernel"),
    ("partial_reset", "partial_reset", "reset part of a range"),
)
REQUIREMENTS: Final[tuple[str, ...]] = tuple(c[0] for c in _CAPABILITIES)

# Median milliseconds of one cycle (write N pages of a populated 20000-page
# mapping, then dirty_into(out, reset=True)) at N = 1 / 100 / 10000, one run
# per kernel, benchmarks/kernel_cycle.py, 2026-11-28: README "Kernels", "Cost
# of one cycle".  Guest rows are QEMU TCG (comparable within a row only).
_CYCLE_MS: Final[Mapping[str, Mapping[str, tuple[float, float, float]]]] = {
    "stock 6.1 guest": {
        "uffd": (13.5, 621.0, 12983.0),
        "softdirty": (8.5, 8.5, 85.9),
        "mprotect": (0.23, 12.0, 1971.0),
    },
    "patched 6.12 guest": {
        "syscall": (0.48, 1.13, 29.0),
        "pagemap_scan": (1.24, 2.37, 29.5),
        "uffd": (2.6, 20.8, 7948.0),
        "softdirty": (10.1, 10.4, 124.0),
        "mprotect": (0.14, 6.2, 1363.0),
    },
    "6.18 host": {
        "pagemap_scan": (0.053, 0.152, 34.8),
        "uffd": (0.013, 1.58, 158.0),
        "mprotect": (0.009, 1.17, 267.0),
    },
}


# The row measured on real hardware.  Under QEMU TCG a wake-up across vCPUs
# takes 4-8 ms, and a uffd fault needs two, so the guests' uffd figures
# measure the emulator's scheduling more than the kernel (u10, README
# "Kernels": 6.1's uffd pinned to one vCPU costs 0.11 / 5.1 / 615 ms, below
# mprotect's 0.21 / 9.3 / 2535 ms, the order the host row gives).
_REAL_HARDWARE: Final = "6.18 host"


def _cheaper(a: str, b: str) -> bool | None:
    """Whether *a* costs less than *b*: the lower cost of a 1 + 100 + 10000
    page workload on real hardware where both ran there, else on most of
    the (TCG) kernels where both ran (None when they never ran side by
    side or split evenly)."""
    host = _CYCLE_MS[_REAL_HARDWARE]
    if a in host and b in host:
        return sum(host[a]) < sum(host[b])
    wins = losses = 0
    for row in _CYCLE_MS.values():
        if a in row and b in row:
            if sum(row[a]) < sum(row[b]):
                wins += 1
            else:
                losses += 1
    return None if wins == losses else wins > losses


def _cost_order() -> tuple[str, ...]:
    """Every backend, cheapest first, by :func:`_cheaper` (tests check that
    it is a total order)."""
    return tuple(sorted(NAMES, key=lambda n: sum(_cheaper(m, n) is True for m in NAMES)))


_COST_ORDER: Final = _cost_order()


def _cost_evidence(a: str, b: str) -> str:
    """"13618 vs 103 ms on the stock 6.1 guest, ...": the measurements that
    rank *b* after *a* (the real-hardware row alone when it has both)."""
    def ms(x: float) -> str:
        return f"{x:.0f}" if x >= 100 else f"{x:.3g}"

    rows = {k: r for k, r in _CYCLE_MS.items() if a in r and b in r}
    if _REAL_HARDWARE in rows:
        rows = {_REAL_HARDWARE: rows[_REAL_HARDWARE]}
    return "; ".join(
        f"{ms(sum(row[b]))} vs {ms(sum(row[a]))} ms on the {kernel}"
        for kernel, row in rows.items()
    )


@dataclasses.dataclass(frozen=True)
class Choice:
    """One row of :func:`explain`: a backend and why ``auto`` takes it or not."""

    backend: Backend
    chosen: bool
    why: str


def _requirement_error(name: str, value: object) -> TypeError | None:
    if value is None or isinstance(value, bool):
        return None
    return TypeError(
        f"{name} must be True (required), False (not needed) or None "
        f"(preferred, the default), not {type(value).__name__}"
    )


def check_requirements(**requirements: object) -> dict[str, bool | None]:
    """*requirements* (atomic=, kernel_writes=, partial_reset=) validated:
    TypeError unless each is True, False or None."""
    out: dict[str, bool | None] = {}
    for name, value in requirements.items():
        if name not in REQUIREMENTS:
            raise TypeError(f"unknown requirement {name!r}; expected one of {REQUIREMENTS}")
        err = _requirement_error(name, value)
        if err is not None:
            raise err
        out[name] = value  # type: ignore[assignment]
    return out


_ATTR: Final = {keyword: attr for keyword, attr, _ in _CAPABILITIES}
_WORDS: Final = {keyword: words for keyword, _, words in _CAPABILITIES}


def _lacks(b: Backend, keyword: str) -> str:
    """Why *b* lacks the capability *keyword* asks for: "cannot X (because)"."""
    if keyword == "kernel_writes":
        if b.name in ("uffd", "pagemap_scan"):
            return (
                "cannot see writes made by the kernel here (its userfaultfd is "
                "user-mode-only: vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE)"
            )
        return (
            "cannot see writes made by the kernel (it keeps clean pages read-only: "
            "read(2) into one fails with EFAULT)"
        )
    if keyword == "atomic":
        return (
            "cannot get and reset atomically (it reads the pagemap, then clears "
            "the whole process: a write made in between is lost)"
        )
    return "cannot reset part of a range (it clears the whole process)"


def _unfit(
    b: Backend,
    *,
    remote: bool,
    required: Mapping[str, bool | None],
    skip: Mapping[str, str] | None,
) -> str | None:
    """Why *b* cannot do what is asked, or None if it can."""
    if skip and b.name in skip:
        return skip[b.name]
    if remote and not b.remote:
        return "cannot watch another process"
    for keyword, attr, _ in _CAPABILITIES:
        if required.get(keyword) is True and not getattr(b, attr):
            return _lacks(b, keyword)
    if not b.available:
        return b.reason
    return None


def _missing_preferred(b: Backend, required: Mapping[str, bool | None]) -> list[str]:
    """The capabilities left at None (preferred) that *b* lacks."""
    return [
        keyword
        for keyword, attr, _ in _CAPABILITIES
        if required.get(keyword) is None and not getattr(b, attr)
    ]


def _rank(b: Backend, required: Mapping[str, bool | None]) -> tuple[int, int]:
    return len(_missing_preferred(b, required)), _COST_ORDER.index(b.name)


def _ranked_lower(b: Backend, chosen: Backend, required: Mapping[str, bool | None]) -> str:
    mine = _missing_preferred(b, required)
    if len(mine) > len(_missing_preferred(chosen, required)):
        return (
            f"could be chosen, but ranked lower: it {_lacks(b, mine[0])}, which auto "
            f"prefers unless told {mine[0]}=False; {chosen.name} can"
        )
    evidence = _cost_evidence(chosen.name, b.name)
    weakness = _BY_NAME[b.name].weakness
    return (
        f"could be chosen, but ranked lower: it costs more than {chosen.name} "
        f"(a 1 + 100 + 10000-page cycle: {evidence})"
        + (f"; {weakness}" if weakness else "")
    )


def _why_chosen(b: Backend, required: Mapping[str, bool | None], rows: list[Choice]) -> str:
    missing = _missing_preferred(b, required)
    others = [c.backend.name for c in rows if not c.chosen and not c.why.startswith("could")]
    if missing:
        lacking = ", ".join(f"{k}=" for k in missing)
        head = (
            f"chosen: no usable backend has everything asked and preferred; it lacks "
            f"only what {lacking} would ask for (pass {missing[0]}=False to say it is "
            "not needed, or True to refuse a backend without it)"
        )
    else:
        head = "chosen: it has every capability asked for and preferred"
    contenders = [
        c.backend.name for c in rows if not c.chosen and c.why.startswith("could")
    ]
    if contenders:
        head += f", and ranks before the other usable ones ({', '.join(contenders)}: see theirs)"
    if others:
        head += f"; {', '.join(others)} cannot be used here"
    return head


def explain(
    *,
    remote: bool = False,
    atomic: bool | None = None,
    kernel_writes: bool | None = None,
    partial_reset: bool | None = None,
    skip: Mapping[str, str] | None = None,
) -> list[Choice]:
    """Every backend (in the order of :func:`backends`) with the one
    ``auto`` picks for what is asked and why each other one is not.

    *remote*: watch another process.  *atomic*: a scan with reset loses no
    write made during it; *kernel_writes*: see writes the kernel makes into
    the range (``read(2)`` into a buffer); *partial_reset*: reset part of a
    range.  Each is True (required: never choose a backend without it),
    False (not needed: a cheaper backend without it may be chosen) or None
    (preferred, the default: chosen without it only when no usable backend
    has it).  *skip* maps backends already ruled out to the reason.  At most
    one row has ``chosen=True`` (none when nothing fits); every other row
    says ``could be chosen, but ranked lower: ...`` or why it cannot.  This
    is what ``memwatch info`` prints.
    """
    required = check_requirements(
        atomic=atomic, kernel_writes=kernel_writes, partial_reset=partial_reset
    )
    listed = backends()
    unfit = {
        b.name: _unfit(b, remote=remote, required=required, skip=skip) for b in listed
    }
    fit = [b for b in listed if unfit[b.name] is None]
    chosen = min(fit, key=lambda b: _rank(b, required)) if fit else None
    rows: list[Choice] = []
    for b in listed:
        why_not = unfit[b.name]
        if why_not is not None:
            if why_not == b.reason and not b.available:
                why_not = f"unavailable here: {why_not}"
            rows.append(Choice(b, False, why_not))
        elif b is chosen:
            rows.append(Choice(b, True, ""))
        else:
            assert chosen is not None
            rows.append(Choice(b, False, _ranked_lower(b, chosen, required)))
    rows = [
        dataclasses.replace(c, why=_why_chosen(c.backend, required, rows)) if c.chosen else c
        for c in rows
    ]
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


def choose(
    requested: str,
    *,
    remote: bool = False,
    atomic: bool | None = None,
    kernel_writes: bool | None = None,
    partial_reset: bool | None = None,
    skip: Mapping[str, str] | None = None,
) -> Backend:
    """The backend to use for *requested* (a name or ``"auto"``).

    The requirements are those of :func:`explain` (which says why).  *skip*
    maps backends already ruled out (e.g. by an overlapping Watch) to the
    reason.  Raises ValueError for an unknown name; CapabilityError (a
    ValueError and an UnsupportedError) when the named backend lacks a
    required capability by design; UnsupportedError, naming what is
    missing, when no backend (or not the named one) can do what is asked
    here.
    """
    if requested != "auto" and requested not in _BY_NAME:
        raise ValueError(
            f"unknown backend {requested!r}; expected 'auto' or one of "
            + ", ".join(repr(n) for n in NAMES)
        )
    required = check_requirements(
        atomic=atomic, kernel_writes=kernel_writes, partial_reset=partial_reset
    )
    needs = []
    if remote:
        needs.append("watch another process")
    needs += [words for keyword, _, words in _CAPABILITIES if required[keyword] is True]
    requirement = " and ".join(needs) or "track page writes"
    if requested == "auto":
        rows = explain(remote=remote, skip=skip, **required)
        for c in rows:
            if c.chosen:
                return c.backend
        reasons = {
            c.backend.name: _unfit(c.backend, remote=remote, required=required, skip=skip)
            or "" for c in rows
        }
        # Name the kernel-level reasons of the backends that would have had
        # the capability: that is what the user can act on.
        capable = {n: r for n, r in reasons.items() if not r.startswith("cannot ")}
        detail = "; ".join(f"{n}: {r}" for n, r in (capable or reasons).items())
        raise UnsupportedError(
            f"no memwatch backend can {requirement} here ({detail})",
            requirement=requirement,
            reasons=reasons,
        )
    b = _backend(requested)
    why_not = _unfit(b, remote=remote, required=required, skip=skip)
    if why_not is None:
        return b
    reasons = {requested: why_not}
    if skip and requested in skip:
        raise UnsupportedError(
            f"backend {requested!r} cannot {requirement} here: {why_not}",
            requirement=requirement, reasons=reasons,
        )
    if remote and not b.remote:
        asked = "which pid= asks for"
    else:
        failed = [k for k in REQUIREMENTS if required[k] is True and not getattr(b, _ATTR[k])]
        if not failed:
            raise UnsupportedError(
                f"backend {requested!r} is unavailable here: {b.reason}",
                requirement=requirement, reasons=reasons,
            )
        asked = f"which {failed[0]}=True asks for"
        if getattr(_design(requested), _ATTR[failed[0]]):
            # The mechanism can, but not on this machine (user-mode-only uffd).
            raise UnsupportedError(
                f"backend {requested!r} {why_not}, {asked}",
                requirement=requirement, reasons=reasons,
            )
    raise CapabilityError(
        f"backend {requested!r} {why_not}, {asked}",
        requirement=requirement, reasons=reasons,
    )


def _design(name: str) -> Backend:
    """*name*'s capabilities as its mechanism has them on any kernel (a
    user-mode-only userfaultfd is a condition of this machine, not of uffd)."""
    spec = _BY_NAME[name]
    cls: Any = spec.cls
    return dataclasses.replace(
        _backend(name),
        sees_kernel_writes=bool(cls.sees_kernel_writes),
    )
