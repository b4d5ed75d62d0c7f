"""Binding-level tests of memwatch._memwatch, one mechanism at a time.

These talk to the C++ trackers directly (no facade): semantics, concurrency,
kernel writes, argument validation, probes, the raw system call.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from binding_support import (
    ALL,
    HOST_FAULT,
    MECHS,
    PARTIAL,
    PS,
    Attached,
    Region,
    mechs,
    out_buf,
    pages,
    params,
    skip_if_unavailable,
    uffd_kernel_mode,
)

from memwatch import _memwatch as mw
from memwatch import _probes

# ------------------------------------------------------------ core semantics


@mechs(ALL)
def test_capabilities(mech: Attached) -> None:
    t = mech.t
    assert t.name == mech.name.replace("_nrr", "")
    assert t.page_size == PS == os.sysconf("SC_PAGE_SIZE")
    for cap in ("remote", "partial_reset", "atomic", "sees_kernel_writes", "false_positives"):
        assert isinstance(getattr(type(t), cap), bool)
    assert t.attached and t.start == mech.region.addr and t.length == mech.region.size


def test_capability_table() -> None:
    expect: dict[Any, tuple[bool, ...]] = {
        mw.SyscallTracker: (True, True, True, True, True),
        mw.PagemapScanTracker: (False, True, True, True, True),
        mw.SoftDirtyTracker: (True, False, False, True, True),
        mw.UffdTracker: (False, True, True, True, True),
        mw.MprotectTracker: (False, True, True, False, True),
    }
    for cls, caps in expect.items():
        got = (cls.remote, cls.partial_reset, cls.atomic, cls.sees_kernel_writes,
               cls.false_positives)
        assert got == caps, cls


@mechs(ALL)
def test_new_watch_is_clean(mech: Attached) -> None:
    assert mech.scan() == []


@mechs(ALL)
def test_exact_pages_and_reset(mech: Attached) -> None:
    written = [0, 3, 7, 63, 64, 100, 127]
    for p in written:
        mech.region.write(p, offset=p % PS)
    assert mech.scan() == written
    assert mech.scan() == written  # a plain scan resets nothing
    assert mech.scan(reset=True) == written
    assert mech.scan() == []
    mech.region.write(5)
    mech.region.write(64)
    assert mech.scan(reset=True) == [5, 64]
    assert mech.scan(reset=True) == []


@mechs(ALL)
def test_reads_are_not_writes(mech: Attached) -> None:
    for p in range(0, mech.region.npages, 3):
        mech.region.read(p)
    assert mech.scan() == []


@mechs(ALL)
def test_reset_method(mech: Attached) -> None:
    for p in (1, 2, 90):
        mech.region.write(p)
    mech.t.reset(mech.region.addr, mech.region.size)
    assert mech.scan() == []
    mech.region.write(2)
    assert mech.scan() == [2]


@mechs(PARTIAL)
def test_subrange_offsets_and_partial_reset(mech: Attached) -> None:
    for p in (1, 10, 11, 20, 120):
        mech.region.write(p)
    # Offsets are relative to the start of the scanned sub-range.
    assert mech.scan(first=10, npages=11) == [0, 1, 10]
    assert mech.scan(first=10, npages=2, reset=True) == [0, 1]
    assert mech.scan() == [1, 20, 120]  # outside [10, 12) untouched
    mech.t.reset(mech.region.addr + 20 * PS, PS)
    assert mech.scan() == [1, 120]


@mechs(PARTIAL)
def test_short_buffer_stops_and_leaves_rest(mech: Attached) -> None:
    written = [2, 4, 6, 8, 70, 71]
    for p in written:
        mech.region.write(p)
    assert mech.scan(cap=2, reset=True) == [2, 4]
    # The pages not reported are neither lost nor reset.
    assert mech.scan() == [6, 8, 70, 71]
    assert mech.scan(cap=3, reset=True) == [6, 8, 70]
    assert mech.scan(cap=1) == [71]
    assert mech.scan(reset=True) == [71]
    assert mech.scan() == []


@mechs(ALL)
def test_zero_capacity_and_zero_length(mech: Attached) -> None:
    mech.region.write(0)
    assert mech.t.scan(mech.region.addr, mech.region.size, out_buf(0), True) == 0
    assert mech.t.scan(mech.region.addr, 0, out_buf(4), True) == 0
    assert mech.scan() == [0]


@mechs(ALL)
def test_length_rounded_up(mech: Attached) -> None:
    mech.region.write(1)
    out = out_buf(4)
    assert mech.t.scan(mech.region.addr + PS, 1, out, False) == 1 and out[0] == 0


@pytest.mark.parametrize("name", params(ALL))
def test_large_range_every_other_page(name: str) -> None:
    """More dirty regions than one kernel call returns (pagemap_scan's region
    array, softdirty's pread chunk): the loop must resume from walk_end."""
    skip_if_unavailable(name)
    r = Region(10000)
    try:
        a = Attached(name, r)
        try:
            written = list(range(1, r.npages, 2))
            for p in written:
                r.write(p)
            assert a.scan(cap=r.npages) == written
            assert a.scan(cap=r.npages, reset=True) == written
            assert a.scan(cap=r.npages) == []
        finally:
            a.t.detach()
    finally:
        r.close()


# Soft-dirty is tracked per page-table entry, and a transparent huge page is
# one entry: one write marks all of its base pages (a documented false
# positive).  The write-protect mechanisms split the huge page on the first
# write fault and stay exact.
THP_FP = {"syscall", "syscall_nrr", "softdirty"}
HPAGE = 2 * 1024 * 1024 // PS


@pytest.mark.parametrize("name", params(ALL))
def test_thp_region(name: str) -> None:
    """A huge-page-backed range: never a false negative; exact, except that a
    soft-dirty mechanism may report the whole huge page around a write."""
    skip_if_unavailable(name)
    r = Region(2048, thp=True)
    try:
        # Populate first so that huge pages can be used, then watch.
        for p in range(r.npages):
            r.write(p)
        a = Attached(name, r)
        try:
            assert a.scan(cap=r.npages) == []  # attach resets, huge pages too
            a.t.reset(r.addr, r.size)
            written = [5, 600, 1500, 2047]
            for p in written:
                r.write(p)
            got = a.scan(cap=r.npages, reset=True)
            assert set(written) <= set(got)
            if name in THP_FP:
                # Region starts one page after a mapping start: compare by
                # the huge page each address falls in.
                def hp(p: int) -> int:
                    return (r.addr + p * PS) // (HPAGE * PS)
                assert {hp(p) for p in got} == {hp(p) for p in written}, got
            else:
                assert got == written
            if type(a.t).partial_reset:
                # Only the first reported page reset: the rest stay reported.
                for p in written:
                    r.write(p)
                first = a.scan(cap=1, reset=True)
                if name in THP_FP:
                    assert len(first) == 1 and first[0] <= 5 and hp(first[0]) == hp(5), first
                else:
                    assert first == [5]
                assert set(written[1:]) <= set(a.scan(cap=r.npages))
        finally:
            a.t.detach()
    finally:
        r.close()


# ---------------------------------------------------------- concurrency


@mechs(ALL)
def test_writes_from_other_threads(mech: Attached) -> None:
    """Writers hammer their pages while the main thread scans with reset:
    nothing written is lost, the union of all reports covers every page."""
    if mech.name == "softdirty":
        pytest.skip("softdirty reset is not atomic (atomic=False): writes can be lost by design")
    region = mech.region
    nthreads, per = 4, 16
    stop = threading.Event()

    def writer(k: int) -> None:
        mine = [k * per + i for i in range(per)]
        while not stop.is_set():
            for p in mine:
                region.write(p)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(nthreads)]
    for th in threads:
        th.start()
    seen: set[int] = set()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        seen.update(mech.scan(reset=True))
    stop.set()
    for th in threads:
        th.join()
    seen.update(mech.scan(reset=True))
    assert seen == set(range(nthreads * per))
    # After the writers stopped and a reset scan, every new write shows up.
    assert mech.scan() == []
    for p in (0, per * nthreads - 1):
        region.write(p)
    assert mech.scan() == [0, per * nthreads - 1]


@mechs(PARTIAL)
def test_no_lost_write_after_reset_scan(mech: Attached) -> None:
    """A write that happens after scan(reset=True) returned is always
    reported by the next scan (the race the reset ordering must survive)."""
    region = mech.region
    go = threading.Event()
    done = threading.Event()
    rounds = 300

    def writer() -> None:
        for _ in range(rounds):
            go.wait()
            go.clear()
            region.write(9)
            region.write(40)
            done.set()

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(rounds):
            mech.scan(reset=True)
            go.set()
            assert done.wait(10)
            done.clear()
            got = mech.scan()
            assert 9 in got and 40 in got, got
    finally:
        go.set()
        th.join(10)


@mechs(ALL)
def test_concurrent_detach_while_scanning(mech: Attached) -> None:
    """Detaching while other threads scan gives ValueError there, never a crash."""
    region = mech.region
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def scanner() -> None:
        out = out_buf(region.npages)
        started.wait()
        try:
            while True:
                region.write(3)
                mech.t.scan(region.addr, region.size, out, mech.name != "softdirty")
        except ValueError as e:
            if "detached" not in str(e):
                errors.append(e)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=scanner) for _ in range(2)]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(0.05)
    mech.t.detach()
    for th in threads:
        th.join(10)
        assert not th.is_alive()
    assert errors == []


# ------------------------------------------------------------ kernel writes


def _readv_into(region: Region, page: int) -> int:
    r, w = os.pipe()
    try:
        os.write(w, b"x" * 100)
        os.close(w)
        w = -1
        return os.readv(r, [region.view(page)[:100]])
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@mechs([n for n in ALL if n != "mprotect"])
def test_kernel_writes_are_seen(mech: Attached) -> None:
    """read(2) into the watched range: the kernel writes the page."""
    if mech.name == "uffd" and not uffd_kernel_mode():
        pytest.skip("uffd fell back to UFFD_USER_MODE_ONLY: kernel writes fail with EFAULT")
    # uffd: the sync handler resolves the kernel's copy_to_user fault; the
    # read() blocks until it has and then completes.
    assert _readv_into(mech.region, 5) == 100
    assert mech.region.read(5) == ord("x")
    assert mech.scan() == [5]



@mechs(["mprotect"])
def test_mprotect_kernel_writes_fail_with_efault(mech: Attached) -> None:
    """Documented limit (sees_kernel_writes=False): the kernel gets EFAULT."""
    assert type(mech.t).sees_kernel_writes is False
    with pytest.raises(OSError) as ei:
        _readv_into(mech.region, 5)
    assert ei.value.errno == errno.EFAULT
    # Once user space has written the page it is writable: read() works, but
    # that kernel write is still not what made the page dirty.
    mech.region.write(5)
    assert _readv_into(mech.region, 5) == 100
    assert mech.scan(reset=True) == [5]
    assert mech.scan() == []


# ------------------------------------------------------ argument validation

BAD_BUFFERS: list[tuple[str, Callable[[], Any]]] = [
    ("bytes", lambda: bytes(64)),
    ("bytearray-itemsize-1", lambda: bytearray(64)),
    ("array-I", lambda: array.array("I", [0] * 8)),
    ("array-d", lambda: array.array("d", [0.0] * 8)),
    ("readonly-memoryview", lambda: memoryview(array.array("Q", [0] * 8)).toreadonly()),
    ("strided", lambda: memoryview(array.array("Q", [0] * 8))[::2]),
    ("list", lambda: [0] * 8),
    ("int", lambda: 7),
    ("str", lambda: "abc"),
]


@mechs(ALL)
@pytest.mark.parametrize("kind,make", BAD_BUFFERS, ids=[k for k, _ in BAD_BUFFERS])
def test_bad_buffer_type_error(mech: Attached, kind: str, make: Callable[[], Any]) -> None:
    with pytest.raises(TypeError) as ei:
        mech.t.scan(mech.region.addr, mech.region.size, make(), False)
    msg = str(ei.value)
    assert "out" in msg and len(msg) > 20


def test_bad_buffer_messages_say_what_is_wrong(region: Region) -> None:
    t = mw.MprotectTracker()
    t.attach(region.addr, region.size)
    try:
        def msg(obj: Any) -> str:
            with pytest.raises(TypeError) as ei:
                t.scan(region.addr, region.size, obj, False)
            return str(ei.value)

        assert "writable" in msg(bytes(64))
        assert "8-byte" in msg(bytearray(64)) and "itemsize 1" in msg(bytearray(64))
        assert "C-contiguous" in msg(memoryview(array.array("Q", [0] * 8))[::2])
        assert "list" in msg([0])
    finally:
        t.detach()


GOOD_BUFFERS: list[tuple[str, Callable[[int], Any]]] = [
    ("array-Q", lambda n: array.array("Q", [0] * n)),
    ("array-q", lambda n: array.array("q", [0] * n)),
    ("array-L", lambda n: array.array("L", [0] * n)),
    ("memoryview-cast", lambda n: memoryview(bytearray(8 * n)).cast("Q")),
    ("ctypes-uint64", lambda n: (ctypes.c_uint64 * n)()),
]


@mechs(["pagemap_scan", "syscall"])
@pytest.mark.parametrize("kind,make", GOOD_BUFFERS, ids=[k for k, _ in GOOD_BUFFERS])
def test_good_buffers(mech: Attached, kind: str, make: Callable[[int], Any]) -> None:
    mech.region.write(4)
    buf = make(4)
    assert mech.t.scan(mech.region.addr, mech.region.size, buf, False) == 1
    assert memoryview(buf).cast("B").cast("Q")[0] == 4 * PS


@mechs(["pagemap_scan"])
def test_numpy_buffers(mech: Attached) -> None:
    np = pytest.importorskip("numpy")
    mech.region.write(4)
    for dt in (np.uint64, np.int64):
        a = np.zeros(4, dtype=dt)
        assert mech.t.scan(mech.region.addr, mech.region.size, a, False) == 1
        assert int(a[0]) == 4 * PS
    two_d = np.zeros((2, 3), dtype=np.uint64)  # C-contiguous: used flat
    assert mech.t.scan(mech.region.addr, mech.region.size, two_d, False) == 1
    with pytest.raises(TypeError):
        mech.t.scan(mech.region.addr, mech.region.size, np.zeros(8, np.uint64)[::2], False)
    with pytest.raises(TypeError):
        mech.t.scan(mech.region.addr, mech.region.size, np.zeros((3, 2), np.uint64).T, False)
    with pytest.raises(TypeError):
        mech.t.scan(mech.region.addr, mech.region.size, np.zeros(4, np.float64), False)
    with pytest.raises(TypeError):
        mech.t.scan(mech.region.addr, mech.region.size, np.zeros(4, np.uint32), False)


@mechs(ALL)
def test_out_of_range_value_error(mech: Attached) -> None:
    a, size = mech.region.addr, mech.region.size
    out = out_buf(8)
    bad = [
        (a - PS, PS),  # before
        (a + size, PS),  # after
        (a, size + PS),  # runs past the end
        (a + 1, PS),  # unaligned
        (-PS, PS),  # negative
        (a, -1),
    ]
    for start, length in bad:
        with pytest.raises(ValueError):
            mech.t.scan(start, length, out, False)
        with pytest.raises(ValueError):
            mech.t.reset(start, length)
    # Boundary cases that are inside.
    assert mech.t.scan(a + size, 0, out, False) == 0
    assert mech.t.scan(a + size - PS, PS, out, False) == 0


@mechs(ALL)
def test_detached_value_error(mech: Attached) -> None:
    t = mech.t
    t.detach()
    assert not t.attached
    t.detach()  # idempotent
    with pytest.raises(ValueError, match="tracker is detached"):
        t.scan(mech.region.addr, mech.region.size, out_buf(4), False)
    with pytest.raises(ValueError, match="tracker is detached"):
        t.reset(mech.region.addr, mech.region.size)
    # Re-attach works and starts clean.
    mech.region.write(2)
    t.attach(mech.region.addr, mech.region.size)
    assert mech.scan() == []
    mech.region.write(2)
    assert mech.scan() == [2]


@pytest.mark.parametrize("name", params(ALL))
def test_never_attached_and_double_attach(name: str, region: Region) -> None:
    skip_if_unavailable(name)
    t = MECHS[name][0]()
    with pytest.raises(ValueError, match="tracker is detached"):
        t.scan(region.addr, region.size, out_buf(4), False)
    with pytest.raises(ValueError):
        t.attach(region.addr + 1, PS)
    with pytest.raises(ValueError):
        t.attach(region.addr, 0)
    t.attach(region.addr, region.size)
    try:
        with pytest.raises(ValueError, match="already attached"):
            t.attach(region.addr, region.size)
    finally:
        t.detach()


@mechs(HOST_FAULT + ["pagemap_scan"])
def test_detach_undoes_protection(mech: Attached) -> None:
    mech.t.detach()
    # Writes and kernel writes work normally again (no signal, no block).
    mech.region.write(1)
    assert _readv_into(mech.region, 2) == 100


@pytest.mark.parametrize("name", params(HOST_FAULT + ["pagemap_scan"]))
def test_dropped_tracker_detaches(name: str, region: Region) -> None:
    skip_if_unavailable(name)
    t = MECHS[name][0]()
    t.attach(region.addr, region.size)
    del t
    region.write(7)
    assert _readv_into(region, 8) == 100


def test_two_trackers_same_range_pagemap_scan(region: Region) -> None:
    skip_if_unavailable("pagemap_scan")
    a = mw.PagemapScanTracker()
    a.attach(region.addr, region.size)
    try:
        b = mw.PagemapScanTracker()
        with pytest.raises(OSError) as ei:
            b.attach(region.addr, region.size)
        assert ei.value.errno == errno.EBUSY
    finally:
        a.detach()


def test_mprotect_two_ranges(region: Region) -> None:
    r2 = Region(8)
    a, b = mw.MprotectTracker(), mw.MprotectTracker()
    try:
        a.attach(region.addr, region.size)
        b.attach(r2.addr, r2.size)
        region.write(3)
        r2.write(5)
        out = out_buf(8)
        assert pages(out, a.scan(region.addr, region.size, out, True)) == [3]
        assert pages(out, b.scan(r2.addr, r2.size, out, True)) == [5]
        a.detach()
        r2.write(6)  # the handler stays installed for b
        assert pages(out, b.scan(r2.addr, r2.size, out, False)) == [6]
    finally:
        a.detach()
        b.detach()
        r2.close()


MPROTECT_CRASH = textwrap.dedent(
    """
    import ctypes, mmap, sys
    from memwatch import _memwatch as mw
    m = mmap.mmap(-1, 4 * mw.PAGE_SIZE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t = mw.MprotectTracker()
    t.attach(addr, 4 * mw.PAGE_SIZE)
    m[0] = 1                      # ours: handled
    sys.stdout.write("handled\\n"); sys.stdout.flush()
    if sys.argv[1] == "detach":
        t.detach()
    ctypes.string_at(8)           # not ours: must crash normally
    print("survived")
    """
)


@pytest.mark.parametrize("faulthandler_on", [False, True])
@pytest.mark.parametrize("detach", ["keep", "detach"])
def test_mprotect_foreign_segfault_still_crashes(faulthandler_on: bool, detach: str) -> None:
    """Faults outside watched ranges go to the previous handler (faulthandler
    reports them) or, with SIG_DFL before us, kill the process normally."""
    args = [sys.executable]
    if faulthandler_on:
        args += ["-X", "faulthandler"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run(args + ["-c", MPROTECT_CRASH, detach], capture_output=True, text=True, check=False,
                       timeout=60, env=env, cwd="/")
    assert p.stdout.startswith("handled")
    assert "survived" not in p.stdout
    assert p.returncode == -11, (p.returncode, p.stderr)
    if faulthandler_on:
        assert "Segmentation fault" in p.stderr


# ------------------------------------------------------------------- probes

PROBES = {
    "syscall": mw.syscall_available,
    "pagemap_scan": mw.pagemap_scan_available,
    "softdirty": mw.softdirty_available,
    "uffd": mw.uffd_available,
    "mprotect": mw.mprotect_available,
}


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_shape_and_reason(name: str) -> None:
    """C++ reports (ok, code, errno); the words come from memwatch._probes."""
    ok, code, err = PROBES[name]()
    assert isinstance(ok, bool) and isinstance(code, str) and isinstance(err, int)
    if ok:
        assert (code, err) == ("", 0)
    else:
        assert re.fullmatch(r"[a-z_]+", code), code
        reason = _probes.explain(name, code, err)
        assert len(reason) > 20, reason
        assert "probe failed" not in reason or err, reason
    assert PROBES[name]() == (ok, code, err)  # no state left behind that changes the answer


def test_probe_reasons_are_words_for_users() -> None:
    """Every reason a probe can produce is a sentence for the user of the
    package: no CI-harness advice (QEMU, ci/), no raw code."""
    codes = {
        "syscall": ["enosys", "no_soft_dirty", "failed"],
        "softdirty": ["no_clear_refs", "no_soft_dirty", "failed"],
        "pagemap_scan": ["no_pagemap", "uffd_open", "no_wp_async", "no_wp_unpopulated",
                         "no_pagemap_scan", "scan_mismatch", "failed"],
        "uffd": ["uffd_open", "no_wp", "no_wp_unpopulated"],
        "mprotect": ["failed"],
    }
    for name, cs in codes.items():
        for code in cs:
            for err in (0, errno.EPERM, errno.ENOSYS, errno.EINVAL):
                text = _probes.explain(name, code, err)
                assert "QEMU" not in text and "guest" not in text and "ci/" not in text, text
                assert code not in text.split(), text
    assert "vm.unprivileged_userfaultfd" in _probes.explain("uffd", "uffd_open", errno.EPERM)


def _pagemap_bit55_after_write() -> bool:
    """Independent oracle for soft-dirty support (never trust clear_refs)."""
    r = Region(1)
    try:
        r.write(0)
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(r.addr // PS * 8)
            entry = int.from_bytes(f.read(8), "little")
        return bool(entry >> 55 & 1)
    finally:
        r.close()


def test_softdirty_probe_matches_pagemap_oracle() -> None:
    ok, reason = _probes.run("softdirty", mw.softdirty_available)
    assert ok == _pagemap_bit55_after_write(), reason
    if not ok:
        assert "CONFIG_MEM_SOFT_DIRTY" in reason


def test_syscall_probe_matches_raw_call() -> None:
    ok, reason = _probes.run("syscall", mw.syscall_available)
    r = Region(1)
    try:
        if ok:
            assert mw.process_memwatch(mw.PIDFD_SELF, r.addr, PS, mw.MEMWATCH_SD_GET,
                                       out_buf(1)) in (0, 1)
        else:
            with pytest.raises(OSError) as ei:
                mw.process_memwatch(mw.PIDFD_SELF, r.addr, PS, mw.MEMWATCH_SD_GET, out_buf(1))
            if ei.value.errno == errno.ENOSYS:
                assert "not in this kernel" in reason
            elif ei.value.errno == errno.EOPNOTSUPP:
                assert "CONFIG_MEM_SOFT_DIRTY" in reason
    finally:
        r.close()


def test_host_expectations() -> None:
    """On the host (not the guest): the kernel mechanisms of 6.7+ work as root,
    the patched-kernel ones are reported unavailable with reasons."""
    if os.environ.get("MEMWATCH_IN_GUEST") == "1":
        pytest.skip("host-only expectations")
    if os.uname().release.startswith("6.12"):
        pytest.skip("looks like the guest kernel")
    assert mw.mprotect_available() == (True, "", 0)
    if os.geteuid() == 0:
        assert mw.pagemap_scan_available() == (True, "", 0)
        assert mw.uffd_available() == (True, "", 0)


def test_constants() -> None:
    assert mw.PIDFD_SELF == -10000
    assert mw.NR_PROCESS_MEMWATCH == 500
    assert mw.PAGE_SIZE == os.sysconf("SC_PAGE_SIZE")
    assert (mw.MEMWATCH_SD_GET, mw.MEMWATCH_SD_CLEAR, mw.MEMWATCH_SD_NO_REUSED_REGIONS) == (
        1,
        2,
        4,
    )


def test_raw_binding_validates_vec() -> None:
    r = Region(1)
    try:
        with pytest.raises(TypeError):
            mw.process_memwatch(mw.PIDFD_SELF, r.addr, PS, 1, bytearray(8))
        with pytest.raises(TypeError):
            mw.process_memwatch(mw.PIDFD_SELF, r.addr, PS, 1, b"x" * 8)
    finally:
        r.close()


# ----------------------------------------- process_memwatch raw ABI (guest)

guest_syscall = pytest.mark.guest


def _need_syscall() -> None:
    skip_if_unavailable("syscall")


@guest_syscall
def test_raw_syscall_abi() -> None:
    _need_syscall()
    r = Region(10)
    try:
        G, C, N = mw.MEMWATCH_SD_GET, mw.MEMWATCH_SD_CLEAR, mw.MEMWATCH_SD_NO_REUSED_REGIONS
        vec = out_buf(10)
        call = mw.process_memwatch

        def eno(*args: Any) -> int:
            with pytest.raises(OSError) as ei:
                call(*args)
            return ei.value.errno or 0

        # New region: every page dirty (VM_SOFTDIRTY), but not with NO_REUSED_REGIONS.
        assert call(mw.PIDFD_SELF, r.addr, r.size, G, vec) == 10
        assert list(vec) == [i * PS for i in range(10)]
        assert call(mw.PIDFD_SELF, r.addr, r.size, C, None) == 0
        assert call(mw.PIDFD_SELF, r.addr, r.size, G, vec) == 0
        r.write(4)
        assert call(mw.PIDFD_SELF, r.addr, r.size, G | C | N, vec) == 1 and vec[0] == 4 * PS
        assert call(mw.PIDFD_SELF, r.addr, 0, G, vec) == 0
        assert eno(mw.PIDFD_SELF, r.addr, r.size, 0, vec) == errno.EINVAL
        assert eno(mw.PIDFD_SELF, r.addr, r.size, N, vec) == errno.EINVAL
        assert eno(mw.PIDFD_SELF, r.addr, r.size, 8 | G, vec) == errno.EINVAL
        assert eno(mw.PIDFD_SELF, r.addr + 1, r.size, G, vec) == errno.EINVAL
        assert eno(mw.PIDFD_SELF, r.addr, r.size, G, None) == errno.EINVAL
        assert eno(mw.PIDFD_SELF, r.addr, r.size, C, vec) == errno.EINVAL
        fd = os.open("/dev/null", os.O_RDONLY)
        try:
            assert eno(fd, r.addr, r.size, G, vec) == errno.EBADF
        finally:
            os.close(fd)
    finally:
        r.close()


@pytest.mark.guest
def test_softdirty_reset_scan_needs_room() -> None:
    skip_if_unavailable("softdirty")
    r = Region(16)
    a = Attached("softdirty", r)
    try:
        for p in (1, 2, 3):
            r.write(p)
        with pytest.raises(ValueError, match="room"):
            a.scan(cap=2, reset=True)
        assert a.scan() == [1, 2, 3]  # nothing was cleared
        assert a.scan(cap=2) == [1, 2]  # a plain short scan is fine
        assert a.scan(cap=3, reset=True) == [1, 2, 3]
        assert a.scan() == []
    finally:
        a.t.detach()
        r.close()


@pytest.mark.guest
def test_syscall_no_reused_regions_new_pages_not_dirty() -> None:
    _need_syscall()
    r = Region(4)
    try:
        vec = out_buf(4)
        n = mw.process_memwatch(mw.PIDFD_SELF, r.addr, r.size,
                                mw.MEMWATCH_SD_GET | mw.MEMWATCH_SD_NO_REUSED_REGIONS, vec)
        assert n == 0
    finally:
        r.close()


@pytest.mark.guest
@pytest.mark.parametrize("name", params(["syscall", "softdirty"]))
def test_remote_child(name: str) -> None:
    """remote=True mechanisms watch another process (a child)."""
    skip_if_unavailable(name)
    code = textwrap.dedent(
        """
        import ctypes, mmap, sys
        m = mmap.mmap(-1, 8 * mmap.PAGESIZE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        print(addr, flush=True)
        for line in sys.stdin:
            if line.strip() == "q":
                break
            m[int(line) * mmap.PAGESIZE] = 1
            print("ok", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        addr = int(p.stdout.readline())
        pidfd = os.pidfd_open(p.pid)
        try:
            t = mw.SyscallTracker(pidfd) if name == "syscall" else mw.SoftDirtyTracker(p.pid)
            t.attach(addr, 8 * PS)
            out = out_buf(8)
            assert t.scan(addr, 8 * PS, out, False) == 0
            p.stdin.write("6\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "ok"
            n = t.scan(addr, 8 * PS, out, True)
            assert pages(out, n) == [6]
            t.detach()
        finally:
            os.close(pidfd)
    finally:
        p.stdin.write("q\n")
        p.stdin.flush()
        p.wait(30)
