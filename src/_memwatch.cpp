// memwatch._memwatch: the Python bindings.  This file only binds: it checks
// Python arguments (ints, bools, buffers) with the GIL held, releases the GIL
// around the call into tracker.hpp / mechanism.hpp, and maps C++ exceptions to
// Python (std::system_error -> OSError(errno), std::invalid_argument ->
// ValueError).  Every argument is taken as a plain Python object and converted
// here, so a wrong type or an out-of-range value gets a message naming the
// argument instead of pybind11's "incompatible function arguments" dump.
#include <pybind11/pybind11.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "mechanism.hpp"
#include "tracker.hpp"
#include "uapi.hpp"
#include "util.hpp"

namespace py = pybind11;
using memwatch::Tracker;

namespace {

[[noreturn]] void raise(PyObject *type, const std::string &msg) {
    PyErr_SetString(type, msg.c_str());
    throw py::error_already_set();
}

const char *type_name(const py::handle &obj) { return Py_TYPE(obj.ptr())->tp_name; }

// A Python int (or anything with __index__, never a bool) in 0..2**64-1.
std::uint64_t u64_arg(const py::handle &obj, const char *name) {
    PyObject *o = obj.ptr();
    if (PyLong_CheckExact(o)) {  // the hot path: a plain int in range
        const unsigned long long v = PyLong_AsUnsignedLongLong(o);
        if (!(v == static_cast<unsigned long long>(-1) && PyErr_Occurred())) {
            return v;
        }
        PyErr_Clear();  // negative or too big: say so below
    }
    if (PyBool_Check(o) || !PyIndex_Check(o)) {
        raise(PyExc_TypeError, std::string(name) + " must be an int, not " + type_name(obj));
    }
    auto index = py::reinterpret_steal<py::object>(PyNumber_Index(o));
    if (!index) {
        throw py::error_already_set();
    }
    const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
        PyErr_Clear();
        const bool negative = PyObject_RichCompareBool(index.ptr(), py::int_(0).ptr(), Py_LT) == 1;
        const std::string text = py::str(index);
        if (negative) {
            raise(PyExc_ValueError, std::string(name) + " must not be negative, got " + text);
        }
        raise(PyExc_OverflowError, std::string(name) + " does not fit in 64 bits: " + text);
    }
    return v;
}

// A C int (a file descriptor or a negative pidfd sentinel).
int int_arg(const py::handle &obj, const char *name) {
    PyObject *o = obj.ptr();
    if (PyBool_Check(o) || !PyIndex_Check(o)) {
        raise(PyExc_TypeError, std::string(name) + " must be an int, not " + type_name(obj));
    }
    auto index = py::reinterpret_steal<py::object>(PyNumber_Index(o));
    if (!index) {
        throw py::error_already_set();
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) {
        throw py::error_already_set();
    }
    if (overflow || v < INT_MIN || v > INT_MAX) {
        raise(PyExc_OverflowError, std::string(name) + " does not fit in a C int: " +
                                       std::string(py::str(index)));
    }
    return static_cast<int>(v);
}

// A bool (or numpy.bool_): an int or a str here is far more likely a mistake
// than a request, and reset=True is not to be guessed.
bool bool_arg(const py::handle &obj, const char *name) {
    if (obj.ptr() == Py_True) {
        return true;
    }
    if (obj.ptr() == Py_False) {
        return false;
    }
    const std::string tn = type_name(obj);
    if (tn == "numpy.bool_" || tn == "numpy.bool") {
        return PyObject_IsTrue(obj.ptr()) == 1;
    }
    raise(PyExc_TypeError, std::string(name) + " must be a bool, not " + tn);
}

// (start, length) of a user-space range as the Tracker's int64 arguments.
// No Linux architecture maps user memory at or above 2**63.
std::pair<std::int64_t, std::int64_t> range_args(const py::handle &start, const py::handle &length) {
    const std::uint64_t s = u64_arg(start, "start");
    const std::uint64_t n = u64_arg(length, "length");
    constexpr std::uint64_t top = std::uint64_t{1} << 63;
    if (s >= top || n > top - s) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "range %#llx+%#llx is beyond the user address space",
                      static_cast<unsigned long long>(s), static_cast<unsigned long long>(n));
        raise(PyExc_ValueError, buf);
    }
    return {static_cast<std::int64_t>(s), static_cast<std::int64_t>(n)};
}

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
            // Read-only, or not exportable with a format at all (numpy
            // datetime64): say which.
            PyErr_Clear();
            Py_buffer ro{};
            if (PyObject_GetBuffer(obj.ptr(), &ro, PyBUF_FORMAT | PyBUF_STRIDES) == 0) {
                PyBuffer_Release(&ro);
                throw py::type_error(std::string(argname) + " must be a writable buffer (got a "
                                                             "read-only " +
                                     std::string(Py_TYPE(obj.ptr())->tp_name) + ")");
            }
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            std::string why = value ? std::string(py::str(value)) : "no buffer export";
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            throw py::type_error(std::string(argname) +
                                 " must be a buffer of 8-byte integers; this " +
                                 std::string(Py_TYPE(obj.ptr())->tp_name) +
                                 " cannot export one: " + why);
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

// (ok, code, errno): memwatch/_probes.py turns the code into words.
py::tuple probe(memwatch::Probe (*fn)()) {
    memwatch::Probe p;
    {
        py::gil_scoped_release nogil;
        p = fn();
    }
    return py::make_tuple(p.ok, std::string(p.code ? p.code : ""), p.err);
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
           [](T &t, const py::handle &start, const py::handle &length) {
               const auto r = range_args(start, length);
               py::gil_scoped_release nogil;
               t.attach(r.first, r.second);
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
            [](T &t, const py::handle &start, const py::handle &length, const py::handle &out,
               const py::handle &reset) {
                const auto r = range_args(start, length);
                const bool rs = bool_arg(reset, "reset");
                U64Buffer buf(out, "out");
                py::gil_scoped_release nogil;
                return t.scan(r.first, r.second, buf.data(), buf.size(), rs);
            },
            py::arg("start"), py::arg("length"), py::arg("out"), py::arg("reset") = py::bool_(false),
            "Write byte offsets (from start) of pages written in [start, start+length) into "
            "out, ascending; stop when out is full; return the count. With reset, the "
            "reported pages (and the clean pages before the stop point) are reset.")
        .def(
            "reset",
            [](T &t, const py::handle &start, const py::handle &length) {
                const auto r = range_args(start, length);
                py::gil_scoped_release nogil;
                t.reset(r.first, r.second);
            },
            py::arg("start"), py::arg("length"), "Reset the written state of the range.")
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
        // what() is "<operation>: <strerror>"; say the strerror once:
        // "[Errno 16] Device or resource busy (UFFDIO_REGISTER)".
        std::string op = e.what();
        const std::string tail = ": " + e.code().message();
        if (op.size() >= tail.size() && op.compare(op.size() - tail.size(), tail.size(), tail) == 0) {
            op.resize(op.size() - tail.size());
        }
        // OSError(errno, strerror) picks the subclass (ProcessLookupError...).
        const std::string msg = std::string(std::strerror(err)) + " (" + op + ")";
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, msg.c_str());
        if (exc) {
            PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc)), exc);
            Py_DECREF(exc);
        }
    }
}

}  // namespace

PYBIND11_MODULE(_memwatch, m) {
    m.doc() = "memwatch C++ extension: the page write-tracking mechanisms behind memwatch.Watch.";
    py::register_exception_translator(&translate_system_error);

    m.attr("PIDFD_SELF") = MEMWATCH_PIDFD_SELF;
    m.attr("NR_PROCESS_MEMWATCH") = memwatch::uapi::NR_process_memwatch;
    m.attr("PAGE_SIZE") = memwatch::page_size();
    m.attr("MEMWATCH_SD_GET") = MEMWATCH_SD_GET;
    m.attr("MEMWATCH_SD_CLEAR") = MEMWATCH_SD_CLEAR;
    m.attr("MEMWATCH_SD_NO_REUSED_REGIONS") = MEMWATCH_SD_NO_REUSED_REGIONS;

    m.def(
        "process_memwatch",
        [](const py::handle &pidfd_obj, const py::handle &start_obj, const py::handle &length_obj,
           const py::handle &flags_obj, const py::handle &vec) -> long {
            const int pidfd = int_arg(pidfd_obj, "pidfd");
            const std::uint64_t start = u64_arg(start_obj, "start");
            const std::uint64_t length = u64_arg(length_obj, "length");
            const std::uint64_t flags64 = u64_arg(flags_obj, "flags");
            if (flags64 > 0xffffffffu) {
                raise(PyExc_OverflowError, "flags does not fit in 32 bits: " +
                                               std::to_string(flags64));
            }
            const auto flags = static_cast<unsigned>(flags64);
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
