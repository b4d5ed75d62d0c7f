"""A Watch closed by the garbage collector while its thread is inside the registry.

The cyclic GC runs finalisers at any allocation, also in the middle of a
registry operation that holds a domain's lock (join, a shared scan or reset,
leave).  A finaliser that closes a Watch of the same domain (``Watch.__del__``,
``WatchedMapping.__del__``, or any user object holding a Watch in a
reference cycle) used to wait on that lock forever: a hang of the whole
thread, seen once in a full host run (tests/test_pytest_plugin.py, a
``memwatch.alloc()`` whose join collected a garbage ``WatchedMapping``).

Each test forces the collection at a point where the lock is held (by
wrapping one of the domain's methods that always runs under it), in a
child interpreter with a timeout, so a regression is a failure, not a hung
suite.
"""

from __future__ import annotations

import pytest

from hardening_support import describe, run_py
from support import backend_params

_PRELUDE = """
    import gc, mmap, memwatch
    from memwatch import _registry
    B = {backend!r}
    P = memwatch.PAGE_SIZE

    class Cycle:
        # A reference cycle with a finaliser that closes its Watch: only the
        # cyclic GC frees it.
        def __init__(self, w):
            self.me = self
            self.w = w
        def __del__(self):
            self.w.close()

    def collect_inside(name):
        # Make the domain's method *name*, which runs with the domain lock
        # held, start with a garbage collection (as any allocation there may).
        orig = getattr(_registry.Domain, name)
        def wrapped(self, *args, **kwargs):
            gc.collect()
            return orig(self, *args, **kwargs)
        setattr(_registry.Domain, name, wrapped)
        return lambda: setattr(_registry.Domain, name, orig)

    def members():
        return sorted(len(d.members) for d in _registry.domains())

    gc.disable()  # only the collections forced above
    a = mmap.mmap(-1, 4 * P, flags=mmap.MAP_PRIVATE)
    b = mmap.mmap(-1, 4 * P, flags=mmap.MAP_PRIVATE)
"""


def _run(backend: str, body: str) -> None:
    code = _PRELUDE.format(backend=backend) + body
    r = run_py(code, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, describe(r)


@pytest.mark.parametrize("backend", backend_params())
def test_finaliser_closes_a_watch_while_another_joins(backend: str) -> None:
    _run(backend, """
    Cycle(memwatch.Watch(a, backend=B))  # garbage: closed by the next collection
    assert members() == [1], members()
    undo = collect_inside("_check")  # join's first step, under the lock
    wb = memwatch.Watch(b, backend=B)
    undo()
    # The finaliser's close ran once join released the lock.
    assert members() == [1], members()
    b[P] = 1
    assert list(wb.dirty(reset=True)) == [P]
    a[0] = 1  # the closed Watch's range is an ordinary mapping again
    wb.close()
    assert members() == [], members()
    print("OK")
    """)


@pytest.mark.parametrize("backend", backend_params(partial_reset=True))
def test_finaliser_closes_a_watch_during_a_shared_scan(backend: str) -> None:
    _run(backend, """
    # Two Watches on the same pages: their scans take the registry's
    # shared path, under the domain lock.
    w1 = memwatch.Watch(b, backend=B)
    w2 = memwatch.Watch(b, backend=B)
    Cycle(memwatch.Watch(a, backend=B))
    assert members() == [3], members()
    b[2 * P] = 1
    undo = collect_inside("update_modes")  # the end of every locked operation
    got = list(w1.dirty(reset=True))
    undo()
    assert got == [2 * P], got
    assert members() == [2], members()
    assert list(w2.dirty(reset=True)) == [2 * P]  # w1's reset hid nothing from w2
    w1.close(); w2.close()
    assert members() == [], members()
    print("OK")
    """)


@pytest.mark.parametrize("backend", backend_params())
def test_finaliser_closes_a_watch_while_another_leaves(backend: str) -> None:
    _run(backend, """
    wb = memwatch.Watch(b, backend=B)
    Cycle(memwatch.Watch(a, backend=B))
    undo = collect_inside("update_modes")
    wb.close()  # leave() collects inside: the other close waits for it
    undo()
    assert members() == [], members()
    a[0] = 1; b[0] = 1
    print("OK")
    """)


@pytest.mark.parametrize("backend", backend_params())
def test_watched_mapping_collected_while_alloc_joins(backend: str) -> None:
    # The shape of the hang seen in the suite: a garbage WatchedMapping
    # (memwatch.alloc) collected inside the next alloc's join.
    _run(backend, """
    m = memwatch.alloc(4 * P, backend=B)
    m.me = [m]  # a cycle: only the GC frees it
    del m
    undo = collect_inside("_check")
    m2 = memwatch.alloc(4 * P, backend=B)
    undo()
    assert members() == [1], members()
    m2[P] = 1
    assert list(m2.watch.dirty(reset=True)) == [P]
    m2.close()
    print("OK")
    """)
