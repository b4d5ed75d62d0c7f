"""Windows write-watch semantics: ``VirtualAlloc(MEM_WRITE_WATCH)``,
``GetWriteWatch`` and ``ResetWriteWatch``, as games running under Wine expect.

Observed on Windows (Wine's conformance tests): a fresh allocation has no
written page; ``GetWriteWatch`` with a count of 1 and ``WRITE_WATCH_FLAG_RESET``
returns the lowest written page and resets only that one; protection changes
do not clear the state; writes made by the kernel are tracked (except with the
``mprotect`` backend, whose ``sees_kernel_writes`` is False).
"""

from __future__ import annotations

import mmap
import sys
from array import array

from . import _backends
from ._watch import Watch

__all__ = ["WatchedMapping", "alloc", "get_write_watch", "reset_write_watch"]

_SIZE_MAX = sys.maxsize  # what mmap() can be asked for


class WatchedMapping(mmap.mmap):
    """An anonymous private mapping tracked from birth (see :func:`alloc`).

    It is an :class:`mmap.mmap` -- slice it, ``memoryview`` it, hand it to
    numpy -- plus :attr:`watch`, the :class:`memwatch.Watch` over all of it,
    and :attr:`address`.  :meth:`close` (or leaving a ``with`` block) closes the
    watch first, then unmaps.
    """

    _watch: Watch

    @property
    def watch(self) -> Watch:
        """The :class:`memwatch.Watch` over the whole mapping (read-only)."""
        return self._watch

    @property
    def address(self) -> int:
        """The mapping's first byte (page aligned; read-only)."""
        return self._watch.address

    def close(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.close()
        super().close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Detach before the mapping goes away (a finaliser runs before the
        # reference cycle mapping -> watch -> export -> mapping is cleared).
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<memwatch.WatchedMapping closed>"
        return (
            f"<memwatch.WatchedMapping address={self.address:#x} "
            f"size={len(self):#x} backend={self.watch.backend!r}>"
        )


WatchedMapping.__module__ = "memwatch"


def alloc(
    size: int,
    *,
    backend: str = "auto",
    atomic: bool | None = None,
    kernel_writes: bool | None = None,
) -> WatchedMapping:
    """A new anonymous private read-write mapping, tracked from birth.

    The analogue of ``VirtualAlloc(MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH)``:
    *size* is rounded up to whole pages, the mapping never uses transparent
    huge pages (so a write reports exactly its own page), reports no written
    page until something writes to it, and :func:`get_write_watch` /
    :func:`reset_write_watch` work on it.  *backend*, *atomic* and
    *kernel_writes* are those of :class:`memwatch.Watch`; ``partial_reset``
    is always required (``GetWriteWatch`` with a count and reset needs it;
    every backend can, softdirty through memwatch's registry).  Windows
    tracks kernel writes into a write-watched allocation:
    ``kernel_writes=True`` refuses a backend that cannot.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size > _SIZE_MAX:
        raise OverflowError(
            f"size {size:#x} is larger than the address space (2**63 bytes at most)"
        )
    chosen = _backends.choose(
        backend, atomic=atomic, kernel_writes=kernel_writes, partial_reset=True
    )
    page = mmap.PAGESIZE
    size = -(-size // page) * page
    m = WatchedMapping(
        -1,
        size,
        flags=mmap.MAP_PRIVATE,  # fileno -1 adds MAP_ANONYMOUS
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
    )
    try:
        # Page granularity, as on Windows: with a transparent huge page, one
        # write would make the kernel-level backends report 512 pages.
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
        m._watch = Watch(
            m, backend=chosen.name, atomic=atomic, kernel_writes=kernel_writes,
            partial_reset=True,
        )
    except BaseException:
        mmap.mmap.close(m)
        raise
    return m


def _watch_of(target: object) -> Watch:
    if isinstance(target, Watch):
        return target
    watch = getattr(target, "watch", None)
    if isinstance(watch, Watch):
        return watch
    raise TypeError(
        "target must be a memwatch.alloc() mapping or a memwatch.Watch, "
        f"not {type(target).__name__}"
    )


def get_write_watch(
    target: object, *, reset: bool = False, max_count: int | None = None
) -> tuple[list[int], int]:
    """``GetWriteWatch``: (addresses of written pages, granularity).

    *target* is what :func:`alloc` returned, or any :class:`memwatch.Watch`.
    Addresses are absolute and ascending; granularity is the page size.
    *max_count* caps how many are returned (``None``: all); with *reset*, only
    the returned pages are reset, so ``max_count=1, reset=True`` pops the
    lowest written page.
    """
    watch = _watch_of(target)
    if max_count is None:
        offsets = watch.dirty(reset=reset)
    else:
        if isinstance(max_count, bool) or not isinstance(max_count, int):
            raise TypeError(f"max_count must be an int, not {type(max_count).__name__}")
        if max_count < 0:
            raise ValueError(f"max_count must not be negative, got {max_count}")
        if max_count == 0:
            return [], watch.page_size
        out = array("Q", bytes(8 * min(max_count, watch.length // watch.page_size)))
        n = watch.dirty_into(out, reset=reset)
        offsets = out[:n]
    base = watch.address
    return [base + off for off in offsets], watch.page_size


def reset_write_watch(target: object) -> None:
    """``ResetWriteWatch``: mark every page of *target* unwritten."""
    _watch_of(target).reset()
