// Mechanism "mprotect": PROT_READ on the watched pages and one process-wide
// SIGSEGV handler that records the first write to each page and makes it
// writable again.
//
// The handler (async-signal-safe: atomics and raw syscalls only, no locks,
// no allocation) looks the faulting address up in a fixed table of watched
// ranges.  A fault outside every watched range, or not a write, is chained to
// the handler that was installed before ours; if that was SIG_DFL (or
// SIG_IGN), the default disposition is restored and the handler returns, so
// the faulting instruction re-executes and the process dies the normal way
// (core dump, faulthandler output if faulthandler was installed before us).
//
// SA_ONSTACK: a stack overflow is a SIGSEGV too; with SA_ONSTACK it runs on
// the thread's alternate stack if there is one (faulthandler sets one up),
// so chaining to faulthandler still works for that crash.  SIGBUS is not
// ours (PROT_READ faults are SIGSEGV/SEGV_ACCERR), so it is left alone.
//
// Ordering against scan(reset=True) is the one in uffd.cpp: the handler
// un-protects (mprotect RW), then sets the bit, then returns (the write
// retries only after that); scan clears the bits it reports, then
// re-protects those pages.
//
// Limit (sees_kernel_writes=false): the kernel does not raise SIGSEGV for its
// own accesses; a read(2) into a clean watched page fails with EFAULT.
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "mechanism.hpp"
#include "util.hpp"

namespace memwatch {

const Caps mprotect_caps = {"mprotect", /*remote=*/false, /*partial_reset=*/true,
                            /*atomic=*/true, /*sees_kernel_writes=*/false,
                            /*false_positives=*/true};

namespace {

constexpr std::size_t kSlots = 256;

struct Slot {
    std::atomic<bool> active{false};
    std::atomic<std::uintptr_t> start{0};
    std::atomic<std::uintptr_t> end{0};
    std::atomic<PageBitmap *> bits{nullptr};
    std::atomic<int> users{0};  // signal handlers inside this slot right now
};

Slot g_slots[kSlots];
std::mutex g_install_mu;  // attach/detach only, never in the handler
int g_installed = 0;      // attached ranges (under g_install_mu)
struct sigaction g_prev;  // written before our handler is installed
std::atomic<unsigned long> g_detaches{0};  // ranges ever detached (see writable_now)

bool is_write_fault(void *ucv) noexcept {
#if defined(__x86_64__) || defined(__i386__)
    const auto *uc = static_cast<const ucontext_t *>(ucv);
    return (uc->uc_mcontext.gregs[REG_ERR] & 0x2) != 0;  // x86 page-fault error code: W/R bit
#else
    (void)ucv;
    return true;  // no portable way to tell: any access fault in a watched range counts
#endif
}

bool handle_ours(std::uintptr_t addr) noexcept {
    const std::size_t ps = page_size();
    for (Slot &s : g_slots) {
        if (!s.active.load(std::memory_order_acquire)) {
            continue;
        }
        s.users.fetch_add(1, std::memory_order_acq_rel);
        // Re-check under `users`: detach waits for users == 0 after clearing
        // `active`, so bits stays valid while we hold the count.
        PageBitmap *bits = s.bits.load(std::memory_order_acquire);
        const std::uintptr_t start = s.start.load(std::memory_order_acquire);
        const std::uintptr_t end = s.end.load(std::memory_order_acquire);
        bool hit = false;
        if (s.active.load(std::memory_order_acquire) && bits && addr >= start && addr < end) {
            const std::uintptr_t page = addr & ~(std::uintptr_t(ps) - 1);
            if (::mprotect(reinterpret_cast<void *>(page), ps, PROT_READ | PROT_WRITE) == 0) {
                bits->set((page - start) / ps);
                hit = true;
            }
        }
        s.users.fetch_sub(1, std::memory_order_acq_rel);
        if (hit) {
            return true;
        }
    }
    return false;
}

// Is the page of `addr` writable now?  Parses /proc/self/maps with
// open/read/close only (async-signal-safe, no allocation).  Used for faults
// that are no longer ours: a write that faulted on a watched page while
// another thread detached the range (made it writable and freed its slot)
// must be retried, not treated as a crash.
bool writable_now(std::uintptr_t addr) noexcept {
    const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    char chunk[1024];
    char line[128];
    std::size_t len = 0;
    bool result = false, done = false;
    auto parse = [&]() {
        // "start-end perms ..." with hex addresses.
        std::uintptr_t v[2] = {0, 0};
        std::size_t i = 0;
        for (int k = 0; k < 2; ++k) {
            for (; i < len; ++i) {
                const char c = line[i];
                int d;
                if (c >= '0' && c <= '9') {
                    d = c - '0';
                } else if (c >= 'a' && c <= 'f') {
                    d = c - 'a' + 10;
                } else {
                    break;
                }
                v[k] = v[k] * 16 + static_cast<std::uintptr_t>(d);
            }
            ++i;  // skip '-' then ' '
        }
        if (addr >= v[0] && addr < v[1]) {
            done = true;
            result = i + 1 < len && line[i + 1] == 'w';
        }
    };
    while (!done) {
        const ssize_t r = ::read(fd, chunk, sizeof chunk);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        for (ssize_t j = 0; j < r && !done; ++j) {
            if (chunk[j] == '\n') {
                parse();
                len = 0;
            } else if (len < sizeof line) {
                line[len++] = chunk[j];
            }
        }
    }
    ::close(fd);
    return result;
}

void segv_handler(int sig, siginfo_t *si, void *uc) {
    const int saved_errno = errno;
    if (si && si->si_code == SEGV_ACCERR && is_write_fault(uc)) {
        const auto addr = reinterpret_cast<std::uintptr_t>(si->si_addr);
        if (handle_ours(addr) ||
            (g_detaches.load(std::memory_order_acquire) != 0 && writable_now(addr))) {
            errno = saved_errno;
            return;  // retry the write
        }
    }
    errno = saved_errno;
    // Not ours: chain.
    if (g_prev.sa_flags & SA_SIGINFO) {
        g_prev.sa_sigaction(sig, si, uc);
        return;
    }
    if (g_prev.sa_handler == SIG_DFL || g_prev.sa_handler == SIG_IGN) {
        struct sigaction dfl;
        std::memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        ::sigaction(sig, &dfl, nullptr);
        return;  // re-executes the faulting access: default action (death)
    }
    g_prev.sa_handler(sig);
}

bool g_handler_installed = false;  // under g_install_mu

void install_locked() {
    ++g_installed;
    if (g_handler_installed) {
        return;
    }
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGSEGV, nullptr, &g_prev) != 0 || ::sigaction(SIGSEGV, &sa, nullptr) != 0) {
        --g_installed;
        throw_errno("sigaction(SIGSEGV)");
    }
    g_handler_installed = true;
}

void uninstall_locked() {
    // Deliberately does not restore the previous SIGSEGV action when the last
    // range detaches.  A thread whose write faulted on a watched page just
    // before another thread detached the range may have its SIGSEGV delivered
    // only after the detach returned (the signal is raised after the fault
    // dropped the mmap lock, and delivered on the way back to user space).
    // Were the previous handler back in place by then, that retryable fault
    // would kill the process (seen in test_concurrent_detach_while_scanning).
    // With no range attached our handler is a pass-through: it retries a
    // write fault on a page that is writable by now, and chains everything
    // else to the previous handler exactly as before.
    --g_installed;
}

class Mprotect final : public Mechanism {
public:
    ~Mprotect() override {
        if (slot_) {
            detach();
        }
    }

    void attach(std::uintptr_t start, std::size_t len) override {
        bits_ = PageBitmap(pages_in(len));
        std::lock_guard<std::mutex> lk(g_install_mu);
        Slot *slot = nullptr;
        for (Slot &s : g_slots) {
            if (!s.active.load(std::memory_order_acquire) && !s.bits.load()) {
                slot = &s;
                break;
            }
        }
        if (!slot) {
            throw std::invalid_argument("too many MprotectTracker ranges attached (limit 256)");
        }
        install_locked();
        slot->start.store(start, std::memory_order_release);
        slot->end.store(start + len, std::memory_order_release);
        slot->bits.store(&bits_, std::memory_order_release);
        slot->active.store(true, std::memory_order_release);
        if (::mprotect(reinterpret_cast<void *>(start), len, PROT_READ) != 0) {
            const int err = errno;
            release_slot(slot);
            uninstall_locked();
            throw_errno(err, "mprotect");
        }
        slot_ = slot;
        start_ = start;
        len_ = len;
    }

    void detach() override {
        // Writable again first: from here on no fault in the range is ours.
        (void)::mprotect(reinterpret_cast<void *>(start_), len_, PROT_READ | PROT_WRITE);
        std::lock_guard<std::mutex> lk(g_install_mu);
        if (slot_) {
            g_detaches.fetch_add(1, std::memory_order_release);
            release_slot(slot_);
            uninstall_locked();
        }
        slot_ = nullptr;
        bits_ = PageBitmap();
        start_ = len_ = 0;
    }

    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override {
        const std::size_t ps = page_size();
        int err = 0;
        const std::size_t n = bitmap_scan(bits_, (start - start_) / ps, len / ps, out, cap, reset,
                                          [&](std::size_t page, std::size_t npages) {
                                              if (::mprotect(reinterpret_cast<void *>(
                                                                 start_ + page * ps),
                                                             npages * ps, PROT_READ) != 0 &&
                                                  !err) {
                                                  err = errno;
                                              }
                                          });
        if (err) {
            throw_errno(err, "mprotect");
        }
        return n;
    }

    void reset(std::uintptr_t start, std::size_t len) override {
        const std::size_t ps = page_size();
        const std::size_t first = (start - start_) / ps, last = first + len / ps;
        bits_.clear_range(first, last);
        if (::mprotect(reinterpret_cast<void *>(start), len, PROT_READ) != 0) {
            throw_errno("mprotect");
        }
    }

private:
    static void release_slot(Slot *s) noexcept {
        s->active.store(false, std::memory_order_release);
        while (s->users.load(std::memory_order_acquire) != 0) {
            std::this_thread::yield();
        }
        s->bits.store(nullptr, std::memory_order_release);
    }

    PageBitmap bits_;
    Slot *slot_ = nullptr;
    std::uintptr_t start_ = 0;
    std::size_t len_ = 0;
};

}  // namespace

std::unique_ptr<Mechanism> make_mprotect() { return std::make_unique<Mprotect>(); }

Probe mprotect_probe() {
    try {
        Mapping m(page_size());
        if (::mprotect(m.data(), m.size(), PROT_READ) != 0 ||
            ::mprotect(m.data(), m.size(), PROT_READ | PROT_WRITE) != 0) {
            return {false, "failed", errno};
        }
    } catch (const std::system_error &e) {
        return {false, "failed", e.code().value()};
    }
    return {};
}

}  // namespace memwatch
