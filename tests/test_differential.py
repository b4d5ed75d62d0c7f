"""Differential test: every backend against a model of the pages written.

Hypothesis draws a buffer size and a program of writes, scans (with and
without reset, narrowed, into short buffers) and partial resets; the model is
the set of pages written since each was last reset.  Every backend must report
exactly that set, except softdirty, which may add false positives (new or
re-merged VMAs read as dirty: documented) but must never miss a page, and
which refuses partial resets (UnsupportedError, nothing cleared).

Examples are bounded so the suite stays fast: 50 per backend on the host,
8 in the QEMU guest (MEMWATCH_IN_GUEST=1), where Python runs 15-35x slower.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import BACKENDS, IN_GUEST, PAGE, anon, backend_params

import memwatch
import memwatch._watch

settings.register_profile(
    "memwatch-host",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "memwatch-guest",
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile("memwatch-guest" if IN_GUEST else "memwatch-host")

MAX_PAGES = 40  # well below 2 MiB: no transparent huge page in play


@dataclass(frozen=True)
class Write:
    pages: frozenset[int]
    byte: int


@dataclass(frozen=True)
class Dirty:
    reset: bool
    start: int  # pages
    length: int | None  # pages
    cap: int | None  # None: dirty(); else dirty_into() with that many entries


@dataclass(frozen=True)
class Reset:
    start: int
    length: int | None


page_index = st.integers(0, MAX_PAGES - 1)
ops = st.one_of(
    st.builds(Write, st.frozensets(page_index, max_size=12), st.integers(0, PAGE - 1)),
    st.builds(
        Dirty,
        st.booleans(),
        st.integers(0, MAX_PAGES),
        st.none() | st.integers(0, MAX_PAGES),
        st.none() | st.integers(1, MAX_PAGES + 2),
    ),
    st.builds(Reset, st.integers(0, MAX_PAGES), st.none() | st.integers(0, MAX_PAGES)),
)


def _clip(npages: int, start: int, length: int | None) -> tuple[int, int | None]:
    start = min(start, npages)
    if length is not None:
        length = min(length, npages - start)
    return start, length


def run_program(backend: str, npages: int, program: list[object], chunk: int) -> None:
    exact = backend != "softdirty"
    partial = BACKENDS[backend].partial_reset
    model: set[int] = set()
    # A small internal chunk makes dirty() loop over several scans.
    with mock.patch.object(memwatch._watch, "_MAX_CHUNK", chunk):
        w = memwatch.Watch(m := anon(npages), backend=backend)
    with m, w:
        for op in program:
            if isinstance(op, Write):
                for p in op.pages:
                    if p < npages:
                        i = p * PAGE + op.byte
                        m[i] = (m[i] + 1) & 0xFF
                        model.add(p)
            elif isinstance(op, Reset):
                start, length = _clip(npages, op.start, op.length)
                end = npages if length is None else start + length
                whole = start == 0 and end == npages
                if not partial and not whole and end > start:
                    with pytest.raises(memwatch.UnsupportedError):
                        w.reset(start * PAGE, None if length is None else length * PAGE)
                    continue
                w.reset(start * PAGE, None if length is None else length * PAGE)
                model -= set(range(start, end))
            elif isinstance(op, Dirty):
                start, length = _clip(npages, op.start, op.length)
                end = npages if length is None else start + length
                kw = {
                    "reset": op.reset,
                    "start": start * PAGE,
                    "length": None if length is None else length * PAGE,
                }
                want = sorted(p for p in model if start <= p < end)
                short = op.cap is not None and op.cap < end - start
                whole = start == 0 and end == npages
                if op.reset and not partial and (short or not whole) and end > start:
                    with pytest.raises(memwatch.UnsupportedError):
                        if op.cap is None:
                            w.dirty(**kw)  # type: ignore[arg-type]
                        else:
                            w.dirty_into(array("Q", bytes(8 * op.cap)), **kw)  # type: ignore[arg-type]
                    continue
                if op.cap is None:
                    got = list(w.dirty(**kw))  # type: ignore[arg-type]
                    full = True
                else:
                    out = array("Q", bytes(8 * op.cap))
                    n = w.dirty_into(out, **kw)  # type: ignore[arg-type]
                    got = list(out[:n])
                    full = n < op.cap
                assert got == sorted(set(got)), "ascending, no duplicates"
                pages = [g // PAGE for g in got]
                assert all(g % PAGE == 0 for g in got)
                assert all(start <= p < end for p in pages), (pages, start, end)
                if exact:
                    expect = want if full else want[: op.cap]
                    assert pages == expect, (backend, op, pages, want)
                else:
                    # Never a false negative up to where the scan stopped.
                    stop = end if full else pages[-1] + 1
                    missed = [p for p in want if p < stop and p not in pages]
                    assert not missed, (backend, op, missed)
                if op.reset:
                    stop = end if full else pages[-1] + 1
                    model -= set(range(start, stop))
        # Finally everything written and not reset is still there.
        final = [g // PAGE for g in w.dirty()]
        if exact:
            assert final == sorted(model)
        else:
            assert set(model) <= set(final)


@pytest.mark.parametrize("backend", backend_params())
@PROFILE
@given(
    npages=st.integers(1, MAX_PAGES),
    program=st.lists(ops, max_size=14),
    chunk=st.sampled_from([1, 3, 1 << 16]),
)
def test_differential(backend: str, npages: int, program: list[object], chunk: int) -> None:
    run_program(backend, npages, program, chunk)


@pytest.mark.parametrize("backend", backend_params())
def test_differential_large_range(backend: str) -> None:
    """A range larger than one internal chunk, sparse and dense writes."""
    npages = 20_000 if not IN_GUEST else 5_000  # 78 MiB / 20 MiB, lazily mapped
    with anon(npages) as m, memwatch.Watch(m, backend=backend) as w:
        written = set(range(0, npages, 997)) | set(range(npages - 5, npages))
        for p in written:
            m[p * PAGE] = 1
        got = [g // PAGE for g in w.dirty(reset=True)]
        if backend == "softdirty":
            assert written <= set(got)
        else:
            assert got == sorted(written)
        assert list(w.dirty()) == [] or backend == "softdirty"
