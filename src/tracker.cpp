#include "tracker.hpp"

#include <stdexcept>
#include <string>

#include <unistd.h>

#include "util.hpp"

namespace memwatch {

Mechanism::~Mechanism() = default;

Tracker::Tracker(std::unique_ptr<Mechanism> mech, const Caps &caps)
    : mech_(std::move(mech)), caps_(caps) {}

Tracker::~Tracker() {
    std::lock_guard<std::mutex> lk(mu_);
    if (foreign()) {
        // A fork() child's copy: the mechanism's fds, threads and handler
        // belong to the parent.  Running its destructor here could join a
        // thread that does not exist in this process or undo the parent's
        // registration; leak it instead (the child's copy of its memory).
        (void)mech_.release();
        return;
    }
    if (attached_) {
        attached_ = false;
        try {
            mech_->detach();
        } catch (...) {
            // A destructor cannot report; detach() is best effort here.
        }
    }
}

void Tracker::attach(std::int64_t start, std::int64_t length) {
    if (start < 0 || length <= 0) {
        throw std::invalid_argument("attach: start must be >= 0 and length > 0");
    }
    const auto ustart = static_cast<std::uintptr_t>(start);
    if (!page_aligned(ustart)) {
        throw std::invalid_argument("attach: start must be page aligned");
    }
    const std::size_t len = round_up_pages(static_cast<std::size_t>(length));
    if (ustart + len < ustart) {
        throw std::invalid_argument("attach: start + length overflows");
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (attached_) {
        throw std::invalid_argument("tracker is already attached; detach() first");
    }
    if (foreign()) {
        throw std::invalid_argument("tracker was inherited through fork(); create a new one");
    }
    mech_->attach(ustart, len);
    owner_ = getpid();
    start_ = ustart;
    len_ = len;
    attached_ = true;
}

void Tracker::detach() {
    std::lock_guard<std::mutex> lk(mu_);
    if (!attached_) {
        return;  // idempotent
    }
    const bool mine = !foreign();
    attached_ = false;  // even if the mechanism fails to undo everything
    if (mine) {
        mech_->detach();
    }
}

bool Tracker::foreign() const { return owner_ != 0 && owner_ != getpid(); }

std::size_t Tracker::check_range(std::int64_t start, std::int64_t length) const {
    if (!attached_) {
        throw std::invalid_argument("tracker is detached");
    }
    if (foreign()) {
        throw std::invalid_argument("tracker was inherited through fork(); it belongs to process " +
                                    std::to_string(owner_));
    }
    if (start < 0 || length < 0) {
        throw std::invalid_argument("start and length must be >= 0");
    }
    const auto ustart = static_cast<std::uintptr_t>(start);
    if (!page_aligned(ustart)) {
        throw std::invalid_argument("start must be page aligned");
    }
    const std::size_t len = round_up_pages(static_cast<std::size_t>(length));
    if (ustart < start_ || ustart > start_ + len_ || len > start_ + len_ - ustart) {
        throw std::invalid_argument("range [" + std::to_string(ustart) + ", +" +
                                    std::to_string(len) + ") is outside the attached range [" +
                                    std::to_string(start_) + ", +" + std::to_string(len_) + ")");
    }
    return len;
}

std::size_t Tracker::scan(std::int64_t start, std::int64_t length, std::uint64_t *out,
                          std::size_t cap, bool reset) {
    std::lock_guard<std::mutex> lk(mu_);
    if (shared_) {
        throw TrackerShared("tracker is shared by overlapping watches");
    }
    return scan_locked(start, length, out, cap, reset);
}

std::size_t Tracker::scan_shared(std::int64_t start, std::int64_t length, std::uint64_t *out,
                                 std::size_t cap, bool reset) {
    std::lock_guard<std::mutex> lk(mu_);
    return scan_locked(start, length, out, cap, reset);
}

std::size_t Tracker::scan_locked(std::int64_t start, std::int64_t length, std::uint64_t *out,
                                 std::size_t cap, bool reset) {
    const std::size_t len = check_range(start, length);
    if (len == 0 || cap == 0) {
        return 0;  // nothing reported, hence nothing reset
    }
    return mech_->scan(static_cast<std::uintptr_t>(start), len, out, cap, reset);
}

void Tracker::reset(std::int64_t start, std::int64_t length) {
    std::lock_guard<std::mutex> lk(mu_);
    if (shared_) {
        throw TrackerShared("tracker is shared by overlapping watches");
    }
    reset_locked(start, length);
}

void Tracker::reset_shared(std::int64_t start, std::int64_t length) {
    std::lock_guard<std::mutex> lk(mu_);
    reset_locked(start, length);
}

void Tracker::reset_locked(std::int64_t start, std::int64_t length) {
    const std::size_t len = check_range(start, length);
    if (len == 0) {
        return;
    }
    mech_->reset(static_cast<std::uintptr_t>(start), len);
}

void Tracker::set_shared(bool shared) {
    std::lock_guard<std::mutex> lk(mu_);
    shared_ = shared;
}

bool Tracker::attached() const {
    std::lock_guard<std::mutex> lk(mu_);
    return attached_;
}

std::uintptr_t Tracker::start() const {
    std::lock_guard<std::mutex> lk(mu_);
    return start_;
}

std::size_t Tracker::length() const {
    std::lock_guard<std::mutex> lk(mu_);
    return len_;
}

}  // namespace memwatch
