"""Model-based test of every tracker with partial reset: random writes, scans
and resets against a set-of-dirty-pages model (hypothesis).
"""

from __future__ import annotations

from typing import Any

import pytest
from binding_support import (
    PARTIAL,
    PS,
    Attached,
    Region,
    params,
    skip_if_unavailable,
)

# ------------------------------------------- model-based (hypothesis)

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the `test` extra installs it
    hypothesis = None  # type: ignore[assignment]

NPAGES_MODEL = 70  # crosses a 64-bit bitmap word

_op = None if hypothesis is None else st.one_of(
    st.tuples(st.just("write"), st.integers(0, NPAGES_MODEL - 1)),
    st.tuples(st.just("scan"), st.integers(0, NPAGES_MODEL - 1), st.integers(0, NPAGES_MODEL),
              st.integers(0, 8), st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, NPAGES_MODEL - 1), st.integers(0, NPAGES_MODEL)),
)


@pytest.mark.parametrize("name", params(PARTIAL))
def test_model_random_ops(name: str) -> None:
    """Random writes, sub-range scans (with/without reset, any capacity) and
    resets against a set-of-dirty-pages model: every mechanism with
    partial_reset must agree with it exactly."""
    if hypothesis is None:
        pytest.skip("hypothesis is not installed (pip install .[test])")
    skip_if_unavailable(name)

    # too_slow: each example maps memory and, in the guest, runs under TCG.
    @hypothesis.settings(max_examples=40, deadline=None, database=None,
                         suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(ops=st.lists(_op, max_size=25))
    def run(ops: list[tuple[Any, ...]]) -> None:
        r = Region(NPAGES_MODEL)
        try:
            a = Attached(name, r)
            try:
                dirty: set[int] = set()
                for op in ops:
                    if op[0] == "write":
                        r.write(op[1])
                        dirty.add(op[1])
                    elif op[0] == "scan":
                        _, first, npages, cap, reset = op
                        npages = min(npages, NPAGES_MODEL - first)
                        got = a.scan(first, npages, cap=cap, reset=reset)
                        want = sorted(p for p in dirty if first <= p < first + npages)[:cap]
                        assert got == [p - first for p in want], op
                        if reset:
                            dirty -= set(want)
                    else:
                        _, first, npages = op
                        npages = min(npages, NPAGES_MODEL - first)
                        a.t.reset(r.addr + first * PS, npages * PS)
                        dirty -= set(range(first, first + npages))
                assert a.scan() == sorted(dirty)
            finally:
                a.t.detach()
        finally:
            r.close()

    run()
