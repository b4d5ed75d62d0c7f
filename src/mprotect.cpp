// Mechanism "mprotect": PROT_READ on the watched pages and one process-wide
// SIGSEGV handler that records the first write to each page and makes it
// writable again.
//
// The handler (async-signal-safe: atomics and raw syscalls only, no locks,
// no allocation) looks the faulting address up in a fixed table of watched
// ranges.  Everything it writes (slot table, bitmaps) is in mappings of its
// own, which attach() refuses to watch, so it never faults on its own
// bookkeeping.  A fault outside every watched range, or not a write, is
// chained to the action that was installed before ours, run as the kernel
// would have run it (its sa_mask, SA_NODEFER, SA_RESETHAND); if that was
// SIG_DFL (or SIG_IGN), the default disposition is restored and the faulting
// instruction re-executes, so the process dies the normal way.  A SIGSEGV
// sent with kill(2)/raise(3) (si_code <= 0) is never swallowed: previous
// handler, or default action and re-raise.
//
// Others replace the SIGSEGV action (faulthandler.enable()/disable(),
// signal.signal()): attach(), reset() and scan(reset=True) re-install ours
// on top, and the binding re-installs it right after those Python calls.
//
// SA_ONSTACK: a stack overflow is a SIGSEGV too; with SA_ONSTACK it runs on
// the thread's alternate stack if there is one (faulthandler sets one up,
// on the heap: attach() moves the attaching thread's to a mapping of its own
// when the range covers it).  SIGBUS is not ours.
//
// Ordering against scan(reset=True) is the one in uffd.cpp's old order: the
// handler un-protects (mprotect RW), then sets the bit, then returns (the
// write retries only after that); scan clears the bits it reports, then
// re-protects those pages.  A scan between the two re-protects a page whose
// bit is set afterwards: a false positive, never a loss.
//
// Past vm.max_map_count the per-page mprotect fails (ENOMEM): the handler
// then makes the whole range writable and counts every page as written, and
// a scan that cannot re-protect keeps the pages dirty (false positives).
//
// Limit (sees_kernel_writes=false): the kernel does not raise SIGSEGV for its
// own accesses; a read(2) into a clean watched page fails with EFAULT.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "bitmap_mechanism.hpp"
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
    std::atomic<pid_t> pid{0};  // the process that attached it (a fork() child's copy is stale)
};

// Everything the handler writes lives in one anonymous mapping of its own
// (plus the bitmaps, each its own mapping): never on a page a Watch can
// protect.  attach() refuses ranges that cover it.  Allocated once, never
// freed (a handler may still be running on another thread).
constexpr std::size_t kPrevRing = 16;
struct Table {
    Slot slots[kSlots];
    // Previous SIGSEGV actions, published through `prev`: a writer fills an
    // entry that is not the published one, then stores the pointer.
    struct sigaction prev_ring[kPrevRing];
    unsigned prev_next;  // under g_install_mu
    std::atomic<const struct sigaction *> prev;
    // prev_ring is a stack (prev_next entries, the top published): each
    // re-install over someone pushes what it replaced, and
    // sigsegv_forget_top() pops after faulthandler.disable().
    std::atomic<int> chain_depth;  // handlers inside a chained call right now
    // A previous action with SA_RESETHAND that we already ran once: from
    // then on it counts as SIG_DFL (as the kernel would have reset it),
    // without uninstalling our own handler.
    std::atomic<const struct sigaction *> prev_spent;
    // The last kDetached ranges detached: only a fault inside one of them
    // can be a write that raced with its detach (see writable_now); any
    // other foreign fault is chained without reading /proc/self/maps.
    struct Range {
        std::atomic<std::uintptr_t> start, end;
    } detached[64];
    std::atomic<unsigned> detached_next;
};
static_assert(std::is_trivially_destructible<Table>::value, "lives in raw mmap'd memory");

std::atomic<Table *> g_table{nullptr};
std::mutex g_install_mu;  // attach/detach/re-install only, never in the handler

Table *table_locked() {
    Table *t = g_table.load();
    if (t) {
        return t;
    }
    void *m = ::mmap(nullptr, round_up_pages(sizeof(Table)), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        throw_errno("mmap (mprotect slot table)");
    }
    t = new (m) Table();
    t->prev_next = 0;
    t->prev.store(nullptr);
    t->chain_depth.store(0);
    t->detached_next.store(0);
    t->prev_spent.store(nullptr);
    g_table.store(t);
    return t;
}

bool is_write_fault(void *ucv) noexcept {
#if defined(__x86_64__) || defined(__i386__)
    const auto *uc = static_cast<const ucontext_t *>(ucv);
    return (uc->uc_mcontext.gregs[REG_ERR] & 0x2) != 0;  // x86 page-fault error code: W/R bit
#else
    (void)ucv;
    return true;  // no portable way to tell: any access fault in a watched range counts
#endif
}

pid_t raw_getpid() noexcept { return static_cast<pid_t>(::syscall(SYS_getpid)); }

// The write fault at addr is ours: un-protect its page (then record it).  If
// the mprotect fails (ENOMEM: the split would pass vm.max_map_count), make
// the whole slot range writable again (that merges VMAs instead of splitting)
// and count every page of it as written: false positives, not a crash.
bool resolve(Slot &s, PageBitmap *bits, std::uintptr_t start, std::uintptr_t end,
             std::uintptr_t addr) noexcept {
    const std::size_t ps = page_size();
    const std::uintptr_t page = addr & ~(std::uintptr_t(ps) - 1);
    if (::mprotect(reinterpret_cast<void *>(page), ps, PROT_READ | PROT_WRITE) == 0) {
        bits->set((page - start) / ps);
        return true;
    }
    (void)s;
    if (::mprotect(reinterpret_cast<void *>(start), end - start, PROT_READ | PROT_WRITE) == 0) {
        bits->set_range(0, (end - start) / ps);
        return true;
    }
    return false;
}

bool handle_ours(std::uintptr_t addr) noexcept {
    Table *t = g_table.load();
    if (!t) {
        return false;
    }
    pid_t me = 0;
    bool stale = false;
    for (Slot &s : t->slots) {
        // seq_cst throughout: release_slot() stores `active` then loads
        // `users`, we add to `users` then load `active` (store buffering).
        if (!s.active.load()) {
            continue;
        }
        s.users.fetch_add(1);
        // Re-check under `users`: detach waits for users == 0 after clearing
        // `active`, so bits stays valid while we hold the count.
        PageBitmap *bits = s.bits.load();
        const std::uintptr_t start = s.start.load();
        const std::uintptr_t end = s.end.load();
        bool hit = false;
        if (s.active.load() && bits && addr >= start && addr < end) {
            if (!me) {
                me = raw_getpid();
            }
            if (s.pid.load() != me) {
                stale = true;  // the parent's range, inherited through fork()
            } else {
                hit = resolve(s, bits, start, end, addr);
            }
        }
        s.users.fetch_sub(1);
        if (hit) {
            return true;
        }
    }
    if (stale) {
        // A page the parent protected: this process has no Watch on it, so
        // just let the write through.
        const std::size_t ps = page_size();
        const std::uintptr_t page = addr & ~(std::uintptr_t(ps) - 1);
        return ::mprotect(reinterpret_cast<void *>(page), ps, PROT_READ | PROT_WRITE) == 0;
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

bool recently_detached(std::uintptr_t addr) noexcept {
    Table *t = g_table.load();
    if (!t) {
        return false;
    }
    for (auto &r : t->detached) {
        if (addr >= r.start.load() && addr < r.end.load()) {
            return true;
        }
    }
    return false;
}

void set_default(int sig) noexcept {
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
}

void segv_handler(int sig, siginfo_t *si, void *uc);

bool is_ours(const struct sigaction &a) noexcept {
    return (a.sa_flags & SA_SIGINFO) && a.sa_sigaction == segv_handler;
}

// A SIGSEGV that is not ours goes to the action installed before ours,
// honouring its sa_flags/sa_mask as the kernel would have.
void chain(int sig, siginfo_t *si, void *uc) noexcept {
    Table *t = g_table.load();
    const struct sigaction *prev = t ? t->prev.load() : nullptr;
    if (prev && t->prev_spent.load() == prev) {
        prev = nullptr;  // a one-shot (SA_RESETHAND) handler already ran: default
    }
    const bool user_sent = !si || si->si_code <= 0;  // kill(2), raise(3), sigqueue(3)
    if (user_sent && t && t->chain_depth.load() > 0) {
        // The handler we chained to re-raised (faulthandler does, after
        // restoring *its* previous action, which may be ours): the chain has
        // come back to us, so finish with the default action.
        set_default(sig);
        ::raise(sig);
        return;
    }
    // SIG_DFL/SIG_IGN whatever the flags say (sa_handler and sa_sigaction
    // share storage; SA_SIGINFO with SIG_DFL must not be called as a function).
    if (!prev || prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN) {
        if (user_sent && prev && prev->sa_handler == SIG_IGN) {
            return;  // ignored before we came: still ignored
        }
        set_default(sig);
        if (user_sent) {
            ::raise(sig);  // pending until we return (SIGSEGV is blocked here)
        }
        return;  // a real fault re-executes the access: default action (death)
    }
    // Run it as the kernel would have: its sa_mask (and the signal itself
    // unless SA_NODEFER) blocked, SA_RESETHAND honoured.
    const struct sigaction p = *prev;
    if (p.sa_flags & SA_RESETHAND) {
        t->prev_spent.store(prev);
    }
    sigset_t mask = p.sa_mask, old;
    if (p.sa_flags & SA_NODEFER) {
        sigset_t unblock;
        sigemptyset(&unblock);
        sigaddset(&unblock, sig);
        ::pthread_sigmask(SIG_UNBLOCK, &unblock, &old);
        ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
    } else {
        sigaddset(&mask, sig);
        ::pthread_sigmask(SIG_BLOCK, &mask, &old);
    }
    t->chain_depth.fetch_add(1);
    if (p.sa_flags & SA_SIGINFO) {
        p.sa_sigaction(sig, si, uc);
    } else {
        p.sa_handler(sig);
    }
    t->chain_depth.fetch_sub(1);
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void segv_handler(int sig, siginfo_t *si, void *uc) {
    const int saved_errno = errno;
    if (si && si->si_code == SEGV_ACCERR && is_write_fault(uc)) {
        const auto addr = reinterpret_cast<std::uintptr_t>(si->si_addr);
        if (handle_ours(addr) || (recently_detached(addr) && writable_now(addr))) {
            errno = saved_errno;
            return;  // retry the write
        }
    }
    chain(sig, si, uc);
    errno = saved_errno;
}

// Make sure our handler is the installed SIGSEGV action (faulthandler,
// signal.signal() or anyone else may have replaced it since), remembering
// what it replaces as the action to chain to.  Under g_install_mu.
void ensure_installed_locked(Table *t) {
    struct sigaction cur;
    if (::sigaction(SIGSEGV, nullptr, &cur) != 0) {
        throw_errno("sigaction(SIGSEGV)");
    }
    if (is_ours(cur) && t->prev.load()) {
        return;
    }
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    auto publish = [t](const struct sigaction &a) {
        struct sigaction &slot = t->prev_ring[t->prev_next++ % kPrevRing];
        slot = a;
        t->prev_spent.store(nullptr);
        t->prev.store(&slot);
    };
    if (!is_ours(cur)) {
        publish(cur);
    }
    struct sigaction old;
    if (::sigaction(SIGSEGV, &sa, &old) != 0) {
        throw_errno("sigaction(SIGSEGV)");
    }
    if (!is_ours(old) && (!is_ours(cur) ? std::memcmp(&old, &cur, sizeof old) != 0 : true)) {
        publish(old);  // changed between the two calls: chain to the newest
    }
    if (!t->prev.load()) {
        struct sigaction dfl;
        std::memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        publish(dfl);
    }
}

// The VMAs of [start, start+len) from /proc/self/maps (outside any handler):
// every byte mapped, every mapping readable and writable and not
// executable.  mprotect would otherwise make a read-only mapping writable at
// detach, or drop PROT_EXEC from code.
// `inherited` lists ranges a fork() parent's slot protected: read-only
// there only because of us, so they count as read-write.
void check_vmas(std::uintptr_t start, std::size_t len,
                const std::pair<std::uintptr_t, std::uintptr_t> *inherited, std::size_t ninh) {
    std::FILE *f = std::fopen("/proc/self/maps", "re");
    if (!f) {
        throw_errno("open /proc/self/maps");
    }
    const std::uintptr_t end = start + len;
    std::uintptr_t covered = start;
    char line[512];
    std::string bad;
    while (covered < end && std::fgets(line, sizeof line, f)) {
        if (!std::strchr(line, '\n')) {
            // A long line (path): skip its rest so it cannot parse as a line.
            int c;
            while ((c = std::fgetc(f)) != EOF && c != '\n') {
            }
        }
        unsigned long lo = 0, hi = 0;
        char perms[8] = {0};
        if (std::sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) {
            continue;
        }
        if (hi <= covered) {
            continue;
        }
        if (lo > covered) {
            break;  // a hole
        }
        bool ours = false;
        if (perms[0] == 'r' && perms[1] == '-' && perms[2] == '-') {
            const std::uintptr_t a = std::max<std::uintptr_t>(lo, start);
            const std::uintptr_t b = std::min<std::uintptr_t>(hi, end);
            for (std::size_t k = 0; k < ninh && !ours; ++k) {
                ours = a >= inherited[k].first && b <= inherited[k].second;
            }
        }
        if (!ours && (perms[0] != 'r' || perms[1] != 'w' || perms[2] != '-')) {
            char buf[160];
            std::snprintf(buf, sizeof buf,
                          "mprotect: mapping %#lx-%#lx is %s, not plain read-write", lo, hi,
                          perms);
            bad = buf;
            break;
        }
        covered = hi;
    }
    std::fclose(f);
    if (!bad.empty()) {
        throw std::system_error(EACCES, std::generic_category(), bad);
    }
    if (covered < end) {
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "mprotect: range %#lx+%#lx is not entirely mapped (hole at %#lx)",
                      static_cast<unsigned long>(start), static_cast<unsigned long>(len),
                      static_cast<unsigned long>(covered));
        throw std::system_error(ENOMEM, std::generic_category(), buf);
    }
}

// The kernel writes the signal frame on the thread's alternate signal stack
// (SA_ONSTACK).  faulthandler allocates that stack with PyMem_Malloc, i.e. on
// the heap: if the watched range covers it, the SIGSEGV for the first watched
// write cannot be delivered and the process dies.  Move this thread to an
// alternate stack of its own mapping then (other threads' stacks cannot be
// changed from here: a documented limit).
void altstack_outside(std::uintptr_t start, std::size_t len) {
    stack_t ss;
    if (::sigaltstack(nullptr, &ss) != 0 || (ss.ss_flags & SS_DISABLE)) {
        return;
    }
    const auto sp = reinterpret_cast<std::uintptr_t>(ss.ss_sp);
    if (!(sp < start + len && start < sp + ss.ss_size)) {
        return;
    }
    const std::size_t size = std::max<std::size_t>(ss.ss_size, 64 * 1024);
    void *m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        throw_errno("mmap (alternate signal stack)");
    }
    stack_t ns{};
    ns.ss_sp = m;
    ns.ss_size = size;
    ns.ss_flags = 0;
    if (::sigaltstack(&ns, nullptr) != 0) {
        const int err = errno;
        ::munmap(m, size);
        throw_errno(err, "sigaltstack");
    }
    // Never unmapped: the thread may run on it at any later SIGSEGV.
}

class Mprotect final : public BitmapMechanism {
public:
    Mprotect() : BitmapMechanism("mprotect") {}
    ~Mprotect() override {
        if (slot_) {
            detach();
        }
    }

    void attach(std::uintptr_t start, std::size_t len) override {
        bits_ = PageBitmap(pages_in(len));
        std::lock_guard<std::mutex> lk(g_install_mu);
        Table *t = table_locked();
        const auto tb = reinterpret_cast<std::uintptr_t>(t);
        if (start < tb + round_up_pages(sizeof(Table)) && tb < start + len) {
            bits_ = PageBitmap();
            throw std::system_error(EINVAL, std::generic_category(),
                                    "range covers memwatch's own mprotect slot table");
        }
        try {
            check_not_bookkeeping(start, len);
        } catch (...) {
            bits_ = PageBitmap();
            throw;
        }
        const pid_t me = current_pid();
        Slot *slot = nullptr;
        std::pair<std::uintptr_t, std::uintptr_t> inherited[kSlots];
        std::size_t ninh = 0;
        for (Slot &s : t->slots) {
            if (!s.active.load()) {
                if (!slot && !s.bits.load()) {
                    slot = &s;
                }
                continue;
            }
            if (s.pid.load() != me) {
                inherited[ninh++] = {s.start.load(), s.end.load()};
                continue;  // the fork() parent's: stale here
            }
            const std::uintptr_t a = s.start.load(), b = s.end.load();
            PageBitmap *ob = s.bits.load();
            if (start < b && a < start + len) {
                bits_ = PageBitmap();
                char buf[160];
                std::snprintf(buf, sizeof buf,
                              "range overlaps the mprotect-watched range %#lx+%#lx",
                              static_cast<unsigned long>(a), static_cast<unsigned long>(b - a));
                throw std::system_error(EBUSY, std::generic_category(), buf);
            }
            if (ob && start < ob->storage() + ob->storage_len() && ob->storage() < start + len) {
                bits_ = PageBitmap();
                throw std::system_error(EINVAL, std::generic_category(),
                                        "range covers memwatch's own page bitmap");
            }
        }
        try {
            // After the overlap check: pages another of our slots protects
            // read as r--p, and that deserves EBUSY, not EACCES.
            check_vmas(start, len, inherited, ninh);
        } catch (...) {
            bits_ = PageBitmap();
            throw;
        }
        if (!slot) {
            // Reuse a stale slot of the fork() parent only when nothing else is left.
            for (Slot &s : t->slots) {
                if (s.active.load() && s.pid.load() != me) {
                    release_slot(&s);
                    slot = &s;
                    break;
                }
            }
        }
        if (!slot) {
            bits_ = PageBitmap();
            throw std::system_error(ENOSPC, std::generic_category(),
                                    "mprotect: at most 256 ranges can be watched at once");
        }
        try {
            ensure_installed_locked(t);
            altstack_outside(start, len);
        } catch (...) {
            bits_ = PageBitmap();
            throw;
        }
        slot->start.store(start);
        slot->end.store(start + len);
        slot->pid.store(me);
        slot->bits.store(&bits_);
        slot->active.store(true);
        start_ = start;
        len_ = len;
        if (::mprotect(reinterpret_cast<void *>(start), len, PROT_READ) != 0) {
            const int err = errno;
            // Undo whatever part was protected (mprotect stops at a hole
            // after changing the mappings before it).
            (void)::mprotect(reinterpret_cast<void *>(start), len, PROT_READ | PROT_WRITE);
            release_slot(slot);
            bits_ = PageBitmap();
            start_ = len_ = 0;
            throw_errno(err, "mprotect");
        }
        slot_ = slot;
    }

    void detach() override {
        // Writable again first: from here on no fault in the range is ours.
        (void)::mprotect(reinterpret_cast<void *>(start_), len_, PROT_READ | PROT_WRITE);
        std::lock_guard<std::mutex> lk(g_install_mu);
        if (slot_) {
            Table *t = g_table.load();
            auto &r = t->detached[t->detached_next.fetch_add(1) % 64];
            r.end.store(0);  // never a half-written range
            r.start.store(start_);
            r.end.store(start_ + len_);
            release_slot(slot_);
        }
        // The handler stays installed (a pass-through with no range
        // attached): a write that faulted on a watched page just before the
        // detach may have its SIGSEGV delivered only now, and must be retried
        // (test_concurrent_detach_while_scanning).
        slot_ = nullptr;
        bits_ = PageBitmap();
        start_ = len_ = 0;
    }

    void forget_in_child() noexcept override {
        // The child's copies of the pages become writable again (the
        // parent's stay protected: private mappings), and the child's copy
        // of the slot is freed.  Lock-free: an at-fork hook runs this.
        if (!slot_) {
            return;
        }
        (void)::mprotect(reinterpret_cast<void *>(start_), len_, PROT_READ | PROT_WRITE);
        slot_->active.store(false);
        slot_->bits.store(nullptr);
        slot_ = nullptr;
    }

protected:
    int protect(std::uintptr_t start, std::size_t len) noexcept override {
        return ::mprotect(reinterpret_cast<void *>(start), len, PROT_READ) == 0 ? 0 : errno;
    }
    void before_use() override { reinstall_sigsegv_handler(); }  // scan(reset)/reset

private:
    static void release_slot(Slot *s) noexcept {
        s->active.store(false);
        while (s->users.load() != 0) {
            std::this_thread::yield();
        }
        s->bits.store(nullptr);
    }

    Slot *slot_ = nullptr;
};

}  // namespace

void reinstall_sigsegv_handler() {
    Table *t = g_table.load();
    if (!t) {
        return;  // never attached: nothing to keep installed
    }
    std::lock_guard<std::mutex> lk(g_install_mu);
    ensure_installed_locked(t);
    // faulthandler.enable() after a Watch allocates its alternate signal
    // stack on the heap, possibly on watched (read-only) pages: move it.
    stack_t ss;
    if (::sigaltstack(nullptr, &ss) != 0 || (ss.ss_flags & SS_DISABLE)) {
        return;
    }
    const auto sp = reinterpret_cast<std::uintptr_t>(ss.ss_sp);
    const pid_t me = current_pid();
    for (Slot &s : t->slots) {
        if (s.active.load() && s.pid.load() == me) {
            const std::uintptr_t a = s.start.load(), b = s.end.load();
            if (sp < b && a < sp + ss.ss_size) {
                altstack_outside(a, b - a);
                return;
            }
        }
    }
}

void sigsegv_forget_top() {
    Table *t = g_table.load();
    if (!t) {
        return;
    }
    std::lock_guard<std::mutex> lk(g_install_mu);
    struct sigaction cur;
    if (::sigaction(SIGSEGV, nullptr, &cur) != 0 || !is_ours(cur) || t->prev_next < 2) {
        return;
    }
    --t->prev_next;
    t->prev_spent.store(nullptr);
    t->prev.store(&t->prev_ring[(t->prev_next - 1) % kPrevRing]);
}

std::unique_ptr<Mechanism> make_mprotect() { return std::make_unique<Mprotect>(); }

Probe mprotect_probe() {
    try {
        Mapping m(page_size());
        if (::mprotect(m.data(), m.size(), PROT_READ) != 0 ||
            ::mprotect(m.data(), m.size(), PROT_READ | PROT_WRITE) != 0) {
            return {false, std::string("mprotect() failed: ") + std::strerror(errno)};
        }
    } catch (const std::system_error &e) {
        return {false, std::string("mprotect probe failed: ") + e.what()};
    }
    return {true, ""};
}

}  // namespace memwatch
