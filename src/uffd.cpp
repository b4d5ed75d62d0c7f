// Mechanism "uffd": synchronous userfaultfd write-protection
// (UFFD_FEATURE_PAGEFAULT_FLAG_WP, no WP_ASYNC).  A write to a protected page
// blocks the writer and queues a uffd_msg; a C++ handler thread (started at
// attach, stopped at detach through an eventfd) records the page in an
// atomic bitmap and un-protects it, which wakes the writer.
//
// Registration is MISSING|WP: an unpopulated page (never touched, or zapped
// by MADV_DONTNEED/MADV_FREE after attach, which drops an anonymous page's
// uffd-wp state) raises a missing fault, which the handler resolves itself
// with UFFDIO_COPY of a zero page: a write fault sets the bit first and maps
// the page writable; a read fault maps it write-protected (UFFDIO_COPY_MODE_WP)
// so the next write faults.  So no write is lost after MADV_DONTNEED, and the
// backend needs no UFFD_FEATURE_WP_UNPOPULATED (it works on 5.7-6.3 kernels,
// and a reset of a sparse range fills no page tables with markers).
// MADV_DONTNEED/MADV_REMOVE itself changes a page's contents (to zeros): with
// UFFD_FEATURE_EVENT_REMOVE the handler reads a REMOVE event for it and
// counts those pages as written, as pagemap_scan does.  The madvise returns
// as soon as the event is read, so a scan first waits for the batch the
// handler is reading (reads_begun/reads_done): a zap that returned before
// the scan began is in it.
//
// Why no write is lost (the handler and scan(reset=True) race on a page P).
// The handler thread and the scanner serialize on one lock (hmu, kept in
// memory of its own so the handler never faults on it):
//   handler: lock; (h1) bit[P] |= 1; (h2) un-protect P and wake its writers
//            (one UFFDIO_WRITEPROTECT without DONTWAKE); unlock
//   scan:    lock; (s1) take bit[P] (fetch_and); (s2) re-protect P; unlock
// - The faulting write completes only after h2, and its bit was set in h1:
//   a write that completed before scan() started is always reported, even
//   when a signal interrupts the blocked writer and it retries on its own as
//   soon as P is writable (the old order, un-protect then set, let such a
//   write complete before its bit was set: a delayed report).
// - (h1,h2) and (s1,s2) never interleave: either the scan saw the bit and
//   re-protected after the un-protect, or the handler set the bit after the
//   scan (P then stays writable with its bit set: reported next time).
// - A write after s2 faults again and is recorded by a later h1.
// - A write between s1 and s2 completed before scan() returned; the caller
//   reads P's contents after getting P back.  Linearization point: s2.
// - A *stale* message (two threads faulted on P at once) runs h1/h2 again
//   after a scan: P is reported once more (a false positive, never a loss).
// Residual false positive (issue 10): the woken writer retries its store
// only when it next runs; a scan whose s2 comes first makes the retry fault
// once more, and P is reported in two rounds for one write.  The sync uffd-wp
// uAPI (6.1 to 6.18) tells the handler nothing about the retry: a fault on
// P after s2 from the same thread may as well be a new write, so dropping it
// could lose a write, and a scan cannot hold P back without delaying a
// report.  So this is narrowed, not closed: the wake is part of h2, under
// the lock (it used to follow the unlock, and a scan blocked on hmu then
// always re-protected P before the writer was even woken: 139 of 256 faults
// in benchmarks/uffd_wp_retry.c on the host).  What is left is the writer's
// wake-up latency: microseconds on hardware, but 4-8 ms across vCPUs in a
// TCG guest, where a tight-polling thread could win it many times in a row.
// Before Linux 6.2 the un-protect leaves a private page's PTE read-only
// (mm/userfaultfd.c uffd_wp_range(): no MM_CP_TRY_CHANGE_WRITABLE), so the
// retry also passes through do_wp_page() -- inside the same fault, never
// back to us; making the PTE writable from the handler (MADV_POPULATE_WRITE)
// was measured: no consistent drop in re-faults (fewer in one 6.1 guest run,
// not in others), 10-20 us more under the lock per fault in the guests.
//
// MAP_SHARED shmem/tmpfs/memfd ranges (uffd-wp on shmem, Linux 5.19+,
// Debian's 6.1 included) are sound for writes through the watched mapping:
// UFFDIO_WRITEPROTECT puts a uffd-wp marker into every empty PTE (page
// tables allocated, mm/mprotect.c change_pmd_prepare()), zap and reclaim
// keep it (pte_install_uffd_wp_if_needed()), and a page missing from the
// page cache raises a missing fault.  Writes through another mapping or the
// file are not seen (README); other file systems are refused by the kernel.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bitmap_mechanism.hpp"
#include "mechanism.hpp"
#include "uapi.hpp"
#include "uffd_common.hpp"
#include "util.hpp"

namespace memwatch {

const Caps uffd_caps = {"uffd", /*remote=*/false, /*partial_reset=*/true, /*atomic=*/true,
                        /*sees_kernel_writes=*/true, /*false_positives=*/true};

namespace {

// No UFFD_FEATURE_WP_UNPOPULATED: missing faults cover unpopulated pages.
// UFFD_FEATURE_EVENT_REMOVE (Linux 4.11): MADV_DONTNEED/MADV_REMOVE on the
// range queue an event (the madvise waits until the handler has read it),
// and the zapped pages count as written: their contents changed (to zeros),
// as pagemap_scan reports them too.
constexpr std::uint64_t kFeatureEventRemove = 1u << 3;
constexpr std::uint8_t kEventRemove = 0x15;
constexpr std::uint64_t kFeatures = uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP | kFeatureEventRemove;

// What the handler thread writes besides the bitmap and its own stack: in an
// anonymous mapping of its own, never on a (possibly watched) heap page.
struct HandlerShared {
    std::mutex hmu;              // see the top: (h1,h2) vs (s1,s2)
    std::atomic<int> dead{0};    // errno-ish reason the handler stopped on its own
    std::atomic<bool> running{false};  // the handler thread reached its loop
    // Batches of messages the handler began to read / finished recording:
    // a scan waits for the batch in progress (see check_alive()).
    std::atomic<std::uint64_t> reads_begun{0};
    std::atomic<std::uint64_t> reads_done{0};
    alignas(64) unsigned char zero[1];  // (the zero page is the mapping's 2nd page)
};

class Uffd final : public BitmapMechanism {
public:
    Uffd() : BitmapMechanism("UFFDIO_WRITEPROTECT"), shared_map_(2 * page_size()) {
        UffdOpen u = uffd_open_with(kFeatures, "uffd");
        uffd_ = std::move(u.fd);
        user_mode_only_ = u.user_mode_only;
        const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) {
            throw_errno("eventfd");
        }
        stop_.reset(efd);
        shared_ = new (shared_map_.data()) HandlerShared();
        zero_page_ = shared_map_.data() + page_size();
    }

    ~Uffd() override {
        if (thread_.joinable()) {
            detach();
        }
        shared_->~HandlerShared();
    }

    bool user_mode_only() const noexcept override { return user_mode_only_; }

    void attach(std::uintptr_t start, std::size_t len) override {
        // Everything the handler touches exists before anything is
        // protected: the bitmap (its own mapping), the shared state, and the
        // thread itself (pthread_create allocates from the heap, which may
        // share pages with the watched range).
        bits_ = PageBitmap(pages_in(len));
        try {
            check_not_bookkeeping(start, len);
            const auto sm = reinterpret_cast<std::uintptr_t>(shared_map_.data());
            if (start < sm + shared_map_.size() && sm < start + len) {
                throw std::system_error(EINVAL, std::generic_category(),
                                        "range covers memwatch's own uffd handler state");
            }
        } catch (...) {
            bits_ = PageBitmap();
            throw;
        }
        start_ = start;
        len_ = len;
        shared_->dead.store(0);
        shared_->running.store(false);
        std::uint64_t v;
        while (::read(stop_.get(), &v, sizeof v) == sizeof v) {
        }  // drain a stale stop request
        try {
            uffd_register(uffd_.get(), start, len,
                          uapi::UFFDIO_REGISTER_MODE_MISSING | uapi::UFFDIO_REGISTER_MODE_WP);
        } catch (...) {
            bits_ = PageBitmap();
            start_ = len_ = 0;
            throw;
        }
        try {
            start_thread();
        } catch (...) {
            uffd_unregister(uffd_.get(), start, len);
            bits_ = PageBitmap();
            start_ = len_ = 0;
            throw;
        }
        if (const int err = uffd_writeprotect(uffd_.get(), start, len, true)) {
            detach();
            throw_errno(err, "UFFDIO_WRITEPROTECT");
        }
    }

    void detach() override {
        // Lift the protection (wakes the writers blocked on the range), then
        // unregister: it drops the uffd-wp bits and wakes missing-fault
        // waiters (they retry and find the page unregistered).  Faults
        // already queued were queued under the mmap lock that
        // UFFDIO_UNREGISTER takes for writing, so after it no new waiter can
        // appear; UFFDIO_WAKE then releases any that the handler thread has
        // not resolved yet.  Only then stop the thread.
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

protected:
    int protect(std::uintptr_t start, std::size_t len) noexcept override {
        return uffd_writeprotect(uffd_.get(), start, len, true);
    }
    void handler_lock() noexcept override { shared_->hmu.lock(); }
    void handler_unlock() noexcept override { shared_->hmu.unlock(); }
    void check_alive() override {
        // A REMOVE event releases its madvise() as soon as the handler has
        // read it, before the handler has set the bits: wait for the batch
        // being read now, so a discard that returned before this scan began
        // is in it (never longer than one batch: later ones do not count).
        const std::uint64_t begun = shared_->reads_begun.load();
        while (shared_->reads_done.load() < begun) {
            std::this_thread::yield();
        }
        if (const int why = shared_->dead.load()) {
            throw std::system_error(EIO, std::generic_category(),
                                    std::string("uffd handler thread stopped (") +
                                        std::strerror(why) +
                                        "): the range was un-protected and counts as written; "
                                        "detach and attach again");
        }
    }

private:
    void start_thread() {
        // Block every signal in the new thread (it inherits the creator's
        // mask): process-directed signals go to Python's threads, and the
        // handler is never interrupted between h1 and h2.
        sigset_t all, old;
        sigfillset(&all);
        ::pthread_sigmask(SIG_SETMASK, &all, &old);
        try {
            thread_ = std::thread([this] { handler(); });
        } catch (...) {
            ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
        // Wait until the thread runs its own code: whatever thread start-up
        // does in libc happens before anything is protected.
        while (!shared_->running.load()) {
            std::this_thread::yield();
        }
    }

    // The handler cannot go on (the fd reports an error): writers must not
    // hang.  Un-protect and unregister the range (waking every blocked
    // writer), count it all as written, and make the next scan()/reset()
    // raise.
    void die(int why) noexcept {
        shared_->hmu.lock();
        bits_.set_range(0, bits_.pages());
        shared_->dead.store(why ? why : EIO);
        shared_->hmu.unlock();
        (void)uffd_writeprotect(uffd_.get(), start_, len_, false);
        uffd_unregister(uffd_.get(), start_, len_);
        uffd_wake(uffd_.get(), start_, len_);
    }

    void handler() noexcept {
        shared_->running.store(true);
        pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
        uapi::uffd_msg msgs[16];
        for (;;) {
            const int pr = ::poll(fds, 2, -1);
            if (pr < 0) {
                if (errno == EINTR) {
                    continue;
                }
                die(errno);
                return;
            }
            if (fds[1].revents) {
                // detach() unregistered the range first, so no new message
                // can be queued; answer what is left (a REMOVE event left
                // unread would block its madvise() caller until close).
                drain();
                return;
            }
            if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
                die(EIO);
                return;
            }
            shared_->reads_begun.fetch_add(1);
            const ssize_t r = ::read(uffd_.get(), msgs, sizeof msgs);
            if (r < 0) {
                const int err = errno;
                shared_->reads_done.fetch_add(1);
                if (err == EAGAIN || err == EINTR) {
                    continue;  // another wakeup consumed it
                }
                die(err);
                return;
            }
            handle(msgs, static_cast<std::size_t>(r) / sizeof(uapi::uffd_msg));
            shared_->reads_done.fetch_add(1);
        }
    }

    void drain() noexcept {
        uapi::uffd_msg msgs[16];
        for (;;) {
            const ssize_t r = ::read(uffd_.get(), msgs, sizeof msgs);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) {
                    continue;
                }
                return;  // EAGAIN: empty
            }
            handle(msgs, static_cast<std::size_t>(r) / sizeof(uapi::uffd_msg));
        }
    }

    void handle(const uapi::uffd_msg *msgs, std::size_t nmsg) noexcept {
        const std::size_t ps = page_size();
        for (std::size_t i = 0; i < nmsg; ++i) {
            const auto &msg = msgs[i];
            if (msg.event == kEventRemove) {
                // arg.remove = {start, end}, over pagefault.{flags, address}.
                const std::uintptr_t a = msg.arg.reserved.reserved1;
                const std::uintptr_t b = msg.arg.reserved.reserved2;
                const std::uintptr_t lo = std::max<std::uintptr_t>(a, start_);
                const std::uintptr_t hi = std::min<std::uintptr_t>(b, start_ + len_);
                if (lo < hi && len_) {
                    shared_->hmu.lock();
                    bits_.set_range((lo - start_) / ps, (hi - start_ + ps - 1) / ps);
                    shared_->hmu.unlock();
                }
                continue;
            }
            if (msg.event != uapi::UFFD_EVENT_PAGEFAULT) {
                continue;
            }
            const std::uintptr_t page = msg.arg.pagefault.address & ~(std::uintptr_t(ps) - 1);
            const bool in_range = page >= start_ && page < start_ + len_;
            const auto flags = msg.arg.pagefault.flags;
            const bool write = (flags & uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0;
            bool wake = true;
            shared_->hmu.lock();
            if (flags & uapi::UFFD_PAGEFAULT_FLAG_WP) {
                // (h1) record, (h2) un-protect and wake, in one ioctl and
                // under the lock: see the top.  (Waking after the unlock let
                // a scan waiting on the lock re-protect P before the writer
                // was even woken: it then faulted again, one more report.)
                if (in_range) {
                    bits_.set((page - start_) / ps);
                }
                // The ioctl wakes only if it succeeded: else wake below.
                wake = uffd_writeprotect(uffd_.get(), page, ps, false) != 0;
            } else {
                // Missing: populate with zeros.  A write: record first,
                // map writable.  A read: map write-protected.  UFFDIO_COPY
                // wakes the waiter itself.
                if (write && in_range) {
                    bits_.set((page - start_) / ps);
                }
                const int e = uffd_copy(uffd_.get(), page, zero_page_, ps, !write);
                // EEXIST: a racing fault populated it (if it was a read,
                // the page is write-protected and the retried write
                // faults again); ENOENT/ESRCH: the range went away.
                // Either way, wake the waiter below.
                wake = e != 0;
            }
            shared_->hmu.unlock();
            if (wake) {
                uffd_wake(uffd_.get(), page, ps);
            }
        }
    }

    Mapping shared_map_;
    HandlerShared *shared_ = nullptr;
    const char *zero_page_ = nullptr;
    Fd uffd_;
    Fd stop_;
    bool user_mode_only_ = false;
    std::thread thread_;
};

}  // namespace

std::unique_ptr<Mechanism> make_uffd() { return std::make_unique<Uffd>(); }

bool uffd_user_mode_only() noexcept {
    int err = 0;
    bool umo = false;
    (void)uffd_offered_features(err, umo);
    return err == 0 && umo;
}

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
    return {};
}

}  // namespace memwatch
