// userfaultfd plumbing shared by the pagemap_scan (async write-protect) and
// uffd (synchronous write-protect) mechanisms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "util.hpp"

namespace memwatch {

struct UffdOpen {
    Fd fd;
    bool user_mode_only = false;  // fell back to UFFD_USER_MODE_ONLY
    int err = 0;                  // errno if fd is invalid
};

// userfaultfd(O_CLOEXEC|O_NONBLOCK); on EPERM (vm.unprivileged_userfaultfd=0
// without CAP_SYS_PTRACE) retry with UFFD_USER_MODE_ONLY.  Never throws.
UffdOpen uffd_open() noexcept;

// Features the kernel offers (UFFDIO_API handshake on a throwaway fd), or
// sets err.  Never throws.
std::uint64_t uffd_offered_features(int &err, bool &user_mode_only) noexcept;

// A human explanation for a userfaultfd() failure.
std::string uffd_open_reason(int err);

// Open, handshake with exactly `features`, throw a std::system_error whose
// message explains what is missing.
UffdOpen uffd_open_with(std::uint64_t features, const char *who);

void uffd_register_wp(int uffd, std::uintptr_t start, std::size_t len);
// UFFDIO_REGISTER with `mode` (UFFDIO_REGISTER_MODE_*); throws.
void uffd_register(int uffd, std::uintptr_t start, std::size_t len, std::uint64_t mode);
// UFFDIO_COPY of `len` bytes from src to dst (resolves a missing fault and
// wakes its waiters); wp=true maps the page write-protected.  0 or an errno
// (EEXIST: already populated by a racing fault).  Retries EAGAIN.
int uffd_copy(int uffd, std::uintptr_t dst, const void *src, std::size_t len, bool wp) noexcept;
// Best effort; errors from a range that was unmapped meanwhile are ignored.
void uffd_unregister(int uffd, std::uintptr_t start, std::size_t len) noexcept;
// UFFDIO_WAKE: wake threads blocked on faults in the range.  Best effort.
void uffd_wake(int uffd, std::uintptr_t start, std::size_t len) noexcept;
// UFFDIO_WRITEPROTECT; protect=false un-protects and (unless dontwake)
// wakes blocked writers.  Retries EAGAIN (mm changing, e.g. during fork).
// Returns 0 or an errno.
int uffd_writeprotect(int uffd, std::uintptr_t start, std::size_t len, bool protect,
                      bool dontwake = false) noexcept;

}  // namespace memwatch
