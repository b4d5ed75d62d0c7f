// Shared helpers: errno -> exception, page math, an owning fd, and the
// atomic page bitmap used by the fault-driven mechanisms (uffd, mprotect).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace memwatch {

// Throw std::system_error(err) whose what() names the failing call.  The
// binding layer turns it into OSError(err, ...), so ESRCH becomes
// ProcessLookupError, EACCES PermissionError, and so on.
[[noreturn]] void throw_errno(int err, const char *what);
// Same, with the current errno (read first, before anything can clobber it).
[[noreturn]] void throw_errno(const char *what);

std::size_t page_size() noexcept;

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
class PageBitmap {
public:
    PageBitmap() noexcept = default;
    explicit PageBitmap(std::size_t npages);
    std::size_t pages() const noexcept { return npages_; }
    std::size_t words() const noexcept { return (npages_ + 63) / 64; }
    void set(std::size_t page) noexcept {
        words_[page / 64].fetch_or(std::uint64_t{1} << (page % 64), std::memory_order_acq_rel);
    }
    std::atomic<std::uint64_t> &word(std::size_t i) noexcept { return words_[i]; }
    void clear_all() noexcept;
    // Clear the bits of pages [first, last) (bits outside stay as they are).
    void clear_range(std::size_t first, std::size_t last) noexcept;

private:
    std::unique_ptr<std::atomic<std::uint64_t>[]> words_;
    std::size_t npages_ = 0;
};

// The shared scan loop of the bitmap mechanisms.  Reports set bits of pages
// [first, first+npages) (bitmap indexes) as byte offsets relative to page
// `first` into out[0..cap).  With reset, the reported bits are cleared with
// fetch_and (bits set concurrently stay set) and reprotect(first_page, n)
// is called for every run of consecutive reported pages, *after* their bits
// were cleared: see the ordering argument in uffd.cpp.
template <class Reprotect>
std::size_t bitmap_scan(PageBitmap &bm, std::size_t first, std::size_t npages, std::uint64_t *out,
                        std::size_t cap, bool reset, Reprotect &&reprotect) {
    const std::size_t ps = page_size();
    const std::size_t last = first + npages;  // exclusive
    std::size_t n = 0;
    std::size_t run_start = 0, run_len = 0;
    auto flush = [&]() {
        if (run_len) {
            reprotect(run_start, run_len);
            run_len = 0;
        }
    };
    for (std::size_t w = first / 64; w * 64 < last && n < cap; ++w) {
        std::uint64_t bits = bm.word(w).load(std::memory_order_acquire);
        // Mask out pages outside [first, last).
        const std::size_t base = w * 64;
        if (base < first) {
            bits &= ~std::uint64_t{0} << (first - base);
        }
        if (base + 64 > last) {
            bits &= (last - base >= 64) ? ~std::uint64_t{0}
                                         : ((std::uint64_t{1} << (last - base)) - 1);
        }
        std::uint64_t taken = 0;
        while (bits && n < cap) {
            const unsigned b = static_cast<unsigned>(__builtin_ctzll(bits));
            bits &= bits - 1;
            taken |= std::uint64_t{1} << b;
            out[n++] = static_cast<std::uint64_t>(base + b - first) * ps;
        }
        if (reset && taken) {
            bm.word(w).fetch_and(~taken, std::memory_order_acq_rel);
            std::uint64_t t = taken;
            while (t) {
                const std::size_t page = base + static_cast<unsigned>(__builtin_ctzll(t));
                t &= t - 1;
                if (run_len && run_start + run_len == page) {
                    ++run_len;
                } else {
                    flush();
                    run_start = page;
                    run_len = 1;
                }
            }
        }
    }
    flush();
    return n;
}

}  // namespace memwatch
