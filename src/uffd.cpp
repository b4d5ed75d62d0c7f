// Mechanism "uffd": synchronous userfaultfd write-protection
// (UFFD_FEATURE_PAGEFAULT_FLAG_WP, no WP_ASYNC).  A write to a protected page
// blocks the writer and queues a uffd_msg; a C++ handler thread (started at
// attach, stopped at detach through an eventfd) records the page in an
// atomic bitmap and un-protects it, which wakes the writer.
//
// Why no write is lost (the handler and scan(reset=True) race on a page P):
//   handler: (h1) UFFDIO_WRITEPROTECT(P, mode DONTWAKE) -- un-protect
//            (h2) bit[P] |= 1
//            (h3) UFFDIO_WAKE(P)                         -- the writer resumes
//   scan:    (s1) report P if bit[P]; bit[P] &= ~1 (fetch_and: only the
//                 reported bits, anything set meanwhile stays set)
//            (s2) UFFDIO_WRITEPROTECT(P, WP)             -- re-protect
// - The faulting write completes only after h3, so its bit is set before the
//   writer can go on (and e.g. call scan() itself): a write that completed
//   before scan() started is always reported.
// - A write after s2 faults again, so a later h2 sets the bit again: it is
//   reported by a later scan.
// - A write between s1 and s2 (P still writable) happened before scan()
//   returned: it is already part of P's contents, which the caller reads
//   after getting P back.  Linearization point of the reset: s2.
// - The scanner re-protects P only after seeing bit[P] set, i.e. after h2,
//   hence after h1: its s2 cannot be undone by the h1 of the same fault.  A
//   *stale* h1 (a second message for P queued by another thread that faulted
//   at the same time) may un-protect P after s2, but its h2 then sets the
//   bit, so P is reported again (a rare false positive, never a lost write).
// The reverse order in scan (re-protect, then clear the bit) would lose
// writes: a fault handled between the two sets a bit the scanner then
// clears while P stays unprotected.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <thread>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mechanism.hpp"
#include "uapi.hpp"
#include "uffd_common.hpp"
#include "util.hpp"

namespace memwatch {

const Caps uffd_caps = {"uffd", /*remote=*/false, /*partial_reset=*/true, /*atomic=*/true,
                        /*sees_kernel_writes=*/true, /*false_positives=*/true};

namespace {

constexpr std::uint64_t kFeatures =
    uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP | uapi::UFFD_FEATURE_WP_UNPOPULATED;

class Uffd final : public Mechanism {
public:
    Uffd() {
        UffdOpen u = uffd_open_with(kFeatures, "uffd");
        uffd_ = std::move(u.fd);
        user_mode_only_ = u.user_mode_only;
        const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) {
            throw_errno("eventfd");
        }
        stop_.reset(efd);
    }

    ~Uffd() override {
        if (thread_.joinable()) {
            detach();
        }
    }

    void attach(std::uintptr_t start, std::size_t len) override {
        bits_ = PageBitmap(pages_in(len));
        start_ = start;
        len_ = len;
        uffd_register_wp(uffd_.get(), start, len);
        if (const int err = uffd_writeprotect(uffd_.get(), start, len, true)) {
            uffd_unregister(uffd_.get(), start, len);
            throw_errno(err, "UFFDIO_WRITEPROTECT");
        }
        std::uint64_t v;
        while (::read(stop_.get(), &v, sizeof v) == sizeof v) {
        }  // drain a stale stop request
        try {
            thread_ = std::thread([this] { handler(); });
        } catch (...) {
            uffd_unregister(uffd_.get(), start, len);
            throw;
        }
    }

    void detach() override {
        // Lift the protection (wakes the writers blocked on the range), then
        // unregister: it drops the uffd-wp bits but, unlike MISSING mode,
        // wakes no WP waiter.  Faults already queued were queued under the
        // mmap lock that UFFDIO_UNREGISTER takes for writing, so after it no
        // new waiter can appear; UFFDIO_WAKE then releases any that the
        // handler thread has not resolved yet.  Only then stop the thread.
        (void)uffd_writeprotect(uffd_.get(), start_, len_, false);
        uffd_unregister(uffd_.get(), start_, len_);
        uffd_wake(uffd_.get(), start_, len_);
        const std::uint64_t one = 1;
        while (::write(stop_.get(), &one, sizeof one) < 0 && errno == EINTR) {
        }
        if (thread_.joinable()) {
            thread_.join();
        }
        bits_ = PageBitmap();
        start_ = len_ = 0;
    }

    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override {
        const std::size_t ps = page_size();
        int err = 0;
        const std::size_t n = bitmap_scan(
            bits_, (start - start_) / ps, len / ps, out, cap, reset,
            [&](std::size_t page, std::size_t npages) {
                const int e = uffd_writeprotect(uffd_.get(), start_ + page * ps, npages * ps, true);
                if (e && !err) {
                    err = e;
                }
            });
        if (err) {
            throw_errno(err, "UFFDIO_WRITEPROTECT");
        }
        return n;
    }

    void reset(std::uintptr_t start, std::size_t len) override {
        // Same order as scan(): clear the bits, then protect the range.
        const std::size_t ps = page_size();
        const std::size_t first = (start - start_) / ps, last = first + len / ps;
        bits_.clear_range(first, last);
        if (const int err = uffd_writeprotect(uffd_.get(), start, len, true)) {
            throw_errno(err, "UFFDIO_WRITEPROTECT");
        }
    }

private:
    void handler() noexcept {
        const std::size_t ps = page_size();
        pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
        uapi::uffd_msg msgs[16];
        for (;;) {
            const int pr = ::poll(fds, 2, -1);
            if (pr < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return;  // cannot happen with valid fds
            }
            if (fds[1].revents) {
                return;
            }
            if (fds[0].revents & (POLLERR | POLLHUP)) {
                return;
            }
            const ssize_t r = ::read(uffd_.get(), msgs, sizeof msgs);
            if (r < 0) {
                continue;  // EAGAIN: another wakeup consumed it
            }
            const std::size_t nmsg = static_cast<std::size_t>(r) / sizeof(uapi::uffd_msg);
            for (std::size_t i = 0; i < nmsg; ++i) {
                const auto &msg = msgs[i];
                if (msg.event != uapi::UFFD_EVENT_PAGEFAULT) {
                    continue;
                }
                const std::uintptr_t page = msg.arg.pagefault.address & ~(std::uintptr_t(ps) - 1);
                // (h1) un-protect, (h2) record, (h3) wake: see the top.
                (void)uffd_writeprotect(uffd_.get(), page, ps, false, /*dontwake=*/true);
                if (page >= start_ && page < start_ + len_) {
                    bits_.set((page - start_) / ps);
                }
                uffd_wake(uffd_.get(), page, ps);
            }
        }
    }

    Fd uffd_;
    Fd stop_;
    bool user_mode_only_ = false;
    std::thread thread_;
    PageBitmap bits_;
    std::uintptr_t start_ = 0;
    std::size_t len_ = 0;
};

}  // namespace

std::unique_ptr<Mechanism> make_uffd() { return std::make_unique<Uffd>(); }

Probe uffd_probe() {
    int err = 0;
    bool umo = false;
    const std::uint64_t offered = uffd_offered_features(err, umo);
    if (err) {
        return {false, "uffd_open", err};
    }
    if (!(offered & uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        return {false, "no_wp", 0};
    }
    if (!(offered & uapi::UFFD_FEATURE_WP_UNPOPULATED)) {
        return {false, "no_wp_unpopulated", 0};
    }
    return {};
}

}  // namespace memwatch
