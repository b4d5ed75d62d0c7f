#include "util.hpp"

#include <cerrno>
#include <system_error>

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

PageBitmap::PageBitmap(std::size_t npages)
    : words_(new std::atomic<std::uint64_t>[(npages + 63) / 64]), npages_(npages) {
    clear_all();
}

void PageBitmap::clear_all() noexcept {
    for (std::size_t i = 0; i < words(); ++i) {
        words_[i].store(0, std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_release);
}

void PageBitmap::clear_range(std::size_t first, std::size_t last) noexcept {
    for (std::size_t p = first; p < last;) {
        if (p % 64 == 0 && p + 64 <= last) {
            words_[p / 64].store(0, std::memory_order_release);
            p += 64;
        } else {
            words_[p / 64].fetch_and(~(std::uint64_t{1} << (p % 64)), std::memory_order_acq_rel);
            ++p;
        }
    }
}

}  // namespace memwatch
