// Kernel uapi definitions the extension needs but Debian 12's installed
// headers predate (PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC are Linux 6.7).
// Values are transcribed from the 6.12 tree's include/uapi/linux/fs.h and
// include/uapi/linux/userfaultfd.h; tests/test_backends.py parses those
// headers (when the tree is present) and compares them with the constants
// this module exports under `_uapi`.  Everything lives in namespace
// memwatch::uapi so nothing clashes with a newer system header.
#pragma once

#include <cstdint>
#include <linux/ioctl.h>

#include "../linux/memwatch.h"

namespace memwatch {
namespace uapi {

// ---- process_memwatch(2) (linux/memwatch.h) -------------------------------
constexpr long NR_process_memwatch = 500;
static_assert(MEMWATCH_SD_GET == 0x1 && MEMWATCH_SD_CLEAR == 0x2 &&
                  MEMWATCH_SD_NO_REUSED_REGIONS == 0x4,
              "linux/memwatch.h flag values changed");

// ---- pidfd sentinels (include/uapi/linux/pidfd.h, mainline 6.15+; the kernel
// series backports them into pidfd_get_task()).  <linux/pidfd.h> itself clashes
// with glibc's <fcntl.h>, hence the copies.
constexpr int PIDFD_SELF_THREAD = -10000;
constexpr int PIDFD_SELF_THREAD_GROUP = -10001;
// What memwatch.PIDFD_SELF names: mainline's PIDFD_SELF is PIDFD_SELF_THREAD.  For
// process_memwatch both name the caller's mm; the thread form is also what v2
// kernels (MEMWATCH_PIDFD_SELF = -10000) accept.
constexpr int PIDFD_SELF = PIDFD_SELF_THREAD;

// ---- PAGEMAP_SCAN (include/uapi/linux/fs.h) --------------------------------
struct page_region {
    std::uint64_t start;
    std::uint64_t end;  // exclusive
    std::uint64_t categories;
};

struct pm_scan_arg {
    std::uint64_t size;
    std::uint64_t flags;
    std::uint64_t start;
    std::uint64_t end;
    std::uint64_t walk_end;
    std::uint64_t vec;
    std::uint64_t vec_len;
    std::uint64_t max_pages;
    std::uint64_t category_inverted;
    std::uint64_t category_mask;
    std::uint64_t category_anyof_mask;
    std::uint64_t return_mask;
};

static_assert(sizeof(page_region) == 24, "struct page_region is 3 __u64");
static_assert(sizeof(pm_scan_arg) == 96, "struct pm_scan_arg is 12 __u64");

constexpr unsigned PROCFS_IOCTL_MAGIC = 'f';
constexpr unsigned long PAGEMAP_SCAN = _IOWR(PROCFS_IOCTL_MAGIC, 16, struct pm_scan_arg);

constexpr std::uint64_t PAGE_IS_WPALLOWED = 1u << 0;
constexpr std::uint64_t PAGE_IS_WRITTEN = 1u << 1;
constexpr std::uint64_t PAGE_IS_FILE = 1u << 2;
constexpr std::uint64_t PAGE_IS_PRESENT = 1u << 3;
constexpr std::uint64_t PAGE_IS_SWAPPED = 1u << 4;
constexpr std::uint64_t PAGE_IS_PFNZERO = 1u << 5;
constexpr std::uint64_t PAGE_IS_HUGE = 1u << 6;
constexpr std::uint64_t PAGE_IS_SOFT_DIRTY = 1u << 7;

constexpr std::uint64_t PM_SCAN_WP_MATCHING = 1u << 0;
constexpr std::uint64_t PM_SCAN_CHECK_WPASYNC = 1u << 1;

// ---- userfaultfd (include/uapi/linux/userfaultfd.h) ------------------------
constexpr std::uint64_t UFFD_API = 0xAA;
constexpr unsigned UFFDIO = 0xAA;
constexpr int UFFD_USER_MODE_ONLY = 1;

constexpr std::uint64_t UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1u << 0;
constexpr std::uint64_t UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1u << 12;
constexpr std::uint64_t UFFD_FEATURE_WP_UNPOPULATED = 1u << 13;
constexpr std::uint64_t UFFD_FEATURE_WP_ASYNC = 1u << 15;

constexpr std::uint8_t UFFD_EVENT_PAGEFAULT = 0x12;
constexpr std::uint64_t UFFD_PAGEFAULT_FLAG_WRITE = 1u << 0;
constexpr std::uint64_t UFFD_PAGEFAULT_FLAG_WP = 1u << 1;

constexpr std::uint64_t UFFDIO_REGISTER_MODE_MISSING = 1u << 0;
constexpr std::uint64_t UFFDIO_REGISTER_MODE_WP = 1u << 1;
constexpr std::uint64_t UFFDIO_WRITEPROTECT_MODE_WP = 1u << 0;
constexpr std::uint64_t UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1u << 1;

struct uffdio_api {
    std::uint64_t api;
    std::uint64_t features;
    std::uint64_t ioctls;
};

struct uffdio_range {
    std::uint64_t start;
    std::uint64_t len;
};

struct uffdio_register {
    uffdio_range range;
    std::uint64_t mode;
    std::uint64_t ioctls;
};

struct uffdio_writeprotect {
    uffdio_range range;
    std::uint64_t mode;
};

// The kernel's struct is __packed; with these member types the natural
// layout has no padding, which the static_asserts below pin down.
struct uffd_msg {
    std::uint8_t event;
    std::uint8_t reserved1;
    std::uint16_t reserved2;
    std::uint32_t reserved3;
    union {
        struct {
            std::uint64_t flags;
            std::uint64_t address;
            std::uint32_t ptid;
        } pagefault;
        struct {
            std::uint64_t reserved1;
            std::uint64_t reserved2;
            std::uint64_t reserved3;
        } reserved;
    } arg;
};

static_assert(sizeof(uffdio_api) == 24, "struct uffdio_api");
static_assert(sizeof(uffdio_range) == 16, "struct uffdio_range");
static_assert(sizeof(uffdio_register) == 32, "struct uffdio_register");
static_assert(sizeof(uffdio_writeprotect) == 24, "struct uffdio_writeprotect");
static_assert(sizeof(uffd_msg) == 32, "struct uffd_msg is 32 bytes (packed)");

constexpr unsigned long UFFDIO_API_IOCTL = _IOWR(UFFDIO, 0x3F, struct uffdio_api);
constexpr unsigned long UFFDIO_REGISTER = _IOWR(UFFDIO, 0x00, struct uffdio_register);
constexpr unsigned long UFFDIO_UNREGISTER = _IOR(UFFDIO, 0x01, struct uffdio_range);
constexpr unsigned long UFFDIO_WAKE = _IOR(UFFDIO, 0x02, struct uffdio_range);
constexpr unsigned long UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, 0x06, struct uffdio_writeprotect);

// ---- /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
constexpr std::uint64_t PM_SOFT_DIRTY_BIT = 55;

}  // namespace uapi
}  // namespace memwatch

// Transitional: src/_memwatch.cpp still spells the sentinel the v2 way.
#ifndef MEMWATCH_PIDFD_SELF
#define MEMWATCH_PIDFD_SELF (::memwatch::uapi::PIDFD_SELF)
#endif
