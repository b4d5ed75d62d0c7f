"""Tracker properties never wait behind a scan in another thread.

Review "GIL": the getters ``attached``/``start``/``length`` took the tracker
mutex with the GIL held, so one slow scan stalled every Python thread.  Here a
scan is made to block for as long as we like: its ``out`` buffer is
registered with a userfaultfd nobody serves, so writing the first result
blocks inside scan() (mutex held, GIL released) until that fd is closed.
"""

from __future__ import annotations

import pytest
from hardening_support import describe, run_py
from support import skip_reason


@pytest.mark.skipif(skip_reason("mprotect") is not None, reason=str(skip_reason("mprotect")))
def test_getters_do_not_wait_for_a_blocked_scan() -> None:
    r = run_py(
        """
        import ctypes, mmap, os, struct, threading, time
        from memwatch import _memwatch as mw
        u = mw._uapi
        PS = mmap.PAGESIZE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)       # userfaultfd (x86_64)
        assert fd >= 0, ctypes.get_errno()
        api = ctypes.create_string_buffer(struct.pack("QQQ", u.UFFD_API, 0, 0))
        assert libc.ioctl(fd, u.UFFDIO_API, api) == 0
        trap = mmap.mmap(-1, PS, flags=mmap.MAP_PRIVATE)
        taddr = ctypes.addressof(ctypes.c_char.from_buffer(trap))
        reg = ctypes.create_string_buffer(
            struct.pack("QQQQ", taddr, PS, u.UFFDIO_REGISTER_MODE_MISSING, 0))
        assert libc.ioctl(fd, u.UFFDIO_REGISTER, reg) == 0
        out = (ctypes.c_uint64 * (PS // 8)).from_address(taddr)   # never populated, never served

        m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        t = mw.MprotectTracker()
        t.attach(base, 4 * PS)
        m[PS] = 1
        res = []
        th = threading.Thread(target=lambda: res.append(t.scan(base, 4 * PS, out, False)))
        th.start()
        time.sleep(0.3)                       # the scan is now blocked writing out[0]
        t0 = time.monotonic()
        got = (t.attached, t.start == base, t.length)
        print("getters", got, "fast", time.monotonic() - t0 < 0.5, "scan still blocked",
              th.is_alive(), flush=True)
        os.close(fd)                          # releases the blocked write
        th.join(10)
        print("scan", res, out[0] == PS)
        t.detach()
        """,
        timeout=30,
    )
    assert r.returncode == 0, describe(r)
    assert "getters (True, True, 16384) fast True scan still blocked True" in r.stdout, describe(r)
    assert "scan [1] True" in r.stdout, describe(r)
