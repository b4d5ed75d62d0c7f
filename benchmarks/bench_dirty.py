"""The seed's table through the API users call: one tracking *cycle* per round.

For 1, 10, 100, 1000 and 10000 written pages of a populated 20000-page
private mapping, a cycle = write those pages (one byte each, spread evenly,
one strided C-level copy) + collect them with reset; both halves are timed
(uffd and mprotect pay in the writes: one fault per page).  Rows: every
available backend, the syscall in both modes (``syscall`` =
NO_REUSED_REGIONS, what Watch uses; ``syscall/default``), and ``writes
only`` (the same writes without a Watch: the floor of every row).  Each
backend is collected two ways in the same run:

``dirty_into``  ``Watch.dirty_into(out, reset=True)`` (the facade),
``raw``         ``tracker.scan(address, length, out, True)`` (the binding).

The cycle is memwatch._bench.CycleTarget, the one ``memwatch bench`` runs.
Test ids are ``test_cycle[<row>-<api>-<pages:05d>]``; ``extra_info`` =
{kind: cycle, row, backend, api, pages}; the run ends with the table of
medians (benchmarks/conftest.py).  A cycle that collects fewer pages than
it wrote fails the test.

Run:  python -m pytest benchmarks/bench_dirty.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import GUEST, available, smoke

from memwatch import _bench
from memwatch._bench import CycleTarget, Variant

PAGES = _bench.PAGES
ROUNDS = {1: 300, 10: 300, 100: 100, 1000: 30, 10_000: 10}
if GUEST:  # TCG: Python 15-35x slower; uffd at 10000 pages takes seconds a cycle
    ROUNDS = {1: 15, 10: 15, 100: 9, 1000: 5, 10_000: 3}
ROWS = _bench.variants(available())
MHZ = _bench.cpu_mhz()


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, CycleTarget]]:
    made: dict[str, CycleTarget] = {}
    yield made
    for t in made.values():
        t.close()


CASES = [
    pytest.param(v, api, n, id=f"{v.label}-{api}-{n:05d}")
    for v in ROWS
    for n in PAGES
    # The guest run measures the facade only (into/raw is a host question).
    for api in ((("dirty_into",) if GUEST else ("dirty_into", "raw")) if v.backend else ("none",))
]


@pytest.mark.parametrize(("variant", "api", "npages"), CASES)
def test_cycle(benchmark: Any, request: pytest.FixtureRequest,
               targets: dict[str, CycleTarget], variant: Variant, api: str,
               npages: int) -> None:
    if variant.label not in targets:
        # One at a time: softdirty refuses to share a process with another
        # soft-dirty-family Watch (syscall), and each target holds 80 MB.
        for label in list(targets):
            targets.pop(label).close()
        targets[variant.label] = CycleTarget(variant)
    t = targets[variant.label]
    fn: Callable[[], int] = t.cycle(npages)
    if api == "raw":
        assert t.watch is not None
        tracker = t.watch._tracker  # the binding under the facade (alone: direct path)
        assert tracker is not None
        scan, address, length, out = tracker.scan, t.watch.address, t.watch.length, t.out
        write = t.writer(npages)

        def fn() -> int:
            write()
            return scan(address, length, out, True)

    benchmark.group = f"cycle-{npages:05d}"
    benchmark.extra_info.update(kind="cycle", row=variant.label,
                                backend=variant.backend or "none", api=api, pages=npages)
    if not GUEST:  # emulated cycles in a TCG guest mean nothing
        benchmark.extra_info["mhz"] = MHZ
    rounds = 1 if smoke(request.config) else ROUNDS[npages]
    n = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    assert n >= npages  # never fewer than written (uffd/mprotect: rare extra pages)
