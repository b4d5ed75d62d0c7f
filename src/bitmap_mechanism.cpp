#include "bitmap_mechanism.hpp"

#include <cerrno>
#include <system_error>

namespace memwatch {

std::size_t BitmapMechanism::scan(std::uintptr_t start, std::size_t len, std::uint64_t *out,
                                  std::size_t cap, bool reset) {
    if (reset) {
        before_use();
    } else {
        check_alive();
    }
    const std::size_t ps = page_size();
    int err = 0;
    struct Lk {
        BitmapMechanism *m;
        void lock() noexcept { m->handler_lock(); }
        void unlock() noexcept { m->handler_unlock(); }
    };
    const std::size_t n = bitmap_scan(
        bits_, (start - start_) / ps, len / ps, out, cap, reset,
        [&](std::size_t page, std::size_t npages) { return protect(start_ + page * ps, npages * ps); },
        &err, Lk{this});
    if (err) {
        throw_errno(err, protect_call_);
    }
    return n;
}

void BitmapMechanism::reset(std::uintptr_t start, std::size_t len) {
    before_use();
    const std::size_t ps = page_size();
    const std::size_t first = (start - start_) / ps, last = first + len / ps;
    // Clear the bits, then protect (the order of uffd.cpp's argument).
    handler_lock();
    bits_.clear_range(first, last);
    const int err = protect(start, len);
    if (err) {
        // Part of the range may still be writable: count it all as written
        // (a false positive, never a lost write).
        bits_.set_range(first, last);
    }
    handler_unlock();
    if (err && err != ENOMEM) {
        throw_errno(err, protect_call_);
    }
}

void BitmapMechanism::check_not_bookkeeping(std::uintptr_t start, std::size_t len) const {
    const std::uintptr_t b = bits_.storage();
    if (b && start < b + bits_.storage_len() && b < start + len) {
        throw std::system_error(EINVAL, std::generic_category(),
                                "range covers memwatch's own page bitmap");
    }
}

}  // namespace memwatch
