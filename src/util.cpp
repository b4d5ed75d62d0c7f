#include "util.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <system_error>

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

namespace memwatch {

void throw_errno(int err, const char *what) {
    throw std::system_error(err, std::generic_category(), what);
}

void throw_errno(const char *what) {
    const int err = errno;
    throw_errno(err, what);
}

std::size_t page_size() noexcept {
    static const std::size_t ps = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return ps;
}

namespace {
std::atomic<pid_t> g_pid{0};
void refresh_pid() noexcept { g_pid.store(::getpid(), std::memory_order_relaxed); }
struct PidInit {
    PidInit() noexcept {
        refresh_pid();
        ::pthread_atfork(nullptr, nullptr, refresh_pid);
    }
} g_pid_init;
}  // namespace

pid_t current_pid() noexcept { return g_pid.load(std::memory_order_relaxed); }

void Fd::reset(int fd) noexcept {
    if (fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = fd;
}

Mapping::Mapping(std::size_t len) : len_(round_up_pages(len)) {
    addr_ = ::mmap(nullptr, len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr_ == MAP_FAILED) {
        throw_errno("mmap");
    }
}

Mapping::~Mapping() { ::munmap(addr_, len_); }

namespace {
std::size_t round_up_to(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
}  // namespace

PageBitmap::PageBitmap(std::size_t npages) : npages_(npages) {
    if (npages == 0) {
        return;
    }
    const std::size_t nwords = (npages + 63) / 64;
    const std::size_t ngroups = (nwords + kGroupWords - 1) / kGroupWords;
    const std::size_t sum_bytes = round_up_to(((ngroups + 63) / 64) * 8, page_size());
    const std::size_t word_bytes = round_up_to(nwords * 8, page_size());
    map_len_ = sum_bytes + word_bytes;
    // Fresh anonymous memory reads as zero: nothing to clear, nothing resident.
    void *m = ::mmap(nullptr, map_len_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        map_len_ = 0;
        npages_ = 0;
        throw_errno("mmap (page bitmap)");
    }
    map_ = m;
    sum_ = static_cast<std::atomic<std::uint64_t> *>(m);
    words_ = reinterpret_cast<std::atomic<std::uint64_t> *>(static_cast<char *>(m) + sum_bytes);
}

PageBitmap::~PageBitmap() {
    if (map_) {
        ::munmap(map_, map_len_);
    }
}

void PageBitmap::put_word(std::size_t w, std::uint64_t mask) noexcept {
    if (!mask) {
        return;
    }
    words_[w].fetch_or(mask);
    const std::size_t g = w / kGroupWords;
    sum_[g / 64].fetch_or(std::uint64_t{1} << (g % 64));
}

void PageBitmap::set_range(std::size_t first, std::size_t last) noexcept {
    while (first < last) {
        const std::size_t w = first / 64, b = first % 64;
        const std::size_t n = std::min<std::size_t>(64 - b, last - first);
        const std::uint64_t m = (n == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << n) - 1)) << b;
        put_word(w, m);
        first += n;
    }
}

std::size_t PageBitmap::find_next(std::size_t from, std::size_t last) const noexcept {
    while (from < last) {
        const std::size_t w = from / 64;
        const std::size_t g = w / kGroupWords;
        const std::uint64_t s = sum_[g / 64].load(std::memory_order_acquire) >> (g % 64);
        if (!(s & 1)) {
            // Skip to the next group whose summary bit is set.
            std::size_t ng;
            if (s == 0) {
                ng = (g / 64 + 1) * 64;
            } else {
                ng = g + static_cast<std::size_t>(__builtin_ctzll(s));
            }
            if (ng >= (last + kGroupPages - 1) / kGroupPages) {
                return last;
            }
            from = ng * kGroupPages;
            continue;
        }
        const std::size_t gend = (g + 1) * kGroupWords;  // word index
        for (std::size_t i = w; i < gend && i * 64 < last; ++i) {
            std::uint64_t bits = words_[i].load(std::memory_order_acquire);
            if (i == w) {
                bits &= ~std::uint64_t{0} << (from % 64);
            }
            if (bits) {
                const std::size_t p = i * 64 + static_cast<std::size_t>(__builtin_ctzll(bits));
                return p < last ? p : last;
            }
        }
        from = gend * 64;
    }
    return last;
}

void PageBitmap::clear_all() noexcept { clear_range(0, npages_); }

void PageBitmap::clear_range(std::size_t first, std::size_t last) noexcept {
    if (first >= last) {
        return;
    }
    std::size_t p = first;
    while (p < last) {
        const std::size_t g = p / kGroupPages;
        const std::size_t gstart = g * kGroupPages, gend = gstart + kGroupPages;
        const std::uint64_t sbit = std::uint64_t{1} << (g % 64);
        const std::size_t stop = std::min(last, gend);
        if (!(sum_[g / 64].load() & sbit)) {
            p = stop;  // group never set since its last whole clear
            continue;
        }
        const bool whole = p == gstart && stop == gend;
        if (whole) {
            // Summary first: a concurrent set() sets word then summary, so it
            // either survives completely or is cleared completely (or leaves
            // a stale summary bit, which is harmless).
            sum_[g / 64].fetch_and(~sbit);
        }
        const std::size_t w0 = p / 64, w1 = (stop + 63) / 64;
        for (std::size_t w = w0; w < w1; ++w) {
            const std::size_t lo = std::max(p, w * 64), hi = std::min(stop, w * 64 + 64);
            const std::size_t n = hi - lo;
            const std::uint64_t m =
                (n == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << n) - 1)) << (lo % 64);
            if (n == 64) {
                words_[w].store(0);
            } else {
                words_[w].fetch_and(~m);
            }
        }
        p = stop;
    }
}

}  // namespace memwatch
