// The one seam of the extension: every
// write-tracking mechanism is a Mechanism.  The binding layer never talks to
// a kernel interface directly; it validates Python arguments, releases the
// GIL and calls through a Tracker (tracker.hpp), which adds locking and the
// attached-range bookkeeping common to all mechanisms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace memwatch {

struct Mechanism {
    virtual ~Mechanism();
    // Write byte offsets (relative to `start`) of dirty pages in
    // [start, start+len) into out[0..cap), ascending; stop when full; return
    // count.  reset=true resets exactly the reported pages (and clean pages
    // before the stop point), atomically where the mechanism can.
    virtual std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out,
                             std::size_t cap, bool reset) = 0;
    virtual void reset(std::uintptr_t start, std::size_t len) = 0;  // reset dirty state of the range
    virtual void attach(std::uintptr_t start, std::size_t len) = 0;  // begin tracking
    virtual void detach() = 0;  // undo all registrations/protections
    // This instance's userfaultfd fell back to UFFD_USER_MODE_ONLY (kernel
    // writes into the range then fail with EFAULT instead of being seen).
    virtual bool user_mode_only() const noexcept { return false; }
    // In a fork() child, for the parent's mechanism: undo what can be undone
    // in this process only, without locks (mprotect: the child's copy of the
    // range becomes writable again, so read(2) into it works).  Default: nothing.
    virtual void forget_in_child() noexcept {}
    // Can scan() of a few pages wait on anything but this process's own page
    // tables: another process, a handler thread, a signal handler's slot?
    // false lets the bindings keep the GIL for a small scan (the GIL
    // hand-off then costs more than the scan).  Default: it can.
    virtual bool scan_may_block() const noexcept { return true; }
};

// What a mechanism can do (exported as class attributes).
struct Caps {
    const char *name;
    bool remote;              // can watch another process
    bool partial_reset;       // reset()/scan(reset) can reset a sub-range only
    bool atomic;              // report+reset loses no concurrent write
    bool sees_kernel_writes;  // writes by the kernel (read(2) into the range) are reported
    bool false_positives;     // may report pages that were not written
};

// Result of an availability probe: ok, or a short stable code naming what is
// missing plus the errno behind it (0 if none).  The words a user reads are
// written in Python (memwatch/_probes.py), keyed by (mechanism, code).
struct Probe {
    bool ok = true;
    const char *code = "";
    int err = 0;
};

// Factories (each .cpp defines its own) and their capabilities.
std::unique_ptr<Mechanism> make_syscall(int pidfd, bool no_reused_regions);
std::unique_ptr<Mechanism> make_pagemap_scan();
std::unique_ptr<Mechanism> make_softdirty(int pid);
std::unique_ptr<Mechanism> make_uffd();
std::unique_ptr<Mechanism> make_mprotect();

extern const Caps syscall_caps, pagemap_scan_caps, softdirty_caps, uffd_caps, mprotect_caps;

Probe syscall_probe();
Probe pagemap_scan_probe();
Probe softdirty_probe();
Probe uffd_probe();
Probe mprotect_probe();

// Would a userfaultfd created now be user-mode-only (no CAP_SYS_PTRACE and
// vm.unprivileged_userfaultfd=0)?  Then no uffd-based tracker sees kernel writes.
bool uffd_user_mode_only() noexcept;

// mprotect: make sure our SIGSEGV handler is the installed action (after
// faulthandler.enable()/disable() or signal.signal(SIGSEGV, ...)); a no-op
// before the first mprotect attach.  sigsegv_forget_top(): the action we
// chain to was just uninstalled by its owner (faulthandler.disable()): chain
// to the one before it again.
void reinstall_sigsegv_handler();
void sigsegv_forget_top();

// The raw syscall (returns -1 and sets errno like syscall(2)).
long process_memwatch(int pidfd, std::uintptr_t start, std::size_t len, unsigned flags,
                      std::uint64_t *vec, std::size_t vec_len) noexcept;

}  // namespace memwatch
