// Mechanism "syscall": the process_memwatch(2) system call (number 500, see
// linux/memwatch.h), present only in the kernel built from linux/.  One call
// per scan, straight into the caller's buffer: the kernel's output format
// (byte offsets from start, ascending) is the contract's format.
#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include <sys/syscall.h>
#include <unistd.h>

#include "mechanism.hpp"
#include "uapi.hpp"
#include "util.hpp"

namespace memwatch {

const Caps syscall_caps = {"syscall", /*remote=*/true, /*partial_reset=*/true, /*atomic=*/true,
                           /*sees_kernel_writes=*/true, /*false_positives=*/true};

long process_memwatch(int pidfd, std::uintptr_t start, std::size_t len, unsigned flags,
                      std::uint64_t *vec, std::size_t vec_len) noexcept {
    return ::syscall(uapi::NR_process_memwatch, pidfd, start, len, flags, vec, vec_len);
}

namespace {

class SyscallMech final : public Mechanism {
public:
    // The pidfd is borrowed: the caller keeps it open while the tracker lives.
    SyscallMech(int pidfd, bool no_reused_regions)
        : pidfd_(pidfd), extra_(no_reused_regions ? MEMWATCH_SD_NO_REUSED_REGIONS : 0) {}

    void attach(std::uintptr_t start, std::size_t len) override { reset(start, len); }
    void detach() override {}
    // Our own page tables only: another process may hold its mmap lock
    // for as long as it likes.
    bool scan_may_block() const noexcept override {
        return pidfd_ != uapi::PIDFD_SELF_THREAD && pidfd_ != uapi::PIDFD_SELF_THREAD_GROUP;
    }

    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override {
        const unsigned flags = MEMWATCH_SD_GET | (reset ? MEMWATCH_SD_CLEAR : 0u) | extra_;
        long r;
        do {
            r = process_memwatch(pidfd_, start, len, flags, out, cap);
        } while (r < 0 && errno == EINTR && !reset);
        if (r < 0) {
            throw_errno("process_memwatch");
        }
        return static_cast<std::size_t>(r);
    }

    void reset(std::uintptr_t start, std::size_t len) override {
        if (process_memwatch(pidfd_, start, len, MEMWATCH_SD_CLEAR | extra_, nullptr, 0) < 0) {
            throw_errno("process_memwatch");
        }
    }

private:
    int pidfd_;
    unsigned extra_;
};

}  // namespace

std::unique_ptr<Mechanism> make_syscall(int pidfd, bool no_reused_regions) {
    return std::make_unique<SyscallMech>(pidfd, no_reused_regions);
}

Probe syscall_probe() {
    try {
        Mapping m(page_size());
        m.data()[0] = 1;
        std::uint64_t vec[1] = {~std::uint64_t{0}};
        if (process_memwatch(uapi::PIDFD_SELF, reinterpret_cast<std::uintptr_t>(m.data()),
                             m.size(), MEMWATCH_SD_GET, vec, 1) < 0) {
            const int err = errno;
            switch (err) {
            case ENOSYS:
                return {false, "enosys", err};
            case EOPNOTSUPP:
                return {false, "no_soft_dirty", err};
            default:
                return {false, "failed", err};
            }
        }
    } catch (const std::system_error &e) {
        return {false, "failed", e.code().value()};
    }
    return {};
}

}  // namespace memwatch
