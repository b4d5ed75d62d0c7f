// Shared helpers: errno -> exception, page math, an owning fd, and the
// atomic page bitmap used by the fault-driven mechanisms (uffd, mprotect).
#pragma once

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <sys/types.h>

namespace memwatch {

// Throw std::system_error(err) whose what() names the failing call.  The
// binding layer turns it into OSError(err, ...), so ESRCH becomes
// ProcessLookupError, EACCES PermissionError, and so on.
[[noreturn]] void throw_errno(int err, const char *what);
// Same, with the current errno (read first, before anything can clobber it).
[[noreturn]] void throw_errno(const char *what);

std::size_t page_size() noexcept;

// getpid() without a system call: cached, refreshed in a fork() child by a
// pthread_atfork handler (before any Python at-fork hook runs).
pid_t current_pid() noexcept;

inline bool page_aligned(std::uintptr_t addr) noexcept {
    return (addr & (page_size() - 1)) == 0;
}
inline std::size_t pages_in(std::size_t len) noexcept {
    return (len + page_size() - 1) / page_size();
}
inline std::size_t round_up_pages(std::size_t len) noexcept {
    return pages_in(len) * page_size();
}

// An owning file descriptor (closes on destruction; movable, not copyable).
class Fd {
public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd &operator=(Fd &&o) noexcept {
        if (this != &o) {
            reset(std::exchange(o.fd_, -1));
        }
        return *this;
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    ~Fd() { reset(); }
    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

// An anonymous private mapping (a scratch page for the probes).
class Mapping {
public:
    explicit Mapping(std::size_t len);  // throws std::system_error
    Mapping(const Mapping &) = delete;
    Mapping &operator=(const Mapping &) = delete;
    ~Mapping();
    char *data() const noexcept { return static_cast<char *>(addr_); }
    std::size_t size() const noexcept { return len_; }

private:
    void *addr_;
    std::size_t len_;
};

// One bit per page, set from a fault handler (a thread or a signal handler:
// lock-free and async-signal-safe), collected by scan().
//
// The storage is its own anonymous mapping (MAP_NORESERVE), never the malloc
// heap: a fault handler writes it, so it must not lie on a page that some
// Watch protects (a heap buffer's neighbours), and a 1 TiB range must cost
// nothing until bits are set (32 MiB of address space, no memory).  Two
// levels: one bit per page, and a summary bit per group of 64 words (4096
// pages) that is set, after the word bit, by every set(); walks skip groups
// whose summary bit is clear.  A summary bit may be stale (set, group clean):
// that costs one 512-byte look, never a missed bit.
class PageBitmap {
public:
    static constexpr std::size_t kGroupWords = 64;            // words per summary bit
    static constexpr std::size_t kGroupPages = 64 * kGroupWords;

    PageBitmap() noexcept = default;
    explicit PageBitmap(std::size_t npages);  // throws std::system_error (mmap)
    PageBitmap(PageBitmap &&o) noexcept { swap(o); }
    PageBitmap &operator=(PageBitmap &&o) noexcept {
        PageBitmap tmp(std::move(o));
        swap(tmp);
        return *this;
    }
    PageBitmap(const PageBitmap &) = delete;
    PageBitmap &operator=(const PageBitmap &) = delete;
    ~PageBitmap();

    std::size_t pages() const noexcept { return npages_; }
    std::size_t words() const noexcept { return (npages_ + 63) / 64; }
    void set(std::size_t page) noexcept {
        words_[page / 64].fetch_or(std::uint64_t{1} << (page % 64));
        const std::size_t g = page / kGroupPages;
        sum_[g / 64].fetch_or(std::uint64_t{1} << (g % 64));
    }
    void set_range(std::size_t first, std::size_t last) noexcept;
    bool test(std::size_t page) const noexcept {
        return (words_[page / 64].load() >> (page % 64)) & 1;
    }
    std::atomic<std::uint64_t> &word(std::size_t i) noexcept { return words_[i]; }
    // Clear `mask` in word w; returns the bits of mask that were set.
    std::uint64_t take_word(std::size_t w, std::uint64_t mask) noexcept {
        return words_[w].fetch_and(~mask) & mask;
    }
    // Set `mask` in word w (and its summary bit).
    void put_word(std::size_t w, std::uint64_t mask) noexcept;
    // First set bit in [from, last), or last.
    std::size_t find_next(std::size_t from, std::size_t last) const noexcept;
    void clear_all() noexcept;
    // Clear the bits of pages [first, last) (bits outside stay as they are).
    void clear_range(std::size_t first, std::size_t last) noexcept;
    // Is p inside this bitmap's own storage?
    bool contains_addr(const void *p) const noexcept {
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        const auto b = reinterpret_cast<std::uintptr_t>(map_);
        return map_ && a >= b && a < b + map_len_;
    }
    std::uintptr_t storage() const noexcept { return reinterpret_cast<std::uintptr_t>(map_); }
    std::size_t storage_len() const noexcept { return map_len_; }

private:
    void swap(PageBitmap &o) noexcept {
        std::swap(map_, o.map_);
        std::swap(map_len_, o.map_len_);
        std::swap(sum_, o.sum_);
        std::swap(words_, o.words_);
        std::swap(npages_, o.npages_);
    }
    void *map_ = nullptr;
    std::size_t map_len_ = 0;
    std::atomic<std::uint64_t> *sum_ = nullptr;    // one bit per group
    std::atomic<std::uint64_t> *words_ = nullptr;  // one bit per page
    std::size_t npages_ = 0;
};

// The shared scan loop of the bitmap mechanisms.  Reports set bits of pages
// [first, first+npages) (bitmap indexes) as byte offsets relative to page
// `first` into out[0..cap).  With reset, the reported bits are taken
// (fetch_and: bits set concurrently stay set) one word at a time, and
// reprotect(first_page, n) -> errno is called for every run of consecutive
// taken pages of that word, *after* their bits were cleared (see the
// ordering argument in uffd.cpp).  `lock`/`unlock` bracket each word's
// take+reprotect (the uffd handler thread takes the same lock; out[] is
// written outside it, so a watched out buffer cannot deadlock).
// A failing reprotect never loses a reported write: the bits of its run are
// set again (a false positive at the next scan); with ENOMEM (mprotect past
// vm.max_map_count) the scan goes on, with any other errno every bit taken
// by this call is set again and the errno is returned through *err.
struct NoLock {
    void lock() noexcept {}
    void unlock() noexcept {}
};

template <class Reprotect, class Lock = NoLock>
std::size_t bitmap_scan(PageBitmap &bm, std::size_t first, std::size_t npages, std::uint64_t *out,
                        std::size_t cap, bool reset, Reprotect &&reprotect, int *err,
                        Lock &&lk = NoLock{}) {
    const std::size_t ps = page_size();
    const std::size_t last = first + npages;  // exclusive
    std::size_t n = 0;
    *err = 0;
    std::size_t p = bm.find_next(first, last);
    while (p < last && n < cap) {
        const std::size_t w = p / 64;
        const std::size_t base = w * 64;
        std::uint64_t mask = ~std::uint64_t{0} << (p - base);
        if (base + 64 > last) {
            mask &= (std::uint64_t{1} << (last - base)) - 1;
        }
        std::uint64_t bits = bm.word(w).load() & mask;
        // Only as many as fit.
        std::uint64_t fit = 0;
        {
            std::uint64_t b = bits;
            std::size_t room = cap - n;
            while (b && room) {
                fit |= b & (~b + 1);
                b &= b - 1;
                --room;
            }
        }
        std::uint64_t taken = fit;
        if (reset && fit) {
            lk.lock();
            taken = bm.take_word(w, fit);
            std::uint64_t t = taken;
            while (t) {
                const unsigned b0 = static_cast<unsigned>(__builtin_ctzll(t));
                const std::uint64_t from_b0 = t >> b0;
                const unsigned len = static_cast<unsigned>(
                    (~from_b0) ? __builtin_ctzll(~from_b0) : 64 - b0);
                const int e = reprotect(base + b0, static_cast<std::size_t>(len));
                if (e) {
                    const std::uint64_t run =
                        (len >= 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << len) - 1)) << b0;
                    bm.put_word(w, run);  // still writable: still dirty
                    if (e != ENOMEM && !*err) {
                        *err = e;
                    }
                }
                t &= ~((len >= 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << len) - 1)) << b0);
            }
            lk.unlock();
            if (*err) {
                bm.put_word(w, taken);  // this word never reached out[]
                break;
            }
        }
        std::uint64_t t = taken;
        while (t) {
            out[n++] = static_cast<std::uint64_t>(base + static_cast<unsigned>(__builtin_ctzll(t)) -
                                                  first) *
                       ps;
            t &= t - 1;
        }
        if (base + 64 >= last) {
            break;
        }
        p = bm.find_next(base + 64, last);
    }
    if (*err) {
        // Hard failure: give back every bit this call took (the caller throws
        // and the user never sees out[]).
        for (std::size_t i = 0; i < n; ++i) {
            bm.set(first + out[i] / ps);
        }
    }
    return n;
}

}  // namespace memwatch
