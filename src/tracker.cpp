#include "tracker.hpp"

#include <stdexcept>
#include <string>

#include <unistd.h>

#include "util.hpp"

namespace memwatch {

Mechanism::~Mechanism() = default;

Tracker::Tracker(std::unique_ptr<Mechanism> mech) : mech_(std::move(mech)) {}

bool Tracker::forget_if_foreign() noexcept {
    if (!foreign()) {
        return false;
    }
    // Single-threaded in a fork() child: no lock needed, none taken.
    if (!forgotten_.exchange(true)) {
        if (mech_ && attached_.load()) {
            mech_->forget_in_child();
        }
        (void)mech_.release();  // the child's copy of the parent's object: leak it
        attached_.store(false);
    }
    return true;
}

Tracker::~Tracker() {
    if (forget_if_foreign()) {
        return;
    }
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
    if (foreign()) {
        throw std::invalid_argument("tracker was inherited through fork(); create a new one");
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (attached_) {
        throw std::invalid_argument("tracker is already attached; detach() first");
    }
    if (foreign()) {
        throw std::invalid_argument("tracker was inherited through fork(); create a new one");
    }
    mech_->attach(ustart, len);
    owner_ = current_pid();
    start_ = ustart;
    len_ = len;
    attached_ = true;
}

void Tracker::detach() {
    if (forget_if_foreign()) {
        return;  // never lock in a fork() child: see forget_if_foreign()
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (!attached_) {
        return;  // idempotent
    }
    const bool mine = !foreign();
    attached_ = false;  // even if the mechanism fails to undo everything
    if (mine && mech_) {
        mech_->detach();
    }
}

void Tracker::refuse_if_foreign() const {
    if (foreign()) {  // before mu_: a fork() child must never wait on it
        throw std::invalid_argument("tracker was inherited through fork(); it belongs to process " +
                                    std::to_string(owner_.load()));
    }
}

bool Tracker::foreign() const noexcept {
    const pid_t o = owner_.load();
    return o != 0 && o != current_pid();
}

std::size_t Tracker::check_range(std::int64_t start, std::int64_t length) const {
    if (!attached_) {
        throw std::invalid_argument("operation on a closed Watch (its tracker is detached)");
    }
    if (start < 0 || length < 0) {
        throw std::invalid_argument("start and length must be >= 0");
    }
    const auto ustart = static_cast<std::uintptr_t>(start);
    if (!page_aligned(ustart)) {
        throw std::invalid_argument("start must be page aligned");
    }
    const std::size_t len = round_up_pages(static_cast<std::size_t>(length));
    const std::uintptr_t s0 = start_.load();
    const std::size_t l0 = len_.load();
    if (ustart < s0 || ustart > s0 + l0 || len > s0 + l0 - ustart) {
        throw std::invalid_argument("range [" + std::to_string(ustart) + ", +" +
                                    std::to_string(len) + ") is outside the attached range [" +
                                    std::to_string(s0) + ", +" + std::to_string(l0) + ")");
    }
    return len;
}

std::size_t Tracker::scan(std::int64_t start, std::int64_t length, std::uint64_t *out,
                          std::size_t cap, bool reset) {
    refuse_if_foreign();
    std::lock_guard<std::mutex> lk(mu_);
    if (shared_) {
        throw TrackerShared("tracker is shared by overlapping watches");
    }
    return scan_locked(start, length, out, cap, reset);
}

bool Tracker::try_quick_scan(std::int64_t start, std::int64_t length, std::uint64_t *out,
                             std::size_t cap, bool reset, std::size_t &n) {
    // A length of at most kQuickScanPages pages rounds up to no more.  (A
    // negative one: scan() says what is wrong.)
    if (length < 0 || static_cast<std::uint64_t>(length) > kQuickScanPages * page_size()) {
        return false;
    }
    refuse_if_foreign();  // (a fork() child's copy may have no mechanism any more)
    if (mech_->scan_may_block()) {
        return false;
    }
    std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
    if (!lk.owns_lock()) {
        return false;  // another thread is in: wait for it without the caller's lock
    }
    if (shared_) {
        throw TrackerShared("tracker is shared by overlapping watches");
    }
    n = scan_locked(start, length, out, cap, reset);
    return true;
}

std::size_t Tracker::scan_shared(std::int64_t start, std::int64_t length, std::uint64_t *out,
                                 std::size_t cap, bool reset) {
    refuse_if_foreign();
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
    refuse_if_foreign();
    std::lock_guard<std::mutex> lk(mu_);
    if (shared_) {
        throw TrackerShared("tracker is shared by overlapping watches");
    }
    reset_locked(start, length);
}

void Tracker::reset_shared(std::int64_t start, std::int64_t length) {
    refuse_if_foreign();
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

}  // namespace memwatch
