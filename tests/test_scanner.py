"""tracker.scanner(): the METH_FASTCALL scan() behind Watch.dirty_into.

It bypasses pybind11's dispatcher and type casters, so every check the
pybind11 scan() makes is made again here by hand: each bad call must raise
the same exception with the same message as ``tracker.scan`` (never crash),
and each good call must return the same pages.  A scan of a few pages on a
mechanism that cannot block keeps the GIL (Tracker::try_quick_scan); the
concurrency test below makes threads contend for the tracker's mutex so
that both the quick path and its fallback run.
"""

from __future__ import annotations

import array
import gc
import os
import threading
from typing import Any, Callable

import pytest
from binding_support import (
    ALL,
    MECHS,
    PARTIAL,
    PS,
    Attached,
    Region,
    mechs,
    out_buf,
    pages,
)

import memwatch
from memwatch import _memwatch as mw


class _Index:
    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


class _BadIndex:
    def __index__(self) -> int:
        raise ZeroDivisionError("no index today")


def _bad_calls(a: int, size: int) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    out = out_buf(8)
    return [
        # out: type, format, itemsize, writability, contiguity
        ("list", (a, size, [0] * 8, False), {}),
        ("int", (a, size, 7, False), {}),
        ("str", (a, size, "abc", False), {}),
        ("None", (a, size, None, False), {}),
        ("bytes", (a, size, bytes(64), False), {}),
        ("bytearray", (a, size, bytearray(64), False), {}),
        ("array-I", (a, size, array.array("I", [0] * 8), False), {}),
        ("array-d", (a, size, array.array("d", [0.0] * 8), False), {}),
        ("readonly", (a, size, memoryview(out).toreadonly(), False), {}),
        ("strided", (a, size, memoryview(out)[::2], False), {}),
        # reset: a bool, nothing else
        ("reset-str", (a, size, out, "yes"), {}),
        ("reset-int", (a, size, out, 1), {}),
        ("reset-None", (a, size, out, None), {}),
        ("reset-kw-str", (a, size, out), {"reset": "yes"}),
        # start/length: ints in range, never bools/floats
        ("start-float", (float(a), size, out, False), {}),
        ("start-bool", (True, size, out, False), {}),
        ("start-str", ("0", size, out, False), {}),
        ("start-bad-index", (_BadIndex(), size, out, False), {}),
        ("length-None", (a, None, out, False), {}),
        ("start-negative", (-PS, size, out, False), {}),
        ("length-negative", (a, -1, out, False), {}),
        ("start-huge", (1 << 64, size, out, False), {}),
        ("beyond-user", ((1 << 63) - PS, 2 * PS, out, False), {}),
        # the attached range
        ("before", (a - PS, PS, out, False), {}),
        ("after", (a + size, PS, out, False), {}),
        ("past-end", (a, size + PS, out, False), {}),
        ("unaligned", (a + 1, PS, out, False), {}),
    ]


def _outcome(fn: Callable[..., int], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    try:
        return ("ok", fn(*args, **kw))
    except Exception as err:  # noqa: BLE001 - compared below
        return (type(err), str(err))


@mechs(ALL)
def test_bad_calls_raise_as_scan_does(mech: Attached) -> None:
    t, fast = mech.t, mech.t.scanner()
    for what, args, kw in _bad_calls(mech.region.addr, mech.region.size):
        want = _outcome(t.scan, args, kw)
        got = _outcome(fast, args, kw)
        assert want[0] != "ok", what
        assert got == want, what
    # reset="yes" in particular: TypeError, saying what was wrong.
    with pytest.raises(TypeError, match="reset must be a bool, not str"):
        fast(mech.region.addr, mech.region.size, out_buf(8), "yes")


@mechs(ALL)
def test_good_calls_agree_with_scan(mech: Attached) -> None:
    fast = mech.t.scanner()
    written = [0, 3, 17, 63]
    for p in written:
        mech.region.write(p)
    a, size = mech.region.addr, mech.region.size
    for start, npages in ((a, mech.region.npages), (a, 1), (a + 3 * PS, 15), (a + PS, 0)):
        slow_out, fast_out = out_buf(64), out_buf(64)
        n = mech.t.scan(start, npages * PS, slow_out, False)
        assert fast(start, npages * PS, fast_out, False) == n
        assert fast_out[:n] == slow_out[:n]
    # _Index / keywords / the default reset.
    out = out_buf(64)
    assert fast(_Index(a), _Index(size), out) == len(written)
    assert fast(start=a, length=size, out=out, reset=False) == len(written)
    assert pages(out, len(written)) == written


@mechs(PARTIAL)
def test_small_out_and_reset(mech: Attached) -> None:
    """A buffer too small for every dirty page: filled, the rest kept for the
    next call (no write lost), on the quick (<= 16 pages) and long paths."""
    fast = mech.t.scanner()
    for npages in (16, mech.region.npages):
        for p in (1, 2, 9):
            mech.region.write(p)
        one = out_buf(1)
        seen = []
        while (n := fast(mech.region.addr, npages * PS, one, True)) == 1:
            seen.append(one[0] // PS)
        assert n == 0 and seen == [1, 2, 9]
        assert fast(mech.region.addr, npages * PS, out_buf(0), True) == 0


def test_argument_count_and_names(region: Region) -> None:
    t = mw.MprotectTracker()
    t.attach(region.addr, region.size)
    try:
        fast, out = t.scanner(), out_buf(4)
        a, n = region.addr, region.size
        bad: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
            ((), {}, "missing required argument 'start'"),
            ((a,), {}, "missing required argument 'length'"),
            ((a, n), {}, "missing required argument 'out'"),
            ((a, n, out, False, 5), {}, "at most 4 arguments"),
            ((a, n, out), {"flags": 1}, "unexpected keyword argument 'flags'"),
            ((a, n, out, False), {"reset": True}, "multiple values for argument 'reset'"),
            ((a, n), {"length": n, "out": out}, "multiple values for argument 'length'"),
        ]
        for args, kw, msg in bad:
            with pytest.raises(TypeError, match=msg):
                fast(*args, **kw)
        assert fast(a, n, out=out, reset=True) == 0
    finally:
        t.detach()


@mechs(ALL)
def test_detached_shared_and_lifetime(mech: Attached) -> None:
    t = mech.t
    fast = t.scanner()
    t.set_shared(True)
    with pytest.raises(mw.TrackerShared):
        fast(mech.region.addr, PS, out_buf(4), True)
    t.set_shared(False)
    t.detach()
    with pytest.raises(ValueError, match="tracker is detached"):
        fast(mech.region.addr, PS, out_buf(4), True)
    # The scanner keeps its tracker alive on its own.
    t2 = MECHS[mech.name][0]()
    t2.attach(mech.region.addr, mech.region.size)
    fast = t2.scanner()
    mech.region.write(5)
    del t2
    gc.collect()
    out = out_buf(4)
    assert fast(mech.region.addr, mech.region.size, out, True) == 1 and out[0] == 5 * PS
    del fast
    gc.collect()


@mechs(["pagemap_scan", "uffd", "mprotect"])
def test_threads_contending_lose_nothing(mech: Attached) -> None:
    """Two threads scan-and-reset the same 16 pages at once (the quick
    path with the GIL, or its fallback when the other holds the mutex):
    every written page is reported exactly once per round."""
    fast = mech.t.scanner()
    a = mech.region.addr
    for _ in range(100):
        for p in range(16):
            mech.region.write(p)
        got: list[list[int]] = [[], []]
        barrier = threading.Barrier(2)

        def worker(i: int, got: list[list[int]] = got,
                   barrier: threading.Barrier = barrier) -> None:
            out = out_buf(4)
            barrier.wait()
            while True:
                n = fast(a, 16 * PS, out, True)
                got[i] += pages(out, n)
                if n < len(out):
                    return

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        both = got[0] + got[1]
        assert sorted(both) == list(range(16)), got


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_refused(region: Region) -> None:
    t = mw.MprotectTracker()
    t.attach(region.addr, region.size)
    try:
        fast = t.scanner()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports by exit status
            code = 1
            try:
                fast(region.addr, region.size, out_buf(4), False)
            except ValueError as err:
                code = 0 if "inherited through fork" in str(err) else 2
            except Exception:  # noqa: BLE001 - any other outcome is a failure
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        t.detach()


def test_watch_fast_path_uses_the_scanner() -> None:
    buf = bytearray(4 * PS)
    w = memwatch.Watch(buf)
    try:
        if w.backend not in ("pagemap_scan", "uffd", "mprotect", "syscall"):
            pytest.skip(f"{w.backend} has no direct path")
        assert type(w._scan).__name__ == "builtin_function_or_method"
        buf[PS] = 1
        out = array.array("Q", bytes(8 * 4))
        assert w.dirty_into(out, reset=True) == 1 and out[0] == PS
        with pytest.raises(TypeError, match="reset must be a bool, not str"):
            w.dirty_into(out, reset="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="writable"):
            w.dirty_into(bytes(32))
        with pytest.raises(TypeError, match="8-byte"):
            w.dirty_into(array.array("I", [0] * 8))
    finally:
        w.close()
    with pytest.raises(ValueError, match="closed"):
        w.dirty_into(out, reset=True)
