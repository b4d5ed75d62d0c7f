#include "uffd_common.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uapi.hpp"

namespace memwatch {

UffdOpen uffd_open() noexcept {
    UffdOpen r;
    int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (fd < 0 && errno == EPERM) {
        fd = static_cast<int>(
            ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | uapi::UFFD_USER_MODE_ONLY));
        r.user_mode_only = fd >= 0;
        if (fd < 0 && errno == EINVAL) {
            errno = EPERM;  // kernel < 5.11 without UFFD_USER_MODE_ONLY: report the first error
        }
    }
    if (fd < 0) {
        r.err = errno;
    } else {
        r.fd.reset(fd);
    }
    return r;
}

std::uint64_t uffd_offered_features(int &err, bool &user_mode_only) noexcept {
    UffdOpen u = uffd_open();
    user_mode_only = u.user_mode_only;
    if (!u.fd) {
        err = u.err;
        return 0;
    }
    uapi::uffdio_api api{};
    api.api = uapi::UFFD_API;
    api.features = 0;
    if (::ioctl(u.fd.get(), uapi::UFFDIO_API_IOCTL, &api) != 0) {
        err = errno;
        return 0;
    }
    err = 0;
    return api.features;
}

std::string uffd_open_reason(int err) {
    switch (err) {
    case ENOSYS:
        return "userfaultfd() is not available: the kernel was built without CONFIG_USERFAULTFD "
               "(or a seccomp filter blocks it)";
    case EPERM:
        return "userfaultfd() was refused: vm.unprivileged_userfaultfd is 0 and the process "
               "lacks CAP_SYS_PTRACE (run as root, grant CAP_SYS_PTRACE, or set "
               "sysctl vm.unprivileged_userfaultfd=1)";
    case EMFILE:
    case ENFILE:
        return "userfaultfd() failed: too many open files";
    default:
        return std::string("userfaultfd() failed: ") + std::strerror(err);
    }
}

UffdOpen uffd_open_with(std::uint64_t features, const char *who) {
    UffdOpen u = uffd_open();
    if (!u.fd) {
        throw_errno(u.err, (std::string(who) + ": " + uffd_open_reason(u.err)).c_str());
    }
    uapi::uffdio_api api{};
    api.api = uapi::UFFD_API;
    api.features = features;
    if (::ioctl(u.fd.get(), uapi::UFFDIO_API_IOCTL, &api) != 0) {
        const int err = errno;
        throw_errno(err, (std::string(who) +
                          ": UFFDIO_API refused the needed features (kernel too old?)")
                             .c_str());
    }
    return u;
}

void uffd_register(int uffd, std::uintptr_t start, std::size_t len, std::uint64_t mode) {
    uapi::uffdio_register reg{};
    reg.range.start = start;
    reg.range.len = len;
    reg.mode = mode;
    if (::ioctl(uffd, uapi::UFFDIO_REGISTER, &reg) != 0) {
        throw_errno("UFFDIO_REGISTER");
    }
}

void uffd_register_wp(int uffd, std::uintptr_t start, std::size_t len) {
    uffd_register(uffd, start, len, uapi::UFFDIO_REGISTER_MODE_WP);
}

namespace {
// struct uffdio_copy (linux/userfaultfd.h), not in uapi.hpp.
struct uffdio_copy {
    std::uint64_t dst, src, len, mode;
    std::int64_t copy;
};
constexpr unsigned long UFFDIO_COPY = _IOWR(uapi::UFFDIO, 0x03, struct uffdio_copy);
constexpr std::uint64_t UFFDIO_COPY_MODE_WP = 1u << 1;
}  // namespace

int uffd_copy(int uffd, std::uintptr_t dst, const void *src, std::size_t len, bool wp) noexcept {
    uffdio_copy c{};
    c.dst = dst;
    c.src = reinterpret_cast<std::uintptr_t>(src);
    c.len = len;
    c.mode = wp ? UFFDIO_COPY_MODE_WP : 0;
    for (;;) {
        c.copy = 0;
        if (::ioctl(uffd, UFFDIO_COPY, &c) == 0) {
            return 0;
        }
        if (errno != EAGAIN && errno != EINTR) {
            return errno;
        }
    }
}

void uffd_unregister(int uffd, std::uintptr_t start, std::size_t len) noexcept {
    uapi::uffdio_range r{};
    r.start = start;
    r.len = len;
    (void)::ioctl(uffd, uapi::UFFDIO_UNREGISTER, &r);
}

void uffd_wake(int uffd, std::uintptr_t start, std::size_t len) noexcept {
    uapi::uffdio_range r{};
    r.start = start;
    r.len = len;
    (void)::ioctl(uffd, uapi::UFFDIO_WAKE, &r);
}

int uffd_writeprotect(int uffd, std::uintptr_t start, std::size_t len, bool protect,
                      bool dontwake) noexcept {
    uapi::uffdio_writeprotect wp{};
    wp.range.start = start;
    wp.range.len = len;
    wp.mode = protect ? uapi::UFFDIO_WRITEPROTECT_MODE_WP
                      : (dontwake ? uapi::UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
    for (;;) {
        if (::ioctl(uffd, uapi::UFFDIO_WRITEPROTECT, &wp) == 0) {
            return 0;
        }
        if (errno != EAGAIN && errno != EINTR) {
            return errno;
        }
    }
}

}  // namespace memwatch
