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
    Tracker(std::unique_ptr<Mechanism> mech, const Caps &caps);
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

    // Overlapping watches (memwatch/_registry.py) share one tracker per
    // registered segment.  set_shared(true) takes the mutex, so when it
    // returns no scan()/reset() is in flight, and from then on both throw
    // TrackerShared: a Watch's direct fast path can never consume writes
    // another Watch must see.  The registry uses the *_shared variants.
    void set_shared(bool shared);
    std::size_t scan_shared(std::int64_t start, std::int64_t length, std::uint64_t *out,
                            std::size_t cap, bool reset);
    void reset_shared(std::int64_t start, std::int64_t length);

    const Caps &caps() const noexcept { return caps_; }
    bool attached() const;
    std::uintptr_t start() const;
    std::size_t length() const;

private:
    // Checks [start, start+length) against the attached range (mutex held);
    // returns the page-rounded length.
    std::size_t check_range(std::int64_t start, std::int64_t length) const;
    // True when attached (ever) by another process: we are a fork() child.
    bool foreign() const;

    std::unique_ptr<Mechanism> mech_;
    const Caps &caps_;
    mutable std::mutex mu_;
    std::size_t scan_locked(std::int64_t start, std::int64_t length, std::uint64_t *out,
                            std::size_t cap, bool reset);
    void reset_locked(std::int64_t start, std::int64_t length);

    bool attached_ = false;
    bool shared_ = false;
    pid_t owner_ = 0;  // getpid() at the first attach(); 0 before it
    std::uintptr_t start_ = 0;
    std::size_t len_ = 0;
};

}  // namespace memwatch
