"""The public API, run against every available backend."""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import threading
from array import array

import pytest
from support import (
    ALL_BACKENDS,
    BACKENDS,
    GUEST_ONLY,
    PAGE,
    TIMEOUT_SCALE,
    address_of,
    anon,
    backend_params,
    mprotect,
    offsets,
    touch,
)

import memwatch

ANY = backend_params()
PARTIAL = backend_params(partial_reset=True)


# -- module-level names -----------------------------------------------------


def test_flags_values() -> None:
    assert int(memwatch.Flags.SD_GET) == 1
    assert int(memwatch.Flags.SD_CLEAR) == 2
    assert int(memwatch.Flags.SD_NO_REUSED_REGIONS) == 4
    both = memwatch.Flags.SD_GET | memwatch.Flags.SD_CLEAR
    assert isinstance(both, memwatch.Flags) and both == 3


def test_flags_are_the_extension_constants() -> None:
    from memwatch import _memwatch as mw

    assert memwatch.Flags.SD_GET == mw.MEMWATCH_SD_GET
    assert memwatch.Flags.SD_CLEAR == mw.MEMWATCH_SD_CLEAR
    assert memwatch.Flags.SD_NO_REUSED_REGIONS == mw.MEMWATCH_SD_NO_REUSED_REGIONS


def test_version_matches_metadata() -> None:
    import re
    from pathlib import Path

    assert re.fullmatch(r"\d+\.\d+\.\d+", memwatch.__version__)
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.exists():
        assert f'version = "{memwatch.__version__}"' in pyproject.read_text()


def test_no_test_only_module_in_the_extension() -> None:
    from memwatch import _memwatch as mw

    assert not hasattr(mw, "_uapi")
    # _C_API: the capsule of memwatch_capi.h (tests/test_capi.py), the one
    # private name, as numpy's _ARRAY_API.
    assert [n for n in dir(mw) if n.startswith("_") and not n.startswith("__")] == ["_C_API"]


@pytest.mark.slow  # kernel-independent: run on the host, not in the 6.1 guest
def test_stub_matches_runtime() -> None:
    """memwatch/_memwatch.pyi against the built extension (mypy.stubtest)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mypy.stubtest")
    root = Path(__file__).resolve().parents[1]
    import tempfile

    # mypy's sqlite cache (./.mypy_cache; stubtest ignores MYPY_CACHE_DIR) in
    # a private temporary cwd: in the QEMU guest the checkout is on 9p,
    # where sqlite fails with "disk I/O error".
    with tempfile.TemporaryDirectory() as cache:
        env = dict(
            os.environ,
            PYTHONPATH=str(Path(memwatch.__file__).resolve().parents[1]),
            MYPY_CACHE_DIR=cache,
        )
        proc = subprocess.run(
            [sys.executable, "-m", "mypy.stubtest", "memwatch._memwatch",
             "--allowlist", str(root / "tests" / "stubtest-allowlist.txt")],
            capture_output=True, text=True, env=env, timeout=300 * TIMEOUT_SCALE,
            check=False, cwd=cache,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pidfd_self_and_page_size() -> None:
    assert memwatch.PIDFD_SELF == -10000
    assert memwatch.PAGE_SIZE == PAGE


def test_backends_list() -> None:
    bs = memwatch.backends()
    assert [b.name for b in bs] == [
        "syscall", "pagemap_scan", "uffd", "softdirty", "mprotect"
    ]
    for b in bs:
        assert isinstance(b, memwatch.Backend)
        assert isinstance(b.reason, str)
        assert (b.reason == "") == b.available, b
        for cap in ("remote", "partial_reset", "atomic", "sees_kernel_writes",
                    "false_positives"):
            assert isinstance(getattr(b, cap), bool)
    caps = {b.name: b for b in bs}
    assert caps["syscall"].remote and caps["softdirty"].remote
    assert not caps["pagemap_scan"].remote
    assert caps["softdirty"].partial_reset  # through the registry's sweeps
    assert caps["pagemap_scan"].partial_reset
    assert not caps["mprotect"].sees_kernel_writes
    assert caps["pagemap_scan"].sees_kernel_writes
    assert caps["softdirty"].false_positives
    # mprotect works on every Linux machine.
    assert caps["mprotect"].available
    # A fresh list each time; the entries are immutable.
    assert memwatch.backends() == bs and memwatch.backends() is not bs
    with pytest.raises(AttributeError):
        bs[0].available = True  # type: ignore[misc]


def test_unsupported_error_is_oserror() -> None:
    err = memwatch.UnsupportedError(
        "CONFIG_MEM_SOFT_DIRTY is off", requirement="x", reasons={"a": "b"}
    )
    assert isinstance(err, OSError)
    assert err.errno == errno.EOPNOTSUPP
    assert str(err) == "CONFIG_MEM_SOFT_DIRTY is off"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is memwatch.UnsupportedError
    assert str(again) == str(err) and again.reasons == {"a": "b"}
    assert again.requirement == "x"


def test_auto_picks_first_available() -> None:
    first = next(b.name for b in memwatch.backends() if b.available)
    with anon(2) as m, memwatch.Watch(m) as w:
        assert w.backend == first


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_unavailable_backend_named(name: str) -> None:
    b = BACKENDS[name]
    if b.available:
        pytest.skip(f"{name} is available here")
    with anon(1) as m, pytest.raises(memwatch.UnsupportedError) as info:
        memwatch.Watch(m, backend=name)
    assert b.reason in str(info.value)
    assert name in str(info.value)


# -- Watch, per backend ---------------------------------------------------------


@pytest.mark.parametrize("backend", ANY)
def test_attributes(backend: str) -> None:
    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        assert w.backend == backend
        assert w.page_size == PAGE
        assert w.address == address_of(m)
        assert w.length == 4 * PAGE
        assert w.target_offset == 0
        assert w.pid is None
        assert not w.closed
        assert backend in repr(w)


@pytest.mark.parametrize("backend", ANY)
def test_new_watch_is_clean(backend: str) -> None:
    with anon(8) as m:
        touch(m, range(8))  # written before the watch: not reported
        with memwatch.Watch(m, backend=backend) as w:
            got = w.dirty()
            assert isinstance(got, array) and got.typecode == "Q"
            assert list(got) == []


@pytest.mark.parametrize("backend", ANY)
def test_reports_written_pages(backend: str) -> None:
    with anon(16) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [0, 3], byte=17)
        touch(m, [15], byte=PAGE - 1)
        touch(m, [3])  # twice: still one entry
        assert list(w.dirty()) == offsets({0, 3, 15})
        assert list(w.dirty()) == offsets({0, 3, 15}), "dirty() without reset keeps state"
        assert list(w.dirty(reset=True)) == offsets({0, 3, 15})
        assert list(w.dirty()) == []
        touch(m, [3, 4])
        assert list(w.dirty(reset=True)) == offsets({3, 4})


@pytest.mark.parametrize("backend", ANY)
def test_reads_are_not_writes(backend: str) -> None:
    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        assert sum(m[i * PAGE] for i in range(4)) == 0
        assert bytes(m[PAGE : 2 * PAGE]) == bytes(PAGE)
        assert list(w.dirty()) == []


@pytest.mark.parametrize("backend", ANY)
def test_dirty_into(backend: str) -> None:
    with anon(8) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [1, 6])
        out = array("Q", bytes(8 * 8))
        assert w.dirty_into(out) == 2
        assert list(out[:2]) == offsets({1, 6})
        assert w.dirty_into(out, reset=True) == 2
        assert w.dirty_into(out) == 0
        # Also a memoryview and a signed 8-byte format.
        touch(m, [2])
        assert w.dirty_into(memoryview(out)) == 1 and out[0] == 2 * PAGE
        signed = array("q", bytes(8 * 8))
        assert w.dirty_into(signed, reset=True) == 1 and signed[0] == 2 * PAGE


@pytest.mark.parametrize("backend", ANY)
def test_dirty_into_numpy(backend: str) -> None:
    np = pytest.importorskip("numpy")
    with anon(8) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [0, 7])
        out = np.zeros(8, dtype=np.uint64)
        n = w.dirty_into(out, reset=True)
        assert n == 2 and out[:n].tolist() == offsets({0, 7})


@pytest.mark.parametrize("backend", PARTIAL)
def test_dirty_into_stops_when_full(backend: str) -> None:
    with anon(10) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [1, 2, 5, 8, 9])
        out = array("Q", bytes(8 * 2))
        assert w.dirty_into(out) == 2 and list(out) == offsets({1, 2})
        assert w.dirty_into(out, reset=True) == 2 and list(out) == offsets({1, 2})
        # Only the reported pages were reset.
        assert list(w.dirty()) == offsets({5, 8, 9})
        assert w.dirty_into(out, reset=True) == 2 and list(out) == offsets({5, 8})
        assert w.dirty_into(out, reset=True) == 1 and out[0] == 9 * PAGE
        assert w.dirty_into(out, reset=True) == 0


@pytest.mark.parametrize("backend", ANY)
def test_narrowed_query_offsets_from_watched_start(backend: str) -> None:
    with anon(12) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [1, 5, 6, 11])
        assert list(w.dirty(start=4 * PAGE)) == offsets({5, 6, 11})
        assert list(w.dirty(start=4 * PAGE, length=3 * PAGE)) == offsets({5, 6})
        assert list(w.dirty(length=PAGE * 2)) == offsets({1})
        assert list(w.dirty(start=5 * PAGE, length=1)) == offsets({5}), "length rounds up"
        assert list(w.dirty(start=12 * PAGE)) == []
        assert list(w.dirty(start=2 * PAGE, length=0)) == []
        out = array("Q", bytes(8 * 4))
        assert w.dirty_into(out, start=4 * PAGE, length=8 * PAGE) == 3
        assert list(out[:3]) == offsets({5, 6, 11})


@pytest.mark.parametrize("backend", PARTIAL)
def test_partial_reset(backend: str) -> None:
    with anon(8) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, range(8))
        w.reset(start=2 * PAGE, length=3 * PAGE)
        assert list(w.dirty()) == offsets({0, 1, 5, 6, 7})
        assert list(w.dirty(reset=True, start=6 * PAGE)) == offsets({6, 7})
        assert list(w.dirty()) == offsets({0, 1, 5})
        w.reset(start=PAGE)
        assert list(w.dirty()) == offsets({0})
        w.reset()
        assert list(w.dirty()) == []


@pytest.mark.parametrize("backend", PARTIAL)
def test_dirty_loops_past_internal_buffer(backend: str) -> None:
    # More dirty pages than one internal chunk would hold is covered by the
    # differential test's sizes; here: a range with every page dirty.
    n = 300
    with anon(n) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, range(n))
        assert list(w.dirty(reset=True, start=PAGE)) == offsets(range(1, n))
        assert list(w.dirty(reset=True)) == offsets({0})


@pytest.mark.guest
@pytest.mark.parametrize("backend", [p for p in ANY if p.values[0] == "softdirty"])
def test_softdirty_watches_share_a_process(backend: str) -> None:
    """The real clear_refs: two softdirty Watches in one process, one
    partially inside the other; each one's resets (whole-process clears)
    never hide a write from the other, and each resets only what it asks."""
    with anon(8) as m, memwatch.Watch(m, backend=backend) as w:
        base = address_of(m)
        touch(m, [1, 6])
        w.reset(start=PAGE, length=PAGE)  # clears the process, keeps 6
        assert set(offsets({6})) <= set(w.dirty())
        with memwatch.Watch(base + 4 * PAGE, 4 * PAGE, backend=backend) as inner:
            assert list(inner.dirty()) == []
            touch(m, [5, 7])
            assert set(offsets({5, 6, 7})) <= set(w.dirty(reset=True, start=5 * PAGE))
            assert set(offsets({1, 3})) <= set(inner.dirty(reset=True, start=PAGE))
            touch(m, [5])
            assert set(offsets({5})) <= set(w.dirty(reset=True))
            assert set(offsets({1})) <= set(inner.dirty(reset=True))
        touch(m, [0])
        assert set(offsets({0})) <= set(w.dirty(reset=True))


@pytest.mark.guest
@pytest.mark.parametrize("backend", [p for p in ANY if p.values[0] == "softdirty"])
def test_softdirty_clear_refs_by_someone_else_is_process_wide(backend: str) -> None:
    """The documented limit memwatch cannot lift: the soft-dirty state is one
    per process, so anything else writing clear_refs for it (CRIU's pre-dump,
    another tool, a second memwatch in another process) erases writes no
    Watch has collected yet.  memwatch's own Watches sweep before they clear;
    strangers do not."""
    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [2])
        assert set(offsets({2})) <= set(w.dirty())  # seen, not collected
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        assert 2 * PAGE not in set(w.dirty()), "a foreign clear_refs erased it"
        touch(m, [3])
        assert set(offsets({3})) <= set(w.dirty(reset=True))


@pytest.mark.parametrize("backend", ANY)
def test_int_address_target(backend: str) -> None:
    with anon(6) as m:
        base = address_of(m)
        with memwatch.Watch(base + PAGE, 3 * PAGE, backend=backend) as w:
            assert w.address == base + PAGE and w.length == 3 * PAGE
            touch(m, [0, 2, 5])  # only page 2 is inside
            assert list(w.dirty()) == [PAGE]
        # An unaligned address and length are rounded out to whole pages.
        with memwatch.Watch(base + PAGE + 10, PAGE, backend=backend) as w:
            assert w.address == base + PAGE and w.length == 2 * PAGE
            assert w.target_offset == 10


@pytest.mark.parametrize("backend", ANY)
def test_memoryview_slice_target(backend: str) -> None:
    with anon(8) as m:
        view = memoryview(m)[2 * PAGE + 100 : 4 * PAGE + 5]
        with memwatch.Watch(view, backend=backend) as w:
            assert w.address == address_of(m) + 2 * PAGE
            assert w.length == 3 * PAGE
            assert w.target_offset == 100
            view[0] = 1  # byte 100 of page 2 -> offset 0
            view[len(view) - 1] = 1  # page 4 -> offset 2 pages
            assert list(w.dirty()) == [0, 2 * PAGE]
        view.release()


@pytest.mark.parametrize("backend", ANY)
def test_numpy_target(backend: str) -> None:
    np = pytest.importorskip("numpy")
    with anon(4) as m:
        arr = np.frombuffer(m, dtype=np.float64)
        with memwatch.Watch(arr, backend=backend) as w:
            per_page = PAGE // 8
            arr[per_page * 3 + 1] = 2.5
            assert list(w.dirty()) == [3 * PAGE]
        del arr


@pytest.mark.parametrize("backend", ANY)
def test_numpy_owned_array(backend: str) -> None:
    np = pytest.importorskip("numpy")
    arr = np.zeros((64, 1024), dtype=np.float32)  # 256 KiB, numpy-allocated
    with memwatch.Watch(arr, backend=backend) as w:
        arr[10, 5] = 1.0
        byte = arr.ctypes.data + (10 * 1024 + 5) * 4
        page_off = (byte - w.address) // PAGE * PAGE
        assert page_off in set(w.dirty())


@pytest.mark.parametrize("backend", ANY)
def test_bytearray_target(backend: str) -> None:
    buf = bytearray(5 * PAGE)
    with memwatch.Watch(buf, backend=backend) as w:
        assert w.address % PAGE == 0
        assert 0 <= w.target_offset < PAGE
        assert w.length >= len(buf)
        buf[3 * PAGE] = 1
        # A small heap object shares its edge pages with its neighbours, so
        # only inclusion is certain.
        expect = (w.target_offset + 3 * PAGE) // PAGE * PAGE
        assert expect in set(w.dirty(reset=True))
        with pytest.raises(BufferError):
            buf.extend(b"x")  # the watch holds the buffer export
    buf.extend(b"x")  # released by close()


@pytest.mark.parametrize("backend", ANY)
def test_close(backend: str) -> None:
    m = anon(4)
    w = memwatch.Watch(m, backend=backend)
    touch(m, [1])
    w.close()
    assert w.closed
    w.close()  # idempotent
    touch(m, [0, 1, 2, 3])  # unprotected, unregistered: plain writes again
    for call in (
        lambda: w.dirty(),
        lambda: w.dirty(start=PAGE),
        lambda: w.dirty_into(array("Q", [0])),
        lambda: w.dirty_into(array("Q", [0]), start=PAGE),
        lambda: w.reset(),
        lambda: w.reset(PAGE),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"), w:
        pass
    assert "closed" in repr(w)
    m.release()  # the watch's export is gone: the view can be released


@pytest.mark.parametrize("backend", ANY)
def test_context_manager_closes(backend: str) -> None:
    with anon(2) as m:
        with memwatch.Watch(m, backend=backend) as w:
            pass
        assert w.closed
        m[0] = 1


@pytest.mark.parametrize("backend", ANY)
def test_many_watches_in_turn(backend: str) -> None:
    with anon(4) as m:
        for _ in range(20):
            with memwatch.Watch(m, backend=backend) as w:
                touch(m, [2])
                assert list(w.dirty()) == [2 * PAGE]


@pytest.mark.parametrize("backend", PARTIAL)
def test_two_watches_disjoint(backend: str) -> None:
    with anon(8) as m:
        view_a = memoryview(m)[: 4 * PAGE]
        view_b = memoryview(m)[4 * PAGE :]
        with memwatch.Watch(view_a, backend=backend) as a, \
                memwatch.Watch(view_b, backend=backend) as b:
            touch(m, [1, 6])
            assert list(a.dirty(reset=True)) == [PAGE]
            assert list(b.dirty(reset=True)) == [2 * PAGE]
        view_a.release()
        view_b.release()


# -- writes from elsewhere --------------------------------------------------


@pytest.mark.parametrize("backend", ANY)
def test_kernel_writes(backend: str) -> None:
    """os.readv into the buffer: the kernel writes, the process does not."""
    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        r, wfd = os.pipe()
        try:
            os.write(wfd, b"k" * 100)
            target = memoryview(m)[2 * PAGE + 10 : 2 * PAGE + 110]
            if BACKENDS[backend].sees_kernel_writes:
                assert os.readv(r, [target]) == 100
                assert bytes(target) == b"k" * 100
                assert list(w.dirty()) == [2 * PAGE]
            else:
                # The documented blind spot: the kernel's write into a
                # write-protected page fails instead of faulting to us.
                with pytest.raises(OSError) as info:
                    os.readv(r, [target])
                assert info.value.errno == errno.EFAULT
            target.release()
        finally:
            os.close(r)
            os.close(wfd)


@pytest.mark.parametrize("backend", backend_params(kernel_writes=True))
def test_kernel_writes_readinto(backend: str, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "data")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 8)
    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        with open(path, "rb", buffering=0) as f:
            view = memoryview(m)[PAGE + PAGE // 2 : 3 * PAGE]
            assert f.readinto(view) == 2048
            view.release()
        assert list(w.dirty(reset=True)) == [PAGE]


@pytest.mark.parametrize("backend", ANY)
def test_writes_from_other_threads(backend: str) -> None:
    n = 32
    with anon(n) as m, memwatch.Watch(m, backend=backend) as w:
        def writer(k: int) -> None:
            touch(m, range(k, n, 4), byte=k)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert list(w.dirty(reset=True)) == offsets(range(n))
        t = threading.Thread(target=touch, args=(m, [7]))
        t.start()
        t.join()
        assert list(w.dirty()) == [7 * PAGE]


@pytest.mark.parametrize("backend", ANY)
def test_forked_child_writes_not_reported(backend: str) -> None:
    with anon(8) as m, memwatch.Watch(m, backend=backend) as w:
        touch(m, [0])
        pid = os.fork()
        if pid == 0:  # child: write, leave without running any cleanup
            code = 1
            try:
                touch(m, [1, 2, 3])
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert list(w.dirty()) == [0], "the child's writes are its own pages"
        touch(m, [5])
        assert list(w.dirty(reset=True)) == offsets({0, 5})


@pytest.mark.parametrize("backend", ANY)
def test_shared_memory_written_elsewhere_is_not_reported(backend: str) -> None:
    """The documented limit (README, "What a Watch sees"): every backend
    tracks the watched mapping's own page-table entries, so a MAP_SHARED page
    written through a second mapping, by pwrite(2) or by a forked child's
    inherited mapping is not reported -- the bytes change all the same."""
    fd = os.memfd_create("memwatch-test")
    try:
        os.ftruncate(fd, 4 * PAGE)
        with mmap.mmap(fd, 4 * PAGE) as m1, mmap.mmap(fd, 4 * PAGE) as m2:
            m1[0:4 * PAGE:PAGE] = b"\0" * 4  # populate before watching
            with memwatch.Watch(m1, backend=backend) as w:
                m2[PAGE] = 1                          # another mapping
                os.pwrite(fd, b"\2", 2 * PAGE)        # the file itself
                pid = os.fork()
                if pid == 0:  # the child's inherited MAP_SHARED mapping
                    code = 1
                    try:
                        m1[3 * PAGE] = 3
                        code = 0
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                assert (m1[PAGE], m1[2 * PAGE], m1[3 * PAGE]) == (1, 2, 3)
                assert list(w.dirty()) == [], "a limit the README states"
                m1[0] = 9                             # through the watched mapping
                assert list(w.dirty()) == [0]
    finally:
        os.close(fd)


# -- Windows write-watch semantics ----------------------------------------------


@pytest.mark.parametrize("backend", PARTIAL)
def test_alloc_fresh_has_no_written_pages(backend: str) -> None:
    with memwatch.alloc(5 * PAGE - 100, backend=backend) as buf:
        assert isinstance(buf, memwatch.WatchedMapping)
        assert len(buf) == 5 * PAGE
        assert buf.watch.backend == backend
        assert buf.address == address_of(buf)
        assert memwatch.get_write_watch(buf) == ([], PAGE)


@pytest.mark.parametrize("backend", PARTIAL)
def test_get_write_watch_count_one_resets_only_that_page(backend: str) -> None:
    with memwatch.alloc(8 * PAGE, backend=backend) as buf:
        base = buf.address
        touch(buf, [6, 2, 4])
        addrs, gran = memwatch.get_write_watch(buf)
        assert gran == PAGE and addrs == [base + 2 * PAGE, base + 4 * PAGE, base + 6 * PAGE]
        assert memwatch.get_write_watch(buf, reset=True, max_count=1) == ([base + 2 * PAGE], PAGE)
        assert memwatch.get_write_watch(buf)[0] == [base + 4 * PAGE, base + 6 * PAGE]
        assert memwatch.get_write_watch(buf, max_count=1)[0] == [base + 4 * PAGE]
        assert memwatch.get_write_watch(buf, max_count=0)[0] == []
        assert memwatch.get_write_watch(buf, reset=True)[0] == [base + 4 * PAGE, base + 6 * PAGE]
        assert memwatch.get_write_watch(buf)[0] == []
        touch(buf, [0])
        memwatch.reset_write_watch(buf)
        assert memwatch.get_write_watch(buf)[0] == []


@pytest.mark.parametrize("backend", PARTIAL)
def test_protection_changes_keep_state(backend: str) -> None:
    import mmap

    with memwatch.alloc(4 * PAGE, backend=backend) as buf:
        touch(buf, [1, 3])
        mprotect(buf.address, 4 * PAGE, mmap.PROT_READ)
        mprotect(buf.address, 4 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        assert memwatch.get_write_watch(buf)[0] == [buf.address + PAGE, buf.address + 3 * PAGE]


@pytest.mark.parametrize("backend", backend_params(partial_reset=True, kernel_writes=True))
def test_alloc_sees_kernel_writes(backend: str) -> None:
    with memwatch.alloc(3 * PAGE, backend=backend) as buf:
        r, wfd = os.pipe()
        try:
            os.write(wfd, b"z" * 10)
            view = memoryview(buf)[PAGE : PAGE + 10]
            assert os.readv(r, [view]) == 10
            view.release()
        finally:
            os.close(r)
            os.close(wfd)
        assert memwatch.get_write_watch(buf)[0] == [buf.address + PAGE]


def test_alloc_auto_needs_partial_reset() -> None:
    with memwatch.alloc(PAGE) as buf:
        assert BACKENDS[buf.watch.backend].partial_reset
        buf[0] = 1
        assert memwatch.get_write_watch(buf, reset=True, max_count=1)[0] == [buf.address]


def test_get_write_watch_accepts_a_watch() -> None:
    with anon(2) as m, memwatch.Watch(m) as w:
        m[PAGE] = 1
        assert memwatch.get_write_watch(w) == ([w.address + PAGE], PAGE)
        memwatch.reset_write_watch(w)
        assert memwatch.get_write_watch(w)[0] == []


def test_alloc_close_unmaps_and_closes_watch() -> None:
    buf = memwatch.alloc(2 * PAGE)
    w = buf.watch
    buf.close()
    assert w.closed and buf.closed
    buf.close()


def test_alloc_dropped_without_close() -> None:
    import gc

    for _ in range(5):
        buf = memwatch.alloc(2 * PAGE)
        buf[0] = 1
        del buf
        gc.collect()


@pytest.mark.parametrize("name", sorted(GUEST_ONLY))
def test_guest_backends_named_in_skip_reasons(name: str) -> None:
    """The host run shows why syscall/softdirty tests skip; a guest kernel
    without them (stock 6.1: ci/test-stock.sh) names itself instead."""
    from support import IN_GUEST, skip_reason

    reason = skip_reason(name)
    if reason is None:
        pytest.skip(f"{name} is available here")
    if IN_GUEST:
        assert os.uname().release in reason and BACKENDS[name].reason in reason
    else:
        assert "QEMU guest" in reason


@pytest.mark.parametrize("backend", ANY)
def test_forked_child_cannot_undo_parent_watch(backend: str) -> None:
    """A userfaultfd acts on its creator's mm: a child that closed (or
    finalised) an inherited Watch must not unregister the parent's range."""
    import gc

    with anon(4) as m, memwatch.Watch(m, backend=backend) as w:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = w.closed  # closed in the child by the at-fork hook
                w.close()
                del w
                gc.collect()
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not w.closed
        touch(m, [2])
        assert list(w.dirty(reset=True)) == [2 * PAGE]
        assert list(w.dirty()) == []


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("partial_reset", [False, True])
@pytest.mark.parametrize("kernel_writes", [False, True])
def test_explain_agrees_with_choose(remote: bool, partial_reset: bool, kernel_writes: bool) -> None:
    """explain() (what `memwatch info` prints) names exactly the backend
    auto takes for the same requirements, and says why for every other."""
    from memwatch import _backends

    rows = _backends.explain(
        remote=remote, partial_reset=partial_reset, kernel_writes=kernel_writes
    )
    assert [r.backend.name for r in rows] == [b.name for b in memwatch.backends()]
    chosen = [r.backend.name for r in rows if r.chosen]
    assert len(chosen) <= 1
    for r in rows:
        assert r.why, r
        if not r.backend.available:
            assert not r.chosen and (r.backend.reason in r.why or r.why.startswith("cannot"))
    try:
        b = _backends.choose(
            "auto", remote=remote, partial_reset=partial_reset, kernel_writes=kernel_writes
        )
    except memwatch.UnsupportedError:
        assert chosen == []
    else:
        assert chosen == [b.name]
        ranked_after = [r for r in rows if not r.chosen]
        for r in ranked_after:
            if r.why.startswith("could be chosen"):
                assert f"ranked lower: it costs more than {b.name}" in r.why or (
                    f"; {b.name} can" in r.why
                ), r
