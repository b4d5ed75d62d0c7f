// The common half of the fault-driven mechanisms (uffd, mprotect): a page
// bitmap set by a fault handler, and scan()/reset() that take bits and then
// re-protect exactly those pages.  A subclass supplies protect() (re-arm the
// write fault on a range) and, if its handler can take a lock, the lock that
// makes "set bit + un-protect" atomic with respect to "take bit + re-protect".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mechanism.hpp"
#include "util.hpp"

namespace memwatch {

class BitmapMechanism : public Mechanism {
public:
    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override;
    void reset(std::uintptr_t start, std::size_t len) override;

protected:
    explicit BitmapMechanism(const char *protect_call) : protect_call_(protect_call) {}
    // Re-arm the write fault on [start, start+len): 0 or an errno.
    virtual int protect(std::uintptr_t start, std::size_t len) noexcept = 0;
    // Serialize with the fault handler (default: nothing; a signal handler
    // cannot lock, and the mprotect ordering does not need it).
    virtual void handler_lock() noexcept {}
    virtual void handler_unlock() noexcept {}
    // Called by reset() and scan(reset=True) first (mprotect re-checks its
    // SIGSEGV handler there: one sigaction(2), too dear for every plain scan;
    // faulthandler/signal.signal are covered by the binding's wrappers).
    virtual void before_use() { check_alive(); }
    // Throws if the fault handler can no longer run (uffd: thread gone).
    virtual void check_alive() {}
    // Throws EINVAL if [start, start+len) covers the bitmap's own storage.
    void check_not_bookkeeping(std::uintptr_t start, std::size_t len) const;

    PageBitmap bits_;
    std::uintptr_t start_ = 0;
    std::size_t len_ = 0;

private:
    const char *protect_call_;
};

}  // namespace memwatch
