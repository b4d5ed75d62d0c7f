// Mechanism "softdirty": the classic soft-dirty interface, bit 55 of
// /proc/PID/pagemap entries, reset by writing "4" to /proc/PID/clear_refs.
//
// Limits (exported as capabilities, documented on SoftDirtyTracker):
// - partial_reset=false: clear_refs resets the WHOLE process, not a range;
//   reset(start, len) and scan(reset=True) therefore clear every page of the
//   target (including other trackers' ranges).
// - atomic=false: scan(reset=True) reads then clears; a write between the
//   two is lost.  To never drop reported-but-not-returned pages, a reset
//   scan whose dirty pages do not all fit into `out` raises ValueError
//   before clearing anything.
// - false_positives=true: new or re-merged VMAs report every page dirty.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

#include "mechanism.hpp"
#include "uapi.hpp"
#include "util.hpp"

namespace memwatch {

const Caps softdirty_caps = {"softdirty", /*remote=*/true, /*partial_reset=*/false,
                             /*atomic=*/false, /*sees_kernel_writes=*/true,
                             /*false_positives=*/true};

namespace {

constexpr std::size_t kChunkEntries = 4096;  // 32 KiB of pagemap per pread
constexpr std::uint64_t kSoftDirty = std::uint64_t{1} << uapi::PM_SOFT_DIRTY_BIT;

Fd open_proc(int pid, const char *file, int flags) {
    const std::string path = "/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) +
                             "/" + file;
    const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        // No /proc/PID: the process does not exist (-> ProcessLookupError).
        throw_errno(err == ENOENT ? ESRCH : err, ("open " + path).c_str());
    }
    return Fd(fd);
}

void clear_refs(int fd) {
    for (;;) {
        if (::pwrite(fd, "4", 1, 0) == 1) {
            return;
        }
        if (errno != EINTR) {
            throw_errno("write clear_refs");
        }
    }
}

// Read pagemap entries for pages [first_page, first_page+n) into buf.
void read_entries(int fd, std::uintptr_t first_page, std::size_t n, std::uint64_t *buf) {
    auto *p = reinterpret_cast<char *>(buf);
    std::size_t want = n * sizeof(std::uint64_t);
    off_t off = static_cast<off_t>(first_page * sizeof(std::uint64_t));
    while (want) {
        const ssize_t r = ::pread(fd, p, want, off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_errno("read pagemap");
        }
        if (r == 0) {
            throw_errno(EIO, "read pagemap: unexpected end of file");
        }
        p += r;
        want -= static_cast<std::size_t>(r);
        off += r;
    }
}

class SoftDirty final : public Mechanism {
public:
    explicit SoftDirty(int pid)
        : pagemap_(open_proc(pid, "pagemap", O_RDONLY)),
          clear_refs_(open_proc(pid, "clear_refs", O_WRONLY)) {}

    void attach(std::uintptr_t start, std::size_t len) override {
        nbuf_ = std::min(pages_in(len), kChunkEntries);
        buf_.reset(new std::uint64_t[nbuf_]);
        (void)start;
        clear_refs(clear_refs_.get());  // a new watch starts clean (whole process)
    }

    void detach() override {
        buf_.reset();
        nbuf_ = 0;
    }

    std::size_t scan(std::uintptr_t start, std::size_t len, std::uint64_t *out, std::size_t cap,
                     bool reset) override {
        const std::size_t ps = page_size();
        const std::uintptr_t first = start / ps;
        const std::size_t npages = len / ps;
        std::size_t n = 0;
        for (std::size_t done = 0; done < npages;) {
            const std::size_t chunk = std::min(nbuf_, npages - done);
            read_entries(pagemap_.get(), first + done, chunk, buf_.get());
            for (std::size_t i = 0; i < chunk; ++i) {
                if (!(buf_[i] & kSoftDirty)) {
                    continue;
                }
                if (n == cap) {
                    if (reset) {
                        throw std::invalid_argument(
                            "softdirty cannot reset only the reported pages and more dirty pages "
                            "remain than `out` holds: pass an `out` with room for every page of "
                            "the range for a reset scan");
                    }
                    return n;
                }
                out[n++] = static_cast<std::uint64_t>(done + i) * ps;
            }
            done += chunk;
        }
        if (reset) {
            clear_refs(clear_refs_.get());
        }
        return n;
    }

    void reset(std::uintptr_t, std::size_t) override { clear_refs(clear_refs_.get()); }

private:
    Fd pagemap_;
    Fd clear_refs_;
    std::unique_ptr<std::uint64_t[]> buf_;
    std::size_t nbuf_ = 0;
};

}  // namespace

std::unique_ptr<Mechanism> make_softdirty(int pid) { return std::make_unique<SoftDirty>(pid); }

Probe softdirty_probe() {
    if (::access("/proc/self/clear_refs", W_OK) != 0) {
        return {false, "no_clear_refs", errno};
    }
    try {
        // Never trust clear_refs accepting "4": a kernel without
        // CONFIG_MEM_SOFT_DIRTY accepts it silently.  A freshly written page
        // of a new mapping must show bit 55.
        Mapping m(page_size());
        m.data()[0] = 1;
        Fd pm = open_proc(0, "pagemap", O_RDONLY);
        std::uint64_t e = 0;
        read_entries(pm.get(), reinterpret_cast<std::uintptr_t>(m.data()) / page_size(), 1, &e);
        if (!(e & kSoftDirty)) {
            return {false, "no_soft_dirty", 0};
        }
    } catch (const std::system_error &e) {
        return {false, "failed", e.code().value()};
    }
    return {};
}

}  // namespace memwatch
