"""Polling: what a 60 Hz poll of a clean 1 GiB heap costs, per backend.

A populated 1 GiB private mapping (256 MiB in the TCG guest, whose RAM is
small; the summary says which), watched and then left alone; every round is
one ``dirty_into(out, reset=True)`` that finds nothing.  pytest-benchmark
times the wall clock; the CPU time of the polling thread
(``time.thread_time_ns``: the work done, not the time spent waiting for a
busy core) goes into extra_info, and the summary gives
``cpu per poll x 60 / s`` as the share of one core (target: under 2 %).
"""

from __future__ import annotations

import ctypes
import mmap
import statistics
import time
from array import array
from typing import Any

import pytest
from conftest import GUEST, available, smoke

import memwatch

MIB = 1 << 20
SIZE = (256 if GUEST else 1024) * MIB


@pytest.mark.parametrize("backend", available())
def test_poll_clean(benchmark: Any, request: pytest.FixtureRequest, backend: str) -> None:
    size = 4 * MIB if smoke(request.config) else SIZE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(m)), 0, size)
    # Room for far more than a clean poll finds; softdirty refuses to reset
    # with a buffer that could fill before the end (it resets the process).
    out = array("Q", bytes(8 * (size // mmap.PAGESIZE if backend == "softdirty" else 4096)))
    cpu: list[int] = []
    try:
        with memwatch.Watch(m, backend=backend) as w:
            into, tt = w.dirty_into, time.thread_time_ns

            def poll() -> int:
                t0 = tt()
                n = into(out, reset=True)
                cpu.append(tt() - t0)
                return n

            rounds = 1 if smoke(request.config) else (20 if GUEST else 60)
            n = benchmark.pedantic(poll, rounds=rounds, iterations=1, warmup_rounds=1)
            assert n == 0
    finally:
        m.close()
    benchmark.group = "poll"
    benchmark.extra_info.update(kind="poll", backend=backend, mib=size // MIB,
                                cpu_median_s=statistics.median(cpu) * 1e-9)
