"""uffd (and the allocator cases on every backend): no hang, no lost or late write.

Issue 7 items 2 and 4, the review's "uffd handler thread" gaps and the
newcomer report's W1, W4, W6, W7, H1.  Cases that hung before run in a
subprocess with a timeout.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
from array import array

import pytest
from hardening_support import describe, run_py
from support import IN_GUEST, skip_reason

import memwatch
from memwatch import _memwatch as mw

PS = mmap.PAGESIZE

needs_uffd = pytest.mark.skipif(
    skip_reason("uffd") is not None, reason=str(skip_reason("uffd"))
)
BITMAP_AND_SCAN = [
    pytest.param(b, marks=pytest.mark.skipif(skip_reason(b) is not None,
                                             reason=str(skip_reason(b))))
    for b in ("uffd", "mprotect", "pagemap_scan")
]


@pytest.mark.parametrize("backend", BITMAP_AND_SCAN)
@pytest.mark.parametrize("advice", ["MADV_DONTNEED", "MADV_FREE"])
def test_writes_after_allocator_gives_page_back_are_reported(backend: str, advice: str) -> None:
    # W1: zapping an anonymous page drops its uffd-wp state; uffd then never
    # reported later writes to it.  uffd now registers MISSING|WP and resolves
    # the missing fault itself.
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
    m[PS] = 7
    m[3 * PS] = 7
    with memwatch.Watch(m, backend=backend) as w:
        m.madvise(getattr(mmap, advice), PS, PS)
        m.madvise(getattr(mmap, advice), 3 * PS, PS)
        _ = m[3 * PS]                          # a read first: populated write-protected
        m[PS] = 9
        m[2 * PS] = 9
        got = w.dirty(reset=True)
        assert PS in got and 2 * PS in got     # pagemap_scan may add the zapped page 3
        m[PS] = 10
        m[3 * PS] = 10
        assert list(w.dirty()) == [PS, 3 * PS]
        assert m[PS] == 10 and m[3 * PS] == 10 and m[2 * PS] == 9
    m.close()


@needs_uffd
def test_untouched_pages_and_reads_are_tracked_exactly() -> None:
    # Missing-fault resolution: a read maps a write-protected zero page (not
    # reported), a write to a never-touched page is reported once.
    m = mmap.mmap(-1, 8 * PS, flags=mmap.MAP_PRIVATE)
    t = mw.UffdTracker()
    assert t.missing_mode is True
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t.attach(base, 8 * PS)
    try:
        out = array("Q", bytes(64))
        assert m[0] == 0 and m[5 * PS] == 0            # reads
        assert t.scan(base, 8 * PS, out, True) == 0
        m[5 * PS] = 1
        m[7 * PS] = 1
        n = t.scan(base, 8 * PS, out, True)
        assert list(out[:n]) == [5 * PS, 7 * PS]
        assert t.scan(base, 8 * PS, out, True) == 0
        m[0] = 3
        n = t.scan(base, 8 * PS, out, False)
        assert list(out[:n]) == [0]
    finally:
        t.detach()


@pytest.mark.parametrize("script", [
    # H1: pthread_create allocated from the heap page the watched buffer
    # shares, after the range was write-protected: Watch() hung forever.
    """
    import memwatch
    buf = bytearray(8 * 4096)
    w = memwatch.Watch(buf, backend="uffd")
    buf[5000] = 1
    print("ok", (w.target_offset + 5000) // 4096 * 4096 in w.dirty())
    """,
    # The handler thread must not fault on its own state when the whole
    # [heap] is watched.
    """
    import memwatch
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
    w = memwatch.Watch(lo, hi - lo, backend="uffd")
    junk = [bytearray(1000) for _ in range(200)]
    print("ok", len(w.dirty(reset=True)) > 0)
    w.close()
    """,
], ids=["heap_bytearray", "whole_heap"])
@needs_uffd
def test_watch_on_heap_never_hangs(script: str) -> None:
    r = run_py(script, timeout=30)
    assert r.returncode == 0 and "ok True" in r.stdout, describe(r)


@needs_uffd
def test_completed_write_is_in_the_next_report_under_signals() -> None:
    # W4: with a 1 ms SIGALRM, a blocked writer interrupted by a signal
    # retried as soon as the handler un-protected the page, before the bit
    # was set: the next dirty(reset=True) missed a completed write.
    r = run_py(
        """
        import mmap, signal, time, memwatch
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        m = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE)
        w = memwatch.Watch(m, backend="uffd")
        late = calls = 0
        t0 = time.time()
        while time.time() - t0 < 2:
            p = calls % 64
            m[p * 4096] = 1
            calls += 1
            if p * 4096 not in w.dirty(reset=True):
                late += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        print("late", late, "calls", calls)
        """,
        timeout=60,
    )
    assert r.returncode == 0 and "late 0 " in r.stdout, describe(r)


@needs_uffd
def test_tight_polling_reports_at_most_one_per_write() -> None:
    # W6: under one writer and one polling thread, uffd reported up to 4x more
    # pages than writes (a scan re-protected between the handler's un-protect
    # and its bit-set, so the same write faulted twice).  Issue 10: on the 6.1
    # guest once 216571 more (a scan blocked on the handler lock re-protected
    # before the handler's separate wake; now the wake is in the un-protect).
    # Left (src/uffd.cpp header): a scan between the wake and the writer's
    # retry, a window as wide as the writer's wake-up latency.
    r = run_py(
        """
        import array, ctypes, mmap, threading, time, memwatch
        m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        w = memwatch.Watch(m, backend="uffd")
        N = 20000
        done = False
        reports = 0
        def poll():
            global reports
            out = array.array("Q", [0])
            while not done:
                reports += w.dirty_into(out, reset=True)
        t = threading.Thread(target=poll); t.start()
        for i in range(N):
            ctypes.memset(addr, i & 0xff, 1)
        done = True; t.join()
        reports += len(w.dirty(reset=True))
        print("excess", max(0, reports - N))
        """,
        timeout=120,
    )
    assert r.returncode == 0 and "excess" in r.stdout, describe(r)
    if IN_GUEST and "excess 0" not in r.stdout:
        # Measured, not assumed: the whole 6.1 guest stage of CI gave excess
        # 18926 for 20000 writes after the fix above (0 alone, 13 runs): a
        # cross-vCPU wake-up under TCG costs 4-8 ms (uffd_wp_retry.c
        # pingpong), so the poller re-protects before the woken writer runs.
        # A documented false positive of sync uffd-wp (README "What a Watch
        # sees"); on hardware the window is microseconds and this is strict.
        pytest.xfail(f"TCG guest, woken writer late: {r.stdout.strip()}")
    assert "excess 0" in r.stdout, describe(r)


@needs_uffd
def test_failed_reprotect_keeps_reported_pages_dirty() -> None:
    # A UFFDIO_WRITEPROTECT failing after the bits were taken used to lose the
    # reported writes (the scan raised, the bits were already cleared).
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t = mw.UffdTracker()
    t.attach(base, 4 * PS)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    try:
        m[0] = 1
        m[2 * PS] = 1
        m[3 * PS] = 1
        assert libc.munmap(base + 2 * PS, 2 * PS) == 0
        out = array("Q", bytes(8 * 4))
        with pytest.raises(OSError):
            t.scan(base, 4 * PS, out, True)
        assert libc.mmap(base + 2 * PS, 2 * PS, 3, 0x32, -1, 0) == base + 2 * PS
        n = t.scan(base, 4 * PS, out, False)
        assert list(out[:n]) == [0, 2 * PS, 3 * PS]
    finally:
        t.detach()


@pytest.mark.parametrize("cls", ["UffdTracker", "MprotectTracker"])
def test_terabyte_sparse_range_costs_nothing(cls: str) -> None:
    # Issue 7 item 7 for the bitmap backends: the bitmap is address space
    # only (MAP_NORESERVE, two levels), so attach/scan/reset of a 1 TiB
    # reservation with a few pages written allocate nothing per page.
    name = "uffd" if cls == "UffdTracker" else "mprotect"
    if skip_reason(name) is not None:
        pytest.skip(str(skip_reason(name)))
    r = run_py(
        f"""
        import ctypes, time
        from array import array
        from memwatch import _memwatch as mw
        libc = ctypes.CDLL(None)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        def status(k):
            return int([l for l in open("/proc/self/status") if l.startswith(k)][0].split()[1])
        L = 1 << 40
        a = libc.mmap(None, L, 3, 0x22 | 0x4000, -1, 0)   # MAP_NORESERVE
        rss0, pte0 = status("VmRSS:"), status("VmPTE:")
        t = mw.{cls}()
        t.attach(a, L)
        for off in (4096 * 12345, L // 2, L - 4096):
            ctypes.memset(a + off, 1, 1)
        out = array("Q", bytes(64))
        n = t.scan(a, L, out, True)
        print("got", list(out[:n]))
        print("again", t.scan(a, L, out, True))
        t.reset(a, L)
        print("grew", status("VmRSS:") - rss0 < 8192, status("VmPTE:") - pte0 < 1024)
        t.detach()
        """,
        timeout=60,
    )
    L = 1 << 40
    assert r.returncode == 0, describe(r)
    assert f"got {[4096 * 12345, L // 2, L - 4096]}" in r.stdout, describe(r)
    assert "again 0" in r.stdout and "grew True True" in r.stdout, describe(r)


@needs_uffd
def test_user_mode_only_is_reported_honestly() -> None:
    # W7: without CAP_SYS_PTRACE (vm.unprivileged_userfaultfd=0) the fd is
    # UFFD_USER_MODE_ONLY and kernel writes fail with EFAULT; the tracker and
    # the probe now say so.
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv(1) to drop CAP_SYS_PTRACE")
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        if f.read().strip() != "0":
            pytest.skip("vm.unprivileged_userfaultfd=1: every uffd here is kernel-mode")
    code = """
        from memwatch import _memwatch as mw
        t = mw.UffdTracker()
        print("umo", t.user_mode_only, t.sees_kernel_writes_now, mw.uffd_user_mode_only())
    """
    r = run_py(code, argv0=[setpriv, "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
    assert r.returncode == 0 and "umo True False True" in r.stdout, describe(r)
    r = run_py(code)
    assert r.returncode == 0 and "umo False True False" in r.stdout, describe(r)


@needs_uffd
def test_handler_failure_fails_loudly_instead_of_hanging_writers() -> None:
    # The handler thread used to return silently on POLLERR/POLLHUP, leaving
    # every later writer blocked forever.  A userfaultfd without O_NONBLOCK
    # polls as POLLERR: the handler now un-protects the range (the writer goes
    # on), counts it all as written, and scan() raises EIO.
    r = run_py(
        """
        import ctypes, errno, fcntl, mmap, os
        from array import array
        from memwatch import _memwatch as mw
        PS = mmap.PAGESIZE
        m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        t = mw.UffdTracker()
        t.attach(base, 4 * PS)
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "userfaultfd" in os.readlink(f"/proc/self/fd/{fd}"):
                    fl = fcntl.fcntl(int(fd), fcntl.F_GETFL)
                    fcntl.fcntl(int(fd), fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
            except OSError:
                pass
        m[PS] = 1
        print("write done", flush=True)
        try:
            t.scan(base, 4 * PS, array("Q", bytes(32)), True)
        except OSError as e:
            print("scan", e.errno == errno.EIO, "handler thread stopped" in str(e))
        t.detach()
        print("detached")
        """,
        timeout=30,
    )
    assert r.returncode == 0, describe(r)
    assert "write done" in r.stdout and "scan True True" in r.stdout, describe(r)
    assert "detached" in r.stdout, describe(r)


@pytest.mark.parametrize("backend", BITMAP_AND_SCAN)
def test_madv_dontneed_zeroing_counts_as_a_write(backend: str) -> None:
    # W9: MADV_DONTNEED replaces a page's contents with zeros.  pagemap_scan
    # reports the page; uffd now does too (UFFD_FEATURE_EVENT_REMOVE).
    # mprotect cannot: the kernel zaps a PROT_READ page without a fault -- a
    # limit of the mechanism, pinned here (the write that follows is seen).
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
    m[PS] = 7
    with memwatch.Watch(m, backend=backend) as w:
        m.madvise(mmap.MADV_DONTNEED, PS, PS)
        assert m[PS] == 0
        got = list(w.dirty(reset=True))
        if backend in ("mprotect", "pagemap_scan"):
            # pagemap_scan: the zap leaves pte_none, which populated-only
            # write-protection cannot tell from a hole (src/pagemap_scan.cpp,
            # protect_populated, limit (c)); pb 18:00, lead to confirm.
            assert got == []
        else:
            assert got == [PS]
        m[PS] = 1
        assert list(w.dirty()) == [PS]
    m.close()


@needs_uffd
def test_madvise_racing_with_detach_never_hangs() -> None:
    # With EVENT_REMOVE a madvise(MADV_DONTNEED) on the range waits until the
    # handler thread has read its event; detach() must answer every queued
    # event before the thread stops, or that madvise would wait forever.
    r = run_py(
        """
        import mmap, threading, memwatch
        PS = mmap.PAGESIZE
        m = mmap.mmap(-1, 64 * PS, flags=mmap.MAP_PRIVATE)
        stop = False
        def zapper():
            i = 0
            while not stop:
                m[(i % 64) * PS] = 1
                m.madvise(mmap.MADV_DONTNEED, (i % 64) * PS, PS)
                i += 1
        t = threading.Thread(target=zapper); t.start()
        for k in range(100):
            w = memwatch.Watch(m, backend="uffd")
            w.dirty(reset=True)
            w.close()
        stop = True; t.join()
        print("ok")
        """,
        timeout=120,
    )
    assert r.returncode == 0 and "ok" in r.stdout, describe(r)


@needs_uffd
def test_shmem_writes_through_the_watched_mapping_are_all_reported() -> None:
    # Issue 10: uffd takes a MAP_SHARED shmem/tmpfs mapping (uffd-wp on shmem,
    # Linux 5.19+, Debian's 6.1 included; a disk file system is refused).
    # Every write through the watched mapping is seen: to a mapped page, to a
    # page cached but never mapped here (UFFDIO_WRITEPROTECT puts a uffd-wp
    # marker in its empty PTE), to a hole (missing fault), after a read of a
    # hole (mapped write-protected), after MADV_DONTNEED (the zap keeps the
    # marker; the zap itself counts as a write), and again after a reset.  A
    # write through a second mapping of the same memfd is not (README: "Shared
    # memory written through another mapping is not reported, by any backend").
    fd = os.memfd_create("memwatch-shmem")
    try:
        os.ftruncate(fd, 8 * PS)
        m = mmap.mmap(fd, 8 * PS, flags=mmap.MAP_SHARED)
        m2 = mmap.mmap(fd, 8 * PS, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    try:
        m[0] = 1                      # page 0: mapped here
        m[4 * PS] = 1                 # page 4: mapped here, zapped below
        m2[PS] = 1                    # page 1: cached, never mapped here
        with memwatch.Watch(m, backend="uffd") as w:
            assert list(w.dirty(reset=True)) == []
            m.madvise(mmap.MADV_DONTNEED, 4 * PS, PS)
            # (The madvise returns once the handler has read the REMOVE
            # event, maybe before it recorded it: the scan waits for it.)
            assert list(w.dirty(reset=True)) == [4 * PS]
            m[0] = 2
            m[PS] = 2
            m[2 * PS] = 2             # a hole
            assert m[3 * PS] == 0     # a hole, read first
            m[3 * PS] = 2
            m[4 * PS] = 2             # zapped, page still cached
            m2[6 * PS] = 2            # another mapping: not seen (the limit)
            assert m[6 * PS] == 2
            assert list(w.dirty(reset=True)) == [p * PS for p in range(5)]
            for p in (0, 1, 2, 3, 4, 7):
                m[p * PS] = 3
            assert list(w.dirty(reset=True)) == [p * PS for p in (0, 1, 2, 3, 4, 7)]
            assert list(w.dirty(reset=True)) == []
    finally:
        m2.close()
        m.close()
