// A Mechanism plus what every Python tracker object needs: the attached
// range, argument checks against it, and a mutex so that a detach (or the
// object's destruction) racing with a scan in another thread can never use
// freed state.  Pure C++; called with the GIL released.
//
// A tracker belongs to the process that attached it.  After fork() the child
// holds a copy that shares the parent's userfaultfd and /proc/PID files:
// detaching it there would unregister the parent's range, and scanning would
// reset the parent's state.  In any other process the tracker therefore
// refuses scan()/reset(), and detach() or destruction only forget it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>

#include <sys/types.h>

#include "mechanism.hpp"

namespace memwatch {

// Thrown by Tracker::scan()/reset() while the tracker is shared (bound as
// _memwatch.TrackerShared): the caller's fast path must go through the
// registry (memwatch/_registry.py) instead.
struct TrackerShared : std::logic_error {
    using std::logic_error::logic_error;
};

class Tracker {
public:
    explicit Tracker(std::unique_ptr<Mechanism> mech);
    ~Tracker();
    Tracker(const Tracker &) = delete;
    Tracker &operator=(const Tracker &) = delete;

    // All of these throw std::invalid_argument (-> ValueError) for a range
    // that is not page aligned / outside the attached range, or when the
    // tracker is detached; std::system_error (-> OSError) from the kernel.
    void attach(std::int64_t start, std::int64_t length);
    void detach();
    std::size_t scan(std::int64_t start, std::int64_t length, std::uint64_t *out, std::size_t cap,
                     bool reset);
    void reset(std::int64_t start, std::int64_t length);

    // For a caller that holds a lock it would rather not hand off for a
    // tiny scan (the Python bindings and the GIL): scan() into n and return
    // true when that is quick and cannot block -- the mutex is free, the
    // page-rounded range is at most kQuickScanPages and the mechanism says
    // !scan_may_block(); otherwise do nothing and return false (then call
    // scan()).  Throws as scan() does.
    static constexpr std::size_t kQuickScanPages = 16;
    bool try_quick_scan(std::int64_t start, std::int64_t length, std::uint64_t *out,
                        std::size_t cap, bool reset, std::size_t &n);

    // Overlapping watches (memwatch/_registry.py) share one tracker per
    // registered segment.  set_shared(true) takes the mutex, so when it
    // returns no scan()/reset() is in flight, and from then on both throw
    // TrackerShared: a Watch's direct fast path can never consume writes
    // another Watch must see.  The registry uses the *_shared variants.
    void set_shared(bool shared);
    std::size_t scan_shared(std::int64_t start, std::int64_t length, std::uint64_t *out,
                            std::size_t cap, bool reset);
    void reset_shared(std::int64_t start, std::int64_t length);

    // Lock-free (never blocks the GIL-holding caller behind a long scan).
    bool attached() const noexcept { return attached_.load(); }
    std::uintptr_t start() const noexcept { return start_.load(); }
    std::size_t length() const noexcept { return len_.load(); }
    bool user_mode_only() const noexcept { return mech_ && mech_->user_mode_only(); }
    // For an at-fork child hook: takes no lock (another thread of the parent
    // may have held mu_ at fork() time, and it is never released in the
    // child).  If the tracker was attached by another process (we are its
    // fork() child), forget it -- leave its fds, threads and protections to
    // the parent -- and return true; otherwise do nothing and return false.
    bool forget_if_foreign() noexcept;

private:
    // Checks [start, start+length) against the attached range (mutex held);
    // returns the page-rounded length.
    std::size_t check_range(std::int64_t start, std::int64_t length) const;
    // True when attached (ever) by another process: we are a fork() child.
    bool foreign() const noexcept;
    void refuse_if_foreign() const;

    std::unique_ptr<Mechanism> mech_;
    mutable std::mutex mu_;
    std::size_t scan_locked(std::int64_t start, std::int64_t length, std::uint64_t *out,
                            std::size_t cap, bool reset);
    void reset_locked(std::int64_t start, std::int64_t length);

    bool shared_ = false;  // under mu_
    // Written under mu_, read lock-free by the getters and forget_if_foreign().
    std::atomic<bool> attached_{false};
    std::atomic<bool> forgotten_{false};  // forget_if_foreign() released mech_
    std::atomic<pid_t> owner_{0};         // getpid() at the first attach(); 0 before it
    std::atomic<std::uintptr_t> start_{0};
    std::atomic<std::size_t> len_{0};
};

}  // namespace memwatch
