// Mechanism "pagemap_scan": asynchronous userfaultfd write-protection
// (UFFD_FEATURE_WP_ASYNC, Linux 6.7+) read and reset with the PAGEMAP_SCAN
// ioctl on /proc/self/pagemap.  The kernel resolves write faults itself (no
// handler thread), so writes by the kernel (read(2) into the range) are
// tracked too; PM_SCAN_WP_MATCHING makes report+reset one atomic walk.
//
// scan() walks twice.  What it reports (and resets) is decided by the full
// masks of confirm(): written, populated (PRESENT | SWAPPED: a hole or a
// pte_none entry, e.g. after MADV_DONTNEED, is no write -- see
// protect_populated()) and not the shared zero page (a read fault in a hole
// maps it without the uffd-wp bit).  Those masks send every PTE through the
// kernel's pagemap_page_category(); pagemap_scan_pmd_entry() has a per-PTE
// fast path (6.7 .. 6.18) only for category_mask == return_mask == WRITTEN
// with no anyof/inverted mask, 2.5x cheaper (a clean, populated GiB: ~260
// instead of ~640 us).  So the first pass walks WRITTEN-only, without reset,
// and yields candidates: every PTE without the uffd-wp bit (pte_none and
// the zero page included) and, on these kernels, holes.  That is a superset
// of what the full masks report, so the second pass runs only over spans
// around the candidates (kSpanGap merges close ones).  Only the second pass
// resets, and it resets exactly what it reports: a page outside every span
// is neither reported nor reset, as if written just after the scan.  When
// the first pass fills its candidate array (kMaxCandidates), one slow walk
// is cheaper than many second-pass ioctls: the rest of the range gets the
// full-mask pass directly, so a dirty range costs what it did before.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "mechanism.hpp"
#include "uapi.hpp"
#include "uffd_common.hpp"
#include "util.hpp"

namespace memwatch {

const Caps pagemap_scan_caps = {"pagemap_scan", /*remote=*/false, /*partial_reset=*/true,
                                /*atomic=*/true, /*sees_kernel_writes=*/true,
                                // Holes are not write-protected (sparse ranges cost
                                // what is populated): see protect_populated() for
                                // the two false positives that come with it.
                                /*false_positives=*/true};

namespace {

constexpr std::uint64_t kFeatures = uapi::UFFD_FEATURE_WP_ASYNC | uapi::UFFD_FEATURE_WP_UNPOPULATED;
// A page that has a PTE (or PMD): present or swapped.  Everything else in a
// registered VMA -- page-table holes and pte_none entries -- counts as
// PAGE_IS_WRITTEN for PAGEMAP_SCAN (6.7+: "a missing marker means the range
// was zapped"), and PM_SCAN_WP_MATCHING would then allocate page tables to
// hold markers for all of it.  Requiring one of these categories keeps every
// walk to the page tables that exist.
constexpr std::uint64_t kPopulated = uapi::PAGE_IS_PRESENT | uapi::PAGE_IS_SWAPPED;
// Region array size cap: 24 bytes each, so at most 96 KiB per tracker.
constexpr std::size_t kMaxRegions = 4096;
// First-pass candidate regions per scan.  Each costs up to one second-pass
// ioctl (~1.5 us with its walk); past ~250 of them one slow walk of a 1 GiB
// range is cheaper, so a full candidate array ends the first pass.
constexpr std::size_t kMaxCandidates = 128;
// Candidates of the first scan pass closer than this many pages share one
// second-pass ioctl: walking 512 clean PTEs on the slow path (~1 us) costs
// about what another ioctl does.
constexpr std::uint64_t kSpanGap = 512;
const char *const kNotRegistered =
    "PAGEMAP_SCAN: part of the range is not registered for write-protection any more "
    "(unmapped and mapped again?): detach and attach again";

Fd open_pagemap() {
    const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw_errno("open /proc/self/pagemap");
    }
    return Fd(fd);
}

class PagemapScan final : public Mechanism {
public:
    PagemapScan() : pagemap_(open_pagemap()), uffd_(uffd_open_with(kFeatures, "pagemap_scan").fd) {}

    void attach(std::uintptr_t start, std::size_t len) override {
        nregions_ = std::min(pages_in(len), kMaxRegions);
        regions_.reset(new uapi::page_region[nregions_]);
        ncandidates_ = std::min(nregions_, kMaxCandidates);
        candidates_.reset(new uapi::page_region[ncandidates_]);
        uffd_register_wp(uffd_.get(), start, len);
        // A new watch starts clean.  Only what is populated is protected:
        // see protect_populated() for why the holes need nothing.
        if (const int err = protect_populated(start, len)) {
            uffd_unregister(uffd_.get(), start, len);
            throw_errno(err, "PAGEMAP_SCAN");
        }
        start_ = start;
        len_ = len;
    }

    void detach() override {
        // Unregistering drops the uffd-wp bits of the range as well.
        uffd_unregister(uffd_.get(), start_, len_);
        regions_.reset();
        candidates_.reset();
        nregions_ = ncandidates_ = 0;
        start_ = len_ = 0;
    }

    // PAGEMAP_SCAN ioctls on this process's own page tables (no handler
    // thread): nothing to wait for.
    bool scan_may_block() const noexcept override { return false; }

    // Two passes (see the header of this file): a WRITTEN-only walk without
    // reset finds candidates on the kernel's per-PTE fast path; the full
    // masks, with the reset, run only over spans around them.
    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override {
        const std::size_t ps = page_size();
        const std::uint64_t end = start + len;
        uapi::pm_scan_arg arg{};
        arg.size = sizeof(arg);
        // CHECK_WPASYNC alone changes no mask (the fast path stays) and makes
        // a VMA that lost its registration fail here already, even where it
        // holds no page the second pass would look at.
        arg.flags = reset ? uapi::PM_SCAN_CHECK_WPASYNC : 0;
        arg.vec = reinterpret_cast<std::uintptr_t>(candidates_.get());
        arg.vec_len = ncandidates_;
        arg.category_mask = uapi::PAGE_IS_WRITTEN;
        arg.return_mask = uapi::PAGE_IS_WRITTEN;
        arg.start = start;
        arg.end = end;
        if (cap == 0 || len == 0) {
            return 0;
        }
        const int r = ::ioctl(pagemap_.get(), uapi::PAGEMAP_SCAN, &arg);
        if (r < 0) {
            const int err = errno;
            throw_errno(err, err == EPERM ? kNotRegistered : "PAGEMAP_SCAN");
        }
        // Merge candidates closer than kSpanGap into spans, in place.
        std::size_t spans = 0;
        for (int i = 0; i < r; ++i) {
            const uapi::page_region c = candidates_[static_cast<std::size_t>(i)];
            if (spans > 0 && c.start - candidates_[spans - 1].end <= kSpanGap * ps) {
                candidates_[spans - 1].end = c.end;
            } else {
                candidates_[spans++] = c;
            }
        }
        std::size_t n = 0;
        for (std::size_t i = 0; i < spans && n < cap; ++i) {
            n = confirm(start, candidates_[i].start, candidates_[i].end, out, n, cap, reset);
        }
        if (static_cast<std::size_t>(r) < ncandidates_) {
            return n;  // the walk covered [start, end)
        }
        // A full candidate array: the walk stopped after its last entry (its
        // walk_end is not trusted: see confirm()).  So many written pages
        // cost more as second-pass ioctls than one slow walk: the rest of
        // the range gets the single full-mask pass.
        return confirm(start, candidates_[spans - 1].end, end, out, n, cap, reset);
    }

    void reset(std::uintptr_t start, std::size_t len) override {
        if (const int err = protect_populated(start, len)) {
            throw_errno(err, err == EPERM ? kNotRegistered : "PAGEMAP_SCAN");
        }
    }

private:
    // The second pass over [from, to): written, populated and not the zero
    // page (see protect_populated()), reset with PM_SCAN_WP_MATCHING if
    // asked.  Appends byte offsets from `start` to out[n..cap); returns n.
    std::size_t confirm(std::uintptr_t start, std::uint64_t from, std::uint64_t to,
                        std::uint64_t *out, std::size_t n, std::size_t cap, bool reset) {
        const std::size_t ps = page_size();
        uapi::pm_scan_arg arg{};
        arg.size = sizeof(arg);
        arg.flags = reset ? (uapi::PM_SCAN_WP_MATCHING | uapi::PM_SCAN_CHECK_WPASYNC) : 0;
        arg.end = to;
        arg.vec = reinterpret_cast<std::uintptr_t>(regions_.get());
        arg.vec_len = nregions_;
        arg.category_inverted = uapi::PAGE_IS_PFNZERO;
        arg.category_mask = uapi::PAGE_IS_WRITTEN | uapi::PAGE_IS_PFNZERO;
        arg.category_anyof_mask = kPopulated;
        arg.return_mask = uapi::PAGE_IS_WRITTEN;
        std::uint64_t cur = from;
        while (n < cap && cur < to) {
            arg.start = cur;
            // Only as many pages as still fit: the kernel then resets (with
            // WP_MATCHING) exactly the pages it reports.
            arg.max_pages = cap - n;
            const std::size_t before = n;
            const int r = ::ioctl(pagemap_.get(), uapi::PAGEMAP_SCAN, &arg);
            if (r < 0) {
                const int err = errno;
                // With PM_SCAN_CHECK_WPASYNC a VMA without async uffd-wp in the
                // range fails the reset instead of being skipped silently
                // (which would drop its writes).
                throw_errno(err, err == EPERM ? kNotRegistered : "PAGEMAP_SCAN");
            }
            for (int i = 0; i < r; ++i) {
                const uapi::page_region &reg = regions_[static_cast<std::size_t>(i)];
                for (std::uint64_t a = reg.start; a < reg.end && n < cap; a += ps) {
                    out[n++] = a - start;
                }
            }
            // The kernel stops early only when our region array or max_pages
            // is exhausted; otherwise the walk covered [cur, to).  Do not
            // trust walk_end for that: do_pagemap_scan() (6.7 .. at least
            // 6.18) leaves it at the last internal bounce-buffer restart
            // point when the final chunk completes, so resuming from it
            // would report pages twice.
            if (static_cast<std::size_t>(r) < nregions_ && n - before < arg.max_pages) {
                break;
            }
            if (arg.walk_end <= cur) {
                break;  // no progress: cannot happen, but never spin
            }
            cur = arg.walk_end;
        }
        return n;
    }

    // Write-protect what is populated in [start, start+len): one PAGEMAP_SCAN
    // walk with PM_SCAN_WP_MATCHING, no output vector and kPopulated.  The
    // kernel runs its "exclusive WP" fast path over every PTE table that
    // exists (present and swapped PTEs get the uffd-wp bit, pte_none entries
    // inside such a table a marker) and, because a hole is not kPopulated,
    // never allocates a table for a hole.  UFFDIO_WRITEPROTECT with
    // WP_UNPOPULATED (what attach did before) puts markers into freshly
    // allocated tables over the whole range instead: 2 MiB of page tables per
    // GiB watched, 2 GiB and seconds for a 1 TiB reservation, and every
    // later scan walks them all.
    //
    // No write into a hole is lost: a PTE made by a fault where there was
    // neither a PTE nor a marker never has the uffd-wp bit (do_anonymous_page
    // and the file fault paths only copy it from a marker), so it reads as
    // PRESENT | WRITTEN.  A read fault on such a hole maps the shared zero
    // page, also unprotected: scan() masks PAGE_IS_PFNZERO out, since the zero
    // page holds nothing written (writing it copies it into a fresh,
    // unprotected page, which is reported).  What this gives up, all
    // documented: (a) a read fault on a table-less hole of a file-backed or
    // shared mapping maps a page-cache page unprotected, a false positive
    // until the next reset; (b) a first write into a table-less, 2 MiB
    // aligned hole of a MADV_HUGEPAGE mapping can map a whole huge page
    // unprotected, reporting its 512 base pages; (c) MADV_DONTNEED on an
    // anonymous page leaves pte_none, which is not kPopulated: the zap itself
    // is not reported (as with uffd and mprotect), nor a write made to the
    // page before the zap and not yet collected -- the page's content no
    // longer depends on that write.  Returns 0 or errno.
    int protect_populated(std::uintptr_t start, std::size_t len) noexcept {
        uapi::pm_scan_arg arg{};
        arg.size = sizeof(arg);
        arg.flags = uapi::PM_SCAN_WP_MATCHING | uapi::PM_SCAN_CHECK_WPASYNC;
        arg.start = start;
        arg.end = start + len;
        arg.category_mask = uapi::PAGE_IS_WRITTEN;
        arg.category_anyof_mask = kPopulated;
        arg.return_mask = uapi::PAGE_IS_WRITTEN;
        return ::ioctl(pagemap_.get(), uapi::PAGEMAP_SCAN, &arg) < 0 ? errno : 0;
    }

    Fd pagemap_;
    Fd uffd_;
    std::unique_ptr<uapi::page_region[]> regions_;     // second pass
    std::unique_ptr<uapi::page_region[]> candidates_;  // first pass
    std::size_t ncandidates_ = 0;
    std::size_t nregions_ = 0;
    std::uintptr_t start_ = 0;
    std::size_t len_ = 0;
};

}  // namespace

std::unique_ptr<Mechanism> make_pagemap_scan() { return std::make_unique<PagemapScan>(); }

Probe pagemap_scan_probe() {
    {
        Fd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
        if (!pm) {
            return {false, "no_pagemap", errno};
        }
    }
    int err = 0;
    bool umo = false;
    const std::uint64_t offered = uffd_offered_features(err, umo);
    if (err) {
        return {false, "uffd_open", err};
    }
    if (!(offered & uapi::UFFD_FEATURE_WP_ASYNC)) {
        return {false, "no_wp_async", 0};
    }
    if (!(offered & uapi::UFFD_FEATURE_WP_UNPOPULATED)) {
        return {false, "no_wp_unpopulated", 0};
    }
    // End to end on a scratch page: protect, write, expect exactly it.
    try {
        Mapping m(2 * page_size());
        auto mech = make_pagemap_scan();
        const auto start = reinterpret_cast<std::uintptr_t>(m.data());
        mech->attach(start, m.size());
        m.data()[page_size()] = 1;
        std::uint64_t out[2] = {0, 0};
        const std::size_t n = mech->scan(start, m.size(), out, 2, true);
        mech->detach();
        if (n != 1 || out[0] != page_size()) {
            return {false, "scan_mismatch", 0};
        }
    } catch (const std::system_error &e) {
        const int err = e.code().value();
        return {false, err == ENOTTY || err == EINVAL ? "no_pagemap_scan" : "failed", err};
    }
    return {};
}

}  // namespace memwatch
