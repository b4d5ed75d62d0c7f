"""Type stub for the memwatch._memwatch C++ extension (src/_memwatch.cpp)."""

import sys
from typing import ClassVar

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer


PIDFD_SELF: int
NR_PROCESS_MEMWATCH: int
PAGE_SIZE: int
MEMWATCH_SD_GET: int
MEMWATCH_SD_CLEAR: int
MEMWATCH_SD_NO_REUSED_REGIONS: int

class _UapiModule:
    # memwatch._memwatch._uapi: the uapi values compiled in (for the header test).
    PAGEMAP_SCAN: int
    PAGE_IS_WPALLOWED: int
    PAGE_IS_WRITTEN: int
    PAGE_IS_FILE: int
    PAGE_IS_PRESENT: int
    PAGE_IS_SWAPPED: int
    PAGE_IS_PFNZERO: int
    PAGE_IS_HUGE: int
    PAGE_IS_SOFT_DIRTY: int
    PM_SCAN_WP_MATCHING: int
    PM_SCAN_CHECK_WPASYNC: int
    UFFD_API: int
    UFFD_USER_MODE_ONLY: int
    UFFD_FEATURE_PAGEFAULT_FLAG_WP: int
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM: int
    UFFD_FEATURE_WP_UNPOPULATED: int
    UFFD_FEATURE_WP_ASYNC: int
    UFFD_EVENT_PAGEFAULT: int
    UFFD_PAGEFAULT_FLAG_WRITE: int
    UFFD_PAGEFAULT_FLAG_WP: int
    UFFDIO_REGISTER_MODE_MISSING: int
    UFFDIO_REGISTER_MODE_WP: int
    UFFDIO_WRITEPROTECT_MODE_WP: int
    UFFDIO_WRITEPROTECT_MODE_DONTWAKE: int
    UFFDIO_API: int
    UFFDIO_REGISTER: int
    UFFDIO_UNREGISTER: int
    UFFDIO_WAKE: int
    UFFDIO_WRITEPROTECT: int
    SIZEOF: dict[str, int]

_uapi: _UapiModule

def process_memwatch(
    pidfd: int, start: int, length: int, flags: int, vec: Buffer | None
) -> int: ...
def syscall_available() -> tuple[bool, str]: ...
def pagemap_scan_available() -> tuple[bool, str]: ...
def softdirty_available() -> tuple[bool, str]: ...
def uffd_available() -> tuple[bool, str]: ...
def uffd_user_mode_only() -> bool: ...
def mprotect_available() -> tuple[bool, str]: ...

class TrackerShared(RuntimeError):
    """scan()/reset() of a tracker that overlapping Watches share."""

class _Tracker:
    # Not a runtime base class: the common shape of the five tracker classes.
    remote: ClassVar[bool]
    partial_reset: ClassVar[bool]
    atomic: ClassVar[bool]
    sees_kernel_writes: ClassVar[bool]
    false_positives: ClassVar[bool]
    def attach(self, start: int, length: int) -> None: ...
    def detach(self) -> None: ...
    def scan(self, start: int, length: int, out: Buffer, reset: bool = False) -> int: ...
    def reset(self, start: int, length: int) -> None: ...
    # memwatch/_registry.py: overlapping Watches sharing this tracker.
    def scan_shared(self, start: int, length: int, out: Buffer, reset: bool = False) -> int: ...
    def reset_shared(self, start: int, length: int) -> None: ...
    def set_shared(self, shared: bool) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def page_size(self) -> int: ...
    @property
    def attached(self) -> bool: ...
    @property
    def start(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def user_mode_only(self) -> bool: ...
    @property
    def sees_kernel_writes_now(self) -> bool: ...
    def forget_if_foreign(self) -> bool: ...

class SyscallTracker(_Tracker):
    def __init__(self, pidfd: int, no_reused_regions: bool = False) -> None: ...

class PagemapScanTracker(_Tracker):
    def __init__(self) -> None: ...

class SoftDirtyTracker(_Tracker):
    def __init__(self, pid: int) -> None: ...

class UffdTracker(_Tracker):
    missing_mode: ClassVar[bool]
    def __init__(self) -> None: ...

class MprotectTracker(_Tracker):
    def __init__(self) -> None: ...
