"""A finaliser that closes a Watch while its own thread holds the registry's
lock must not hang.

The garbage collector runs ``__del__`` at any allocation: a
``memwatch.alloc`` buffer caught in a reference cycle closes its Watch from
there, possibly in the middle of another Watch's ``join()`` on the same
thread (seen as a hang of the whole test run).  ``Domain.leave`` then
defers the work to the end of the section instead of waiting for itself.
"""

from __future__ import annotations

import threading

import memwatch
from memwatch import _registry


def test_close_inside_registry_section_does_not_hang() -> None:
    buf = bytearray(2 * memwatch.PAGE_SIZE)
    w = memwatch.Watch(buf)
    member = w._member
    assert member is not None
    dom = member.domain
    result: list[str] = []

    def finaliser_inside_section() -> None:
        with dom.lock:  # as join()/scan() hold it when the gc strikes
            w.close()   # what a finaliser does there
            result.append("closed")
            assert member in dom.members  # deferred to the end of the section
        result.append("released")

    t = threading.Thread(target=finaliser_inside_section, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "close() inside the registry's section hung"
    assert result == ["closed", "released"]
    assert member not in dom.members and w.closed
    with _registry._domains_lock:  # reentrant, never held after the section
        pass
