// memwatch._memwatch: the Python bindings.  This file only binds: it checks
// Python arguments (buffers) with the GIL held, releases the GIL around the
// call into tracker.hpp / mechanism.hpp, and maps C++ exceptions to Python
// (std::system_error -> OSError(errno), std::invalid_argument -> ValueError).
#include <pybind11/pybind11.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>

#include "mechanism.hpp"
#include "tracker.hpp"
#include "uapi.hpp"
#include "util.hpp"

namespace py = pybind11;
using memwatch::Tracker;

namespace {

// A writable, C-contiguous buffer of 8-byte integers, exported for the
// duration of one call.  Must be created and destroyed with the GIL held
// (PyBuffer_Release needs it): declare it before any gil_scoped_release.
class U64Buffer {
public:
    U64Buffer(const py::handle &obj, const char *argname) {
        if (!PyObject_CheckBuffer(obj.ptr())) {
            throw py::type_error(std::string(argname) +
                                 " must be a writable buffer of 8-byte integers (e.g. "
                                 "array.array('Q') or a numpy uint64 array), not " +
                                 std::string(Py_TYPE(obj.ptr())->tp_name));
        }
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_STRIDES) !=
            0) {
            PyErr_Clear();
            throw py::type_error(std::string(argname) + " must be a writable buffer (got a "
                                                         "read-only " +
                                 std::string(Py_TYPE(obj.ptr())->tp_name) + ")");
        }
        held_ = true;
        if (view_.itemsize != 8 || !format_ok(view_.format)) {
            const std::string fmt = view_.format ? view_.format : "B";
            const auto isz = std::to_string(view_.itemsize);
            release();
            throw py::type_error(std::string(argname) +
                                 " must hold 8-byte integers (format 'Q', 'q', 'L' or 'l'), got "
                                 "format '" +
                                 fmt + "' with itemsize " + isz);
        }
        if (!PyBuffer_IsContiguous(&view_, 'C')) {
            release();
            throw py::type_error(std::string(argname) + " must be C-contiguous");
        }
    }
    ~U64Buffer() { release(); }
    U64Buffer(const U64Buffer &) = delete;
    U64Buffer &operator=(const U64Buffer &) = delete;

    std::uint64_t *data() const noexcept { return static_cast<std::uint64_t *>(view_.buf); }
    std::size_t size() const noexcept { return static_cast<std::size_t>(view_.len) / 8; }

private:
    static bool format_ok(const char *f) {
        if (!f) {
            return false;  // unsigned bytes; itemsize 8 with no format cannot happen
        }
        if (*f == '@' || *f == '=' || *f == '<') {
            ++f;
        }
        return (f[0] == 'Q' || f[0] == 'q' || f[0] == 'L' || f[0] == 'l') && f[1] == '\0';
    }
    void release() noexcept {
        if (held_) {
            PyBuffer_Release(&view_);
            held_ = false;
        }
    }
    Py_buffer view_{};
    bool held_ = false;
};

py::tuple probe(memwatch::Probe (*fn)()) {
    memwatch::Probe p;
    {
        py::gil_scoped_release nogil;
        p = fn();
    }
    return py::make_tuple(p.ok, p.reason);
}

// One Python class per mechanism: distinct C++ types for pybind11.
template <int Kind>
struct Bound : Tracker {
    using Tracker::Tracker;
};
using SyscallTracker = Bound<0>;
using PagemapScanTracker = Bound<1>;
using SoftDirtyTracker = Bound<2>;
using UffdTracker = Bound<3>;
using MprotectTracker = Bound<4>;

template <class T>
py::class_<T> bind_tracker(py::module_ &m, const char *name, const memwatch::Caps &caps,
                           const char *doc) {
    py::class_<T> cls(m, name, doc);
    const memwatch::Caps *cp = &caps;  // static storage
    cls.def(
           "attach",
           [](T &t, std::int64_t start, std::int64_t length) {
               py::gil_scoped_release nogil;
               t.attach(start, length);
           },
           py::arg("start"), py::arg("length"),
           "Begin tracking [start, start+length) (start page aligned, length rounded up to "
           "pages). The range starts clean. ValueError if already attached.")
        .def(
            "detach",
            [](T &t) {
                py::gil_scoped_release nogil;
                t.detach();
            },
            "Stop tracking and undo every registration/protection. Idempotent.")
        .def(
            "scan",
            [](T &t, std::int64_t start, std::int64_t length, const py::object &out, bool reset) {
                U64Buffer buf(out, "out");
                py::gil_scoped_release nogil;
                return t.scan(start, length, buf.data(), buf.size(), reset);
            },
            py::arg("start"), py::arg("length"), py::arg("out"), py::arg("reset") = false,
            "Write byte offsets (from start) of pages written in [start, start+length) into "
            "out, ascending; stop when out is full; return the count. With reset, the "
            "reported pages (and the clean pages before the stop point) are reset.")
        .def(
            "reset",
            [](T &t, std::int64_t start, std::int64_t length) {
                py::gil_scoped_release nogil;
                t.reset(start, length);
            },
            py::arg("start"), py::arg("length"), "Reset the written state of the range.")
        .def(
            "scan_shared",
            [](T &t, std::int64_t start, std::int64_t length, const py::object &out, bool reset) {
                U64Buffer buf(out, "out");
                py::gil_scoped_release nogil;
                return t.scan_shared(start, length, buf.data(), buf.size(), reset);
            },
            py::arg("start"), py::arg("length"), py::arg("out"), py::arg("reset") = false,
            "scan() for memwatch's overlap registry: works while the tracker is shared.")
        .def(
            "reset_shared",
            [](T &t, std::int64_t start, std::int64_t length) {
                py::gil_scoped_release nogil;
                t.reset_shared(start, length);
            },
            py::arg("start"), py::arg("length"),
            "reset() for memwatch's overlap registry: works while the tracker is shared.")
        .def(
            "set_shared",
            [](T &t, bool shared) {
                py::gil_scoped_release nogil;
                t.set_shared(shared);
            },
            py::arg("shared"),
            "While shared, scan() and reset() raise TrackerShared (the overlap registry "
            "then uses scan_shared/reset_shared). Returns once no scan()/reset() is in flight.")
        .def_property_readonly("name", [cp](const T &) { return std::string(cp->name); })
        .def_property_readonly("page_size",
                               [](const T &) { return memwatch::page_size(); })
        .def_property_readonly("attached", [](const T &t) { return t.attached(); })
        .def_property_readonly("start", [](const T &t) { return t.start(); })
        .def_property_readonly("length", [](const T &t) { return t.length(); });
    cls.attr("remote") = caps.remote;
    cls.attr("partial_reset") = caps.partial_reset;
    cls.attr("atomic") = caps.atomic;
    cls.attr("sees_kernel_writes") = caps.sees_kernel_writes;
    cls.attr("false_positives") = caps.false_positives;
    return cls;
}

void translate_system_error(std::exception_ptr p) {
    try {
        if (p) {
            std::rethrow_exception(p);
        }
    } catch (const std::system_error &e) {
        const int err = e.code().value();
        // OSError(errno, strerror) picks the subclass (ProcessLookupError...).
        const std::string msg = std::string(std::strerror(err)) + " (" + e.what() + ")";
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, msg.c_str());
        if (exc) {
            PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc)), exc);
            Py_DECREF(exc);
        }
    }
}

}  // namespace

PYBIND11_MODULE(_memwatch, m) {
    m.doc() = "memwatch C++ extension: page write-tracking mechanisms (see SPEC.md).";
    py::register_exception_translator(&translate_system_error);
    py::register_exception<memwatch::TrackerShared>(m, "TrackerShared", PyExc_RuntimeError);

    m.attr("PIDFD_SELF") = MEMWATCH_PIDFD_SELF;
    m.attr("NR_PROCESS_MEMWATCH") = memwatch::uapi::NR_process_memwatch;
    m.attr("PAGE_SIZE") = memwatch::page_size();
    m.attr("MEMWATCH_SD_GET") = MEMWATCH_SD_GET;
    m.attr("MEMWATCH_SD_CLEAR") = MEMWATCH_SD_CLEAR;
    m.attr("MEMWATCH_SD_NO_REUSED_REGIONS") = MEMWATCH_SD_NO_REUSED_REGIONS;

    // The uapi values this build uses, for tests/test_backends.py to compare
    // with the kernel tree's headers.
    {
        namespace u = memwatch::uapi;
        py::module_ k = m.def_submodule("_uapi", "uapi constants compiled into the extension");
        k.attr("PAGEMAP_SCAN") = u::PAGEMAP_SCAN;
        k.attr("PAGE_IS_WPALLOWED") = u::PAGE_IS_WPALLOWED;
        k.attr("PAGE_IS_WRITTEN") = u::PAGE_IS_WRITTEN;
        k.attr("PAGE_IS_FILE") = u::PAGE_IS_FILE;
        k.attr("PAGE_IS_PRESENT") = u::PAGE_IS_PRESENT;
        k.attr("PAGE_IS_SWAPPED") = u::PAGE_IS_SWAPPED;
        k.attr("PAGE_IS_PFNZERO") = u::PAGE_IS_PFNZERO;
        k.attr("PAGE_IS_HUGE") = u::PAGE_IS_HUGE;
        k.attr("PAGE_IS_SOFT_DIRTY") = u::PAGE_IS_SOFT_DIRTY;
        k.attr("PM_SCAN_WP_MATCHING") = u::PM_SCAN_WP_MATCHING;
        k.attr("PM_SCAN_CHECK_WPASYNC") = u::PM_SCAN_CHECK_WPASYNC;
        k.attr("UFFD_API") = u::UFFD_API;
        k.attr("UFFD_USER_MODE_ONLY") = u::UFFD_USER_MODE_ONLY;
        k.attr("UFFD_FEATURE_PAGEFAULT_FLAG_WP") = u::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        k.attr("UFFD_FEATURE_WP_HUGETLBFS_SHMEM") = u::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        k.attr("UFFD_FEATURE_WP_UNPOPULATED") = u::UFFD_FEATURE_WP_UNPOPULATED;
        k.attr("UFFD_FEATURE_WP_ASYNC") = u::UFFD_FEATURE_WP_ASYNC;
        k.attr("UFFD_EVENT_PAGEFAULT") = u::UFFD_EVENT_PAGEFAULT;
        k.attr("UFFD_PAGEFAULT_FLAG_WRITE") = u::UFFD_PAGEFAULT_FLAG_WRITE;
        k.attr("UFFD_PAGEFAULT_FLAG_WP") = u::UFFD_PAGEFAULT_FLAG_WP;
        k.attr("UFFDIO_REGISTER_MODE_MISSING") = u::UFFDIO_REGISTER_MODE_MISSING;
        k.attr("UFFDIO_REGISTER_MODE_WP") = u::UFFDIO_REGISTER_MODE_WP;
        k.attr("UFFDIO_WRITEPROTECT_MODE_WP") = u::UFFDIO_WRITEPROTECT_MODE_WP;
        k.attr("UFFDIO_WRITEPROTECT_MODE_DONTWAKE") = u::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        k.attr("UFFDIO_API") = u::UFFDIO_API_IOCTL;
        k.attr("UFFDIO_REGISTER") = u::UFFDIO_REGISTER;
        k.attr("UFFDIO_UNREGISTER") = u::UFFDIO_UNREGISTER;
        k.attr("UFFDIO_WAKE") = u::UFFDIO_WAKE;
        k.attr("UFFDIO_WRITEPROTECT") = u::UFFDIO_WRITEPROTECT;
        py::dict sizes;
        sizes["page_region"] = sizeof(u::page_region);
        sizes["pm_scan_arg"] = sizeof(u::pm_scan_arg);
        sizes["uffdio_api"] = sizeof(u::uffdio_api);
        sizes["uffdio_range"] = sizeof(u::uffdio_range);
        sizes["uffdio_register"] = sizeof(u::uffdio_register);
        sizes["uffdio_writeprotect"] = sizeof(u::uffdio_writeprotect);
        sizes["uffd_msg"] = sizeof(u::uffd_msg);
        k.attr("SIZEOF") = sizes;
    }

    m.def(
        "process_memwatch",
        [](int pidfd, std::uint64_t start, std::uint64_t length, unsigned flags,
           const py::object &vec) -> long {
            std::unique_ptr<U64Buffer> buf;
            if (!vec.is_none()) {
                buf = std::make_unique<U64Buffer>(vec, "vec");
            }
            long r;
            int err;
            {
                py::gil_scoped_release nogil;
                r = memwatch::process_memwatch(pidfd, start, length, flags,
                                               buf ? buf->data() : nullptr,
                                               buf ? buf->size() : 0);
                err = errno;
            }
            if (r < 0) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
                throw py::error_already_set();
            }
            return r;
        },
        py::arg("pidfd"), py::arg("start"), py::arg("length"), py::arg("flags"), py::arg("vec"),
        "Raw process_memwatch(2) (syscall 500). vec: writable C-contiguous buffer of 8-byte "
        "integers or None (vec_len = its item count). Returns the number of entries written; "
        "OSError(errno) on failure.");

    m.def("syscall_available", [] { return probe(memwatch::syscall_probe); });
    m.def("pagemap_scan_available", [] { return probe(memwatch::pagemap_scan_probe); });
    m.def("softdirty_available", [] { return probe(memwatch::softdirty_probe); });
    m.def("uffd_available", [] { return probe(memwatch::uffd_probe); });
    m.def("mprotect_available", [] { return probe(memwatch::mprotect_probe); });

    bind_tracker<SyscallTracker>(
        m, "SyscallTracker", memwatch::syscall_caps,
        "process_memwatch(2) on a pidfd (PIDFD_SELF for this process). The pidfd is borrowed: "
        "keep it open while the tracker lives. Needs the kernel built from linux/.")
        .def(py::init([](int pidfd, bool no_reused_regions) {
                 return new SyscallTracker(memwatch::make_syscall(pidfd, no_reused_regions),
                                           memwatch::syscall_caps);
             }),
             py::arg("pidfd"), py::arg("no_reused_regions") = false);
    bind_tracker<PagemapScanTracker>(
        m, "PagemapScanTracker", memwatch::pagemap_scan_caps,
        "Async userfaultfd write-protect + PAGEMAP_SCAN (Linux 6.7+), this process only. "
        "Report+reset is one atomic kernel walk; kernel writes are seen. A range can be "
        "registered with one userfaultfd only (a second tracker on it: OSError EBUSY).")
        .def(py::init([] {
            return new PagemapScanTracker(memwatch::make_pagemap_scan(),
                                          memwatch::pagemap_scan_caps);
        }));
    bind_tracker<SoftDirtyTracker>(
        m, "SoftDirtyTracker", memwatch::softdirty_caps,
        "Soft-dirty bits of /proc/PID/pagemap, reset through /proc/PID/clear_refs. "
        "partial_reset=False: every reset (reset(), scan(reset=True), attach()) clears the "
        "soft-dirty state of the WHOLE process. atomic=False: a reset scan reads, then clears. "
        "A reset scan whose dirty pages do not all fit into out raises ValueError without "
        "clearing. Needs CONFIG_MEM_SOFT_DIRTY.")
        .def(py::init([](int pid) {
                 return new SoftDirtyTracker(memwatch::make_softdirty(pid),
                                             memwatch::softdirty_caps);
             }),
             py::arg("pid"));
    bind_tracker<UffdTracker>(
        m, "UffdTracker", memwatch::uffd_caps,
        "Synchronous userfaultfd write-protect with a C++ handler thread: the first write to a "
        "page blocks until the handler records it and lifts the protection. Kernel writes "
        "(read(2) into the range) are seen when the process may create a kernel-mode "
        "userfaultfd (root / CAP_SYS_PTRACE / vm.unprivileged_userfaultfd=1); otherwise they "
        "fail with EFAULT. Rare false positive: two threads faulting on one page at once.")
        .def(py::init([] {
            return new UffdTracker(memwatch::make_uffd(), memwatch::uffd_caps);
        }));
    bind_tracker<MprotectTracker>(
        m, "MprotectTracker", memwatch::mprotect_caps,
        "mprotect(PROT_READ) + a process-wide SIGSEGV handler (chained to the previous one). "
        "sees_kernel_writes=False: a system call writing into a watched, clean page (read(2), "
        "readinto) fails with EFAULT instead of being tracked. detach() restores "
        "PROT_READ|PROT_WRITE. The handler stays installed after the last detach (as a "
        "pass-through that chains every fault it does not own) so that a write fault racing "
        "with a detach is retried, not fatal. Do not toggle faulthandler while a range is "
        "attached.")
        .def(py::init([] {
            return new MprotectTracker(memwatch::make_mprotect(), memwatch::mprotect_caps);
        }));
}
