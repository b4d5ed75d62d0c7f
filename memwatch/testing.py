"""Page-write assertions for test suites (the pytest plugin's engine).

The pytest plugin (module ``pytest_memwatch``, README "For test suites
(pytest)") wraps these in the ``page_writes`` fixture; they work without
pytest too::

    from memwatch.testing import record
    with record(buf) as rec:
        update(buf)
    rec.assert_at_most(2)
    rec.assert_only([range(0, 4096)])

Pages are whole: a write anywhere in a page counts, including a write by
something else to a page the target shares (a small ``bytearray`` shares its
pages with other heap objects).  Exact answers need a target with pages of
its own: :func:`memwatch.alloc`, an ``mmap``, a large numpy array.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from . import _backends
from ._common import UnsupportedError
from ._watch import PAGE_SIZE, Watch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Allowed",
    "PageWriteError",
    "Recording",
    "measure_calls",
    "record",
    "writable_buffers",
]

# What "writes nothing outside these offsets" accepts: byte offsets within
# the target -- an int (one byte), a range or slice (step 1), a (start, stop)
# pair -- or an iterable of those.
Allowed = Union[int, range, slice, "tuple[int, int]", Iterable[Any]]

_MAX_LINES = 40


class PageWriteError(AssertionError):
    """A page-write assertion failed; str() lists the pages."""


def _describe_target(target: object, length: int | None) -> str:
    if isinstance(target, int) and not isinstance(target, bool):
        return f"range {target:#x}+{length or 0:#x}"
    try:
        with memoryview(target) as view:  # type: ignore[arg-type]
            nbytes = view.nbytes
    except TypeError:
        return type(target).__name__
    return f"{type(target).__module__}.{type(target).__qualname__} of {nbytes} bytes".replace(
        "builtins.", ""
    )


def _spans(allowed: Allowed) -> list[tuple[int, int]]:
    """Byte spans [start, stop) of an :data:`Allowed` value."""
    if isinstance(allowed, bool):
        raise TypeError("allowed offsets must be ints, ranges, slices or (start, stop) pairs")
    if isinstance(allowed, int):
        return [(allowed, allowed + 1)]
    if isinstance(allowed, range):
        if allowed.step != 1:
            raise ValueError(f"an allowed range must have step 1, got {allowed!r}")
        return [(allowed.start, allowed.stop)] if allowed.stop > allowed.start else []
    if isinstance(allowed, slice):
        if allowed.start is None or allowed.stop is None or allowed.step not in (None, 1):
            raise ValueError(f"an allowed slice needs a start and a stop and step 1, got {allowed!r}")
        return [(allowed.start, allowed.stop)] if allowed.stop > allowed.start else []
    if (
        isinstance(allowed, tuple)
        and len(allowed) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in allowed)
    ):
        start, stop = allowed
        return [(start, stop)] if stop > start else []
    if isinstance(allowed, Iterable) and not isinstance(allowed, (str, bytes)):
        out: list[tuple[int, int]] = []
        for item in allowed:
            out.extend(_spans(item))
        return out
    raise TypeError(
        "allowed offsets must be ints, ranges, slices or (start, stop) pairs, "
        f"not {type(allowed).__name__}"
    )


class Recording:
    r"""The pages a block wrote into one target (a context manager).

    ``with Recording(target) as rec:`` watches *target* (a writable buffer,
    or an int address with *length*) for the duration of the block;
    afterwards :attr:`offsets` and :attr:`pages` say which pages were
    written.  Inside the block they show the writes so far.  *backend*,
    *atomic* and *kernel_writes* are those of :class:`memwatch.Watch`:
    ``kernel_writes=True`` when the code under test ``read()``\ s into the
    target (``mprotect`` would make that fail with ``EFAULT``).
    """

    def __init__(
        self,
        target: object,
        length: int | None = None,
        *,
        backend: str = "auto",
        atomic: bool | None = None,
        kernel_writes: bool | None = None,
        on_exit: Callable[[Recording], None] | None = None,
        unsupported: Callable[[str], object] | None = None,
    ) -> None:
        self._target_desc = _describe_target(target, length)
        self._target: object = target
        self._length = length
        self._backend_asked = backend
        self._asked = _backends.check_requirements(atomic=atomic, kernel_writes=kernel_writes)
        self._on_exit = on_exit
        # Called with the reason when no mechanism can watch the target
        # here (the pytest plugin skips the test); else UnsupportedError.
        self._unsupported = unsupported
        self._watch: Watch | None = None
        self._offsets: tuple[int, ...] | None = None
        self.address = 0
        self.length = 0
        self.target_offset = 0
        self.target_nbytes = 0
        self.backend = ""
        self.page_size = PAGE_SIZE

    def __enter__(self) -> Self:
        if self._watch is not None or self._offsets is not None:
            raise RuntimeError("a Recording can be used for one block only")
        try:
            w = Watch(self._target, self._length, backend=self._backend_asked,
                      atomic=self._asked["atomic"],
                      kernel_writes=self._asked["kernel_writes"])
        except UnsupportedError as err:
            if self._unsupported is None:
                raise
            self._unsupported(str(err))
            raise
        self._watch = w
        self.address = w.address
        self.length = w.length
        self.target_offset = w.target_offset
        if self._length is not None:
            self.target_nbytes = self._length
        else:
            with memoryview(self._target) as view:  # type: ignore[arg-type]
                self.target_nbytes = view.nbytes
        self.backend = w.backend
        self._target = None  # hold no reference beyond the Watch's export
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        w = self._watch
        if w is None:
            return
        try:
            self._offsets = tuple(w.dirty())
        finally:
            w.close()
            self._watch = None
        if exc_type is None and self._on_exit is not None:
            __tracebackhide__ = True
            self._on_exit(self)

    # -- results -------------------------------------------------------------

    @property
    def offsets(self) -> tuple[int, ...]:
        """Byte offsets of the written pages from :attr:`address` (the
        page-aligned start of the watched range), ascending."""
        if self._offsets is not None:
            return self._offsets
        if self._watch is not None:
            return tuple(self._watch.dirty())
        raise RuntimeError("the Recording has not been entered yet")

    @property
    def pages(self) -> tuple[int, ...]:
        """Indices of the written pages (0 = the page holding the target's
        first byte)."""
        return tuple(off // self.page_size for off in self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        state = "open" if self._watch is not None else "done"
        pages = list(self.pages) if (self._watch or self._offsets is not None) else "?"
        return f"<memwatch.testing.Recording {state} {self._target_desc} pages={pages}>"

    def page_line(self, offset: int) -> str:
        """One line describing the written page at *offset*."""
        lo = max(offset - self.target_offset, 0)
        hi = min(offset + self.page_size - self.target_offset, self.target_nbytes)
        where = (
            f"target bytes {lo:#x}..{hi:#x}" if hi > lo else "outside the target's bytes"
        )
        return (
            f"  page {offset // self.page_size}: {where} "
            f"(offset {offset:#x}, address {self.address + offset:#x})"
        )

    def _listing(self, offsets: Sequence[int]) -> str:
        lines = [self.page_line(o) for o in offsets[:_MAX_LINES]]
        if len(offsets) > _MAX_LINES:
            lines.append(f"  ... and {len(offsets) - _MAX_LINES} more")
        return "\n".join(lines)

    def _footer(self) -> str:
        return (
            f"(backend {self.backend}, page size {self.page_size}; watched "
            f"{self.address:#x}+{self.length:#x}, the target starts "
            f"{self.target_offset:#x} into it)"
        )

    # -- assertions ----------------------------------------------------------

    def assert_at_most(self, pages: int) -> None:
        """Raise :class:`PageWriteError` if more than *pages* pages were
        written; the message lists every written page."""
        __tracebackhide__ = True
        written = self.offsets
        if len(written) > pages:
            raise PageWriteError(
                f"{len(written)} pages of {self._target_desc} were written, at most "
                f"{pages} expected:\n{self._listing(written)}\n{self._footer()}"
            )

    def assert_only(self, allowed: Allowed) -> None:
        """Raise :class:`PageWriteError` if a page was written that holds
        none of the *allowed* byte offsets of the target; the message lists
        those pages.  *allowed*: ints, ranges, slices, (start, stop) pairs,
        or an iterable of them, in bytes from the target's start."""
        __tracebackhide__ = True
        spans = _spans(allowed)
        unexpected = []
        for off in self.offsets:
            lo = off - self.target_offset
            hi = lo + self.page_size
            if not any(a < hi and lo < b for a, b in spans):
                unexpected.append(off)
        if unexpected:
            shown = ", ".join(f"{a:#x}..{b:#x}" for a, b in spans) or "none"
            raise PageWriteError(
                f"{len(unexpected)} of the {len(self.offsets)} written pages of "
                f"{self._target_desc} are outside the allowed offsets [{shown}]:\n"
                f"{self._listing(unexpected)}\n{self._footer()}"
            )


def record(
    target: object,
    length: int | None = None,
    *,
    backend: str = "auto",
    atomic: bool | None = None,
    kernel_writes: bool | None = None,
) -> Recording:
    """A :class:`Recording` of *target* (use it as a context manager);
    the keywords are those of :class:`memwatch.Watch`."""
    return Recording(target, length, backend=backend, atomic=atomic,
                     kernel_writes=kernel_writes)


# -- pytest-benchmark: pages written per call --------------------------------


def writable_buffers(args: Sequence[object], kwargs: Mapping[str, object]) -> list[tuple[str, object]]:
    """(name, object) of every writable C-contiguous buffer among a call's
    arguments: what ``--memwatch-benchmark`` watches by default."""
    found: list[tuple[str, object]] = []
    named: Iterator[tuple[str, object]] = (
        (f"arg {i}", a) for i, a in enumerate(args)
    )
    for name, obj in [*named, *((f"{k}=", v) for k, v in kwargs.items())]:
        if isinstance(obj, (bytes, str, int)):
            continue
        try:
            with memoryview(obj) as view:  # type: ignore[arg-type]
                ok = not view.readonly and view.c_contiguous and view.nbytes > 0
        except (TypeError, ValueError, BufferError):  # no buffer, a closed mmap, ...
            continue
        if ok:
            found.append((name, obj))
    return found


def measure_calls(
    call: Callable[[], tuple[Sequence[object], Mapping[str, object], Callable[[], object]]],
    targets: Sequence[tuple[str, object]] | None,
    *,
    rounds: int,
    backend: str = "auto",
) -> dict[str, Any]:
    """Pages written per call, over *rounds* untimed calls.

    *call* makes one round's arguments and returns ``(args, kwargs, run)``;
    ``run()`` makes the call (and any teardown).  *targets* are (name,
    buffer) pairs to watch; None means the writable buffers among the
    arguments.  Returns a JSON-serialisable dict for ``extra_info``.
    """
    per_round: list[int] = []
    per_target: dict[str, dict[str, Any]] = {}
    chosen = ""
    for _ in range(rounds):
        args, kwargs, run = call()
        these = list(targets) if targets is not None else writable_buffers(args, kwargs)
        if not these:
            return {
                "error": "no writable buffer among the benchmarked call's arguments; pass "
                "one, or name it with page_writes.track_benchmark(buf)"
            }
        recs = []
        try:
            for name, obj in these:
                rec = Recording(obj, backend=backend)
                rec.__enter__()
                recs.append((name, obj, rec))
            run()
        finally:
            for _, _, rec in recs:
                rec.__exit__(None, None, None)
        total = 0
        for name, obj, rec in recs:
            chosen = rec.backend
            entry = per_target.setdefault(
                name,
                {
                    "target": f"{name}: {_describe_target(obj, None)}",
                    "pages": rec.length // rec.page_size,
                    "pages_per_round": [],
                },
            )
            entry["pages_per_round"].append(len(rec.offsets))
            total += len(rec.offsets)
        per_round.append(total)
    return {
        "backend": chosen,
        "rounds": rounds,
        "pages_per_round": per_round,
        "median_pages_per_round": statistics.median(per_round),
        "targets": list(per_target.values()),
    }
