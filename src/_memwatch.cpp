// memwatch._memwatch: the Python bindings.  This file only binds: it checks
// Python arguments (ints, bools, buffers) with the GIL held, releases the GIL
// around the call into tracker.hpp / mechanism.hpp, and maps C++ exceptions to
// Python (std::system_error -> OSError(errno), std::invalid_argument ->
// ValueError).  Every argument is taken as a plain Python object and converted
// here, so a wrong type or an out-of-range value gets a message naming the
// argument instead of pybind11's "incompatible function arguments" dump.
#include <pybind11/pybind11.h>

#include <cxxabi.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "capi.hpp"
#include "interpreter.hpp"
#include "mechanism.hpp"
#include "tracker.hpp"
#include "uapi.hpp"
#include "util.hpp"

namespace py = pybind11;
using memwatch::Tracker;
using memwatch::interpreter_finalizing;

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
        std::snprintf(buf, sizeof buf, "range 0x%llx+0x%llx is beyond the user address space",
                      static_cast<unsigned long long>(s), static_cast<unsigned long long>(n));
        raise(PyExc_ValueError, buf);
    }
    return {static_cast<std::int64_t>(s), static_cast<std::int64_t>(n)};
}

// A writable, C-contiguous buffer of 8-byte integers, exported for the
// duration of one call.  Must be created and destroyed with the GIL held
// (PyBuffer_Release needs it): declare it before the without_gil() call.
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
        // Without the GIL only on a forced unwind (pthread_exit at
        // interpreter exit, see without_gil): then leak the export.
        if (held_ && PyGILState_Check()) {
            PyBuffer_Release(&view_);
            held_ = false;
        }
    }
    Py_buffer view_{};
    bool held_ = false;
};

unsigned long g_main_thread = 0;  // threading.main_thread().ident at import

// Give the GIL back to a thread that ran without it.  Not a destructor (as
// pybind11's gil_scoped_release is): CPython < 3.14 ends a daemon thread that
// asks for the GIL during finalization with pthread_exit, whose forced
// unwind must not pass a noexcept frame (std::terminate, SIGABRT).  Such a
// thread is parked here instead, as CPython 3.14 does itself; if
// finalization starts between the check and PyEval_RestoreThread, the
// forced unwind propagates through plain frames only (U64Buffer then leaks
// its export rather than release it without the GIL, and pybind11 rethrows
// abi::__forced_unwind).
void reacquire(PyThreadState *ts) {
    if (interpreter_finalizing() && PyThread_get_thread_ident() != g_main_thread) {
        for (;;) {
            ::pause();  // the process is exiting: never come back into Python
        }
    }
    PyEval_RestoreThread(ts);
}

// Run fn() with the GIL released; reacquire it in ordinary code.
template <class F>
auto without_gil(F &&fn) -> decltype(fn()) {
    PyThreadState *ts = PyEval_SaveThread();
    try {
        if constexpr (std::is_void_v<decltype(fn())>) {
            fn();
            reacquire(ts);
        } else {
            auto r = fn();
            reacquire(ts);
            return r;
        }
    } catch (abi::__forced_unwind &) {
        throw;  // the thread is being ended without the GIL: touch nothing
    } catch (...) {
        reacquire(ts);
        throw;
    }
}

PyObject *g_tracker_shared = nullptr;  // _memwatch.TrackerShared
void translate_system_error(std::exception_ptr p);

// Set the Python error pybind11 would set for the exception being handled
// (the types the trackers and the argument checks throw).
void set_error_from_current_exception() {
    try {
        throw;
    } catch (abi::__forced_unwind &) {
        throw;  // see without_gil
    } catch (py::error_already_set &e) {
        e.restore();
    } catch (const py::builtin_exception &e) {
        e.set_error();
    } catch (const memwatch::TrackerShared &e) {
        PyErr_SetString(g_tracker_shared, e.what());
    } catch (const std::system_error &) {
        translate_system_error(std::current_exception());
    } catch (const std::invalid_argument &e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc &) {
        PyErr_NoMemory();
    } catch (const std::exception &e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
    }
}

// tracker.scanner(): scan() as a METH_FASTCALL function bound to one tracker
// (the Watch fast path calls it on every dirty_into).  Same arguments,
// checks, exceptions and GIL rules as the pybind11 scan(), without the
// overload dispatcher and type casters, and a scan of a few pages that
// cannot block runs with the GIL held (Tracker::try_quick_scan): handing
// the GIL off and back costs more than such a scan.  m_self is a capsule
// of the Tracker; its context holds a reference to the tracker object.
constexpr const char *kScanArgs[] = {"start", "length", "out", "reset"};

PyObject *fast_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                    PyObject *kwnames) {
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *a[4] = {nullptr, nullptr, nullptr, nullptr};
    if (nargs > 4) {
        PyErr_Format(PyExc_TypeError, "scan() takes at most 4 arguments (%zd given)", nargs);
        return nullptr;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        a[i] = args[i];
    }
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j = 0;
        while (j < 4 && PyUnicode_CompareWithASCIIString(name, kScanArgs[j]) != 0) {
            ++j;
        }
        if (j == 4) {
            PyErr_Format(PyExc_TypeError, "scan() got an unexpected keyword argument '%U'", name);
            return nullptr;
        }
        if (a[j]) {
            PyErr_Format(PyExc_TypeError, "scan() got multiple values for argument '%s'",
                         kScanArgs[j]);
            return nullptr;
        }
        a[j] = args[nargs + k];
    }
    for (int j = 0; j < 3; ++j) {
        if (!a[j]) {
            PyErr_Format(PyExc_TypeError, "scan() missing required argument '%s'", kScanArgs[j]);
            return nullptr;
        }
    }
    auto *t = static_cast<Tracker *>(PyCapsule_GetPointer(self, nullptr));
    if (!t) {
        return nullptr;
    }
    try {
        const auto r = range_args(a[0], a[1]);
        const bool rs = a[3] ? bool_arg(a[3], "reset") : false;
        U64Buffer buf(a[2], "out");
        std::size_t n = 0;
        if (!t->try_quick_scan(r.first, r.second, buf.data(), buf.size(), rs, n)) {
            n = without_gil([&] { return t->scan(r.first, r.second, buf.data(), buf.size(), rs); });
        }
        return PyLong_FromSize_t(n);
    } catch (...) {
        set_error_from_current_exception();
        return nullptr;
    }
}

PyMethodDef g_fast_scan_def = {
    "scan",
    reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&fast_scan)),
    METH_FASTCALL | METH_KEYWORDS,
    "scan(start, length, out, reset=False) of one tracker: see the tracker's scan()."};

py::object make_scanner(Tracker *t, const py::handle &owner) {
    auto cap = py::reinterpret_steal<py::object>(
        PyCapsule_New(t, nullptr, [](PyObject *c) {
            Py_XDECREF(static_cast<PyObject *>(PyCapsule_GetContext(c)));
        }));
    if (!cap) {
        throw py::error_already_set();
    }
    if (PyCapsule_SetContext(cap.ptr(), owner.inc_ref().ptr()) != 0) {
        owner.dec_ref();
        throw py::error_already_set();
    }
    auto fn = py::reinterpret_steal<py::object>(PyCFunction_NewEx(&g_fast_scan_def, cap.ptr(),
                                                                  nullptr));
    if (!fn) {
        throw py::error_already_set();
    }
    return fn;
}

// Trackers are destroyed with the GIL released: detach() may join the uffd
// handler thread or wait for a signal handler to leave an mprotect slot.
struct ReleaseGilDelete {
    void operator()(Tracker *t) const noexcept {
        if (PyGILState_Check() && !interpreter_finalizing()) {
            PyThreadState *ts = PyEval_SaveThread();
            delete t;
            PyEval_RestoreThread(ts);  // not finalizing: never pthread_exit
        } else {
            delete t;
        }
    }
};

// mprotect: faulthandler.enable()/disable() and signal.signal() replace the
// SIGSEGV action, after which a watched write would be fatal.  Wrap them (once,
// at the first MprotectTracker) so that our handler is put back on top right
// after each call, chaining to whatever they installed.
void guard_signal_apis() {
    static bool done = false;
    if (done) {
        return;
    }
    done = true;
    auto wrap = [](const char *modname, const char *fname, bool faulthandler_disable) {
        py::module_ mod = py::module_::import(modname);
        py::object orig = mod.attr(fname);
        py::object is_enabled = py::none();
        if (faulthandler_disable) {
            is_enabled = mod.attr("is_enabled");
        }
        mod.attr(fname) = py::cpp_function(
            [orig, is_enabled](py::args args, py::kwargs kwargs) {
                const bool was = !is_enabled.is_none() && is_enabled().cast<bool>();
                py::object r = orig(*args, **kwargs);
                without_gil([was] {
                    if (was) {
                        memwatch::sigsegv_forget_top();  // its handler is gone: chain past it
                    }
                    memwatch::reinstall_sigsegv_handler();
                });
                return r;
            },
            py::name(fname), py::doc(py::str(orig.attr("__doc__")).cast<std::string>().c_str()));
    };
    wrap("faulthandler", "enable", false);
    wrap("faulthandler", "disable", true);
    wrap("signal", "signal", false);
}

// (ok, code, errno): memwatch/_probes.py turns the code into words.
py::tuple probe(memwatch::Probe (*fn)()) {
    const memwatch::Probe p = without_gil([fn] { return fn(); });
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
using Holder = std::unique_ptr<T, ReleaseGilDelete>;

// For the C API (capi.cpp): the C++ tracker behind a tracker object.
memwatch::Tracker *tracker_of(PyObject *obj) {
    py::handle h(obj);
    if (py::isinstance<SyscallTracker>(h)) {
        return &h.cast<SyscallTracker &>();
    }
    if (py::isinstance<PagemapScanTracker>(h)) {
        return &h.cast<PagemapScanTracker &>();
    }
    if (py::isinstance<SoftDirtyTracker>(h)) {
        return &h.cast<SoftDirtyTracker &>();
    }
    if (py::isinstance<UffdTracker>(h)) {
        return &h.cast<UffdTracker &>();
    }
    if (py::isinstance<MprotectTracker>(h)) {
        return &h.cast<MprotectTracker &>();
    }
    return nullptr;
}

template <class T>
py::class_<T, Holder<T>> bind_tracker(py::module_ &m, const char *name,
                                      const memwatch::Caps &caps, const char *doc) {
    py::class_<T, Holder<T>> cls(m, name, doc);
    const memwatch::Caps *cp = &caps;  // static storage
    cls.def(
           "attach",
           [](T &t, const py::handle &start, const py::handle &length) {
               const auto r = range_args(start, length);
               without_gil([&] { t.attach(r.first, r.second); });
           },
           py::arg("start"), py::arg("length"),
           "Begin tracking [start, start+length) (start page aligned, length rounded up to "
           "pages). The range starts clean. ValueError if already attached.")
        .def(
            "detach",
            [](T &t) { without_gil([&] { t.detach(); }); },
            "Stop tracking and undo every registration/protection. Idempotent.")
        .def(
            "scan",
            [](T &t, const py::handle &start, const py::handle &length, const py::handle &out,
               const py::handle &reset) {
                const auto r = range_args(start, length);
                const bool rs = bool_arg(reset, "reset");
                U64Buffer buf(out, "out");
                return without_gil(
                    [&] { return t.scan(r.first, r.second, buf.data(), buf.size(), rs); });
            },
            py::arg("start"), py::arg("length"), py::arg("out"), py::arg("reset") = py::bool_(false),
            "Write byte offsets (from start) of pages written in [start, start+length) into "
            "out, ascending; stop when out is full; return the count. With reset, the "
            "reported pages (and the clean pages before the stop point) are reset.")
        .def(
            "reset",
            [](T &t, const py::handle &start, const py::handle &length) {
                const auto r = range_args(start, length);
                without_gil([&] { t.reset(r.first, r.second); });
            },
            py::arg("start"), py::arg("length"), "Reset the written state of the range.")
        .def(
            "scan_shared",
            [](T &t, const py::handle &start, const py::handle &length, const py::handle &out,
               const py::handle &reset) {
                const auto r = range_args(start, length);
                const bool rs = bool_arg(reset, "reset");
                U64Buffer buf(out, "out");
                return without_gil(
                    [&] { return t.scan_shared(r.first, r.second, buf.data(), buf.size(), rs); });
            },
            py::arg("start"), py::arg("length"), py::arg("out"), py::arg("reset") = py::bool_(false),
            "scan() for memwatch's overlap registry: works while the tracker is shared.")
        .def(
            "scanner",
            [](const py::object &self) { return make_scanner(&self.cast<T &>(), self); },
            "scan() as a plain C function bound to this tracker (what Watch.dirty_into calls): "
            "the same arguments, checks and exceptions, without pybind11's dispatcher; a scan "
            "of a few pages that cannot block keeps the GIL.")
        .def(
            "reset_shared",
            [](T &t, const py::handle &start, const py::handle &length) {
                const auto r = range_args(start, length);
                without_gil([&] { t.reset_shared(r.first, r.second); });
            },
            py::arg("start"), py::arg("length"),
            "reset() for memwatch's overlap registry: works while the tracker is shared.")
        .def(
            "set_shared",
            [](T &t, const py::handle &shared) {
                const bool s = bool_arg(shared, "shared");
                without_gil([&] { t.set_shared(s); });
            },
            py::arg("shared"),
            "While shared, scan() and reset() raise TrackerShared (the overlap registry "
            "then uses scan_shared/reset_shared). Returns once no scan()/reset() is in flight.")
        .def_property_readonly("name", [cp](const T &) { return std::string(cp->name); })
        .def_property_readonly("page_size",
                               [](const T &) { return memwatch::page_size(); })
        .def_property_readonly("attached", [](const T &t) { return t.attached(); })
        .def_property_readonly("start", [](const T &t) { return t.start(); })
        .def_property_readonly("length", [](const T &t) { return t.length(); })
        .def_property_readonly(
            "user_mode_only", [](const T &t) { return t.user_mode_only(); },
            "This tracker's userfaultfd fell back to UFFD_USER_MODE_ONLY.")
        .def_property_readonly(
            "sees_kernel_writes_now",
            [cp](const T &t) { return cp->sees_kernel_writes && !t.user_mode_only(); },
            "sees_kernel_writes for this instance (False when user_mode_only).")
        .def("forget_if_foreign", [](T &t) { return t.forget_if_foreign(); },
             "For an at-fork child hook (takes no lock): if a parent process attached this "
             "tracker, forget it (leaving the parent's registration alone) and return True.");
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
    g_main_thread = py::module_::import("threading")
                        .attr("main_thread")()
                        .attr("ident")
                        .cast<unsigned long>();
    g_tracker_shared =
        py::register_exception<memwatch::TrackerShared>(m, "TrackerShared", PyExc_RuntimeError)
            .ptr();

    m.attr("PIDFD_SELF") = memwatch::uapi::PIDFD_SELF;
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
                r = without_gil([&] {
                    const long rr = memwatch::process_memwatch(pidfd, start, length, flags,
                                                               buf ? buf->data() : nullptr,
                                                               buf ? buf->size() : 0);
                    err = errno;
                    return rr;
                });
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
    m.def(
        "uffd_user_mode_only", [] { return without_gil([] { return memwatch::uffd_user_mode_only(); }); },
        "Would a userfaultfd created now be user-mode-only (then uffd-based trackers do not see "
        "kernel writes)?");
    m.def("mprotect_available", [] { return probe(memwatch::mprotect_probe); });

    bind_tracker<SyscallTracker>(
        m, "SyscallTracker", memwatch::syscall_caps,
        "process_memwatch(2) on a pidfd (PIDFD_SELF for this process). The pidfd is borrowed: "
        "keep it open while the tracker lives. Needs the kernel built from linux/.")
        .def(py::init([](int pidfd, bool no_reused_regions) {
                 return new SyscallTracker(without_gil([&] { return memwatch::make_syscall(pidfd, no_reused_regions); }));
             }),
             py::arg("pidfd"), py::arg("no_reused_regions") = false);
    bind_tracker<PagemapScanTracker>(
        m, "PagemapScanTracker", memwatch::pagemap_scan_caps,
        "Async userfaultfd write-protect + PAGEMAP_SCAN (Linux 6.7+), this process only. "
        "Report+reset is one atomic kernel walk; kernel writes are seen. A range can be "
        "registered with one userfaultfd only (a second tracker on it: OSError EBUSY).")
        .def(py::init([] {
            return new PagemapScanTracker(without_gil([&] { return memwatch::make_pagemap_scan(); }));
        }));
    bind_tracker<SoftDirtyTracker>(
        m, "SoftDirtyTracker", memwatch::softdirty_caps,
        "Soft-dirty bits of /proc/PID/pagemap, reset through /proc/PID/clear_refs. "
        "partial_reset=False: every reset (reset(), scan(reset=True), attach()) clears the "
        "soft-dirty state of the WHOLE process. atomic=False: a reset scan reads, then clears. "
        "A reset scan whose dirty pages do not all fit into out raises ValueError without "
        "clearing. Needs CONFIG_MEM_SOFT_DIRTY.")
        .def(py::init([](int pid) {
                 return new SoftDirtyTracker(without_gil([&] { return memwatch::make_softdirty(pid); }));
             }),
             py::arg("pid"));
    bind_tracker<UffdTracker>(
        m, "UffdTracker", memwatch::uffd_caps,
        "Synchronous userfaultfd write-protect with a C++ handler thread: the first write to a "
        "page blocks until the handler records it and lifts the protection. Kernel writes "
        "(read(2) into the range) are seen when the process may create a kernel-mode "
        "userfaultfd (root / CAP_SYS_PTRACE / vm.unprivileged_userfaultfd=1); otherwise they "
        "fail with EFAULT (see user_mode_only / sees_kernel_writes_now). The range is "
        "registered MISSING|WP: pages populated after MADV_DONTNEED/MADV_FREE and never-touched "
        "pages are tracked without UFFD_FEATURE_WP_UNPOPULATED (missing_mode). False positive: "
        "a page may be reported in two rounds for one write under tight polling.")
        .def(py::init([] {
            return new UffdTracker(without_gil([&] { return memwatch::make_uffd(); }));
        }))
        .attr("missing_mode") = true;
    bind_tracker<MprotectTracker>(
        m, "MprotectTracker", memwatch::mprotect_caps,
        "mprotect(PROT_READ) + a process-wide SIGSEGV handler (chained to the previous one). "
        "sees_kernel_writes=False: a system call writing into a watched, clean page (read(2), "
        "readinto) fails with EFAULT instead of being tracked. detach() restores "
        "PROT_READ|PROT_WRITE (only plain rw, non-exec mappings are accepted: OSError "
        "EACCES otherwise; a range with a hole: OSError ENOMEM, nothing changed). Overlapping "
        "another attached MprotectTracker: OSError EBUSY. The handler stays installed after the "
        "last detach (as a pass-through that chains every fault it does not own) so that a write "
        "fault racing with a detach is retried, not fatal; faulthandler.enable()/disable() and "
        "signal.signal() are wrapped to put it back on top. A SIGSEGV sent by kill(2) gets the "
        "previous (or default) action. Past vm.max_map_count, the range degrades to false "
        "positives.")
        .def(py::init([] {
            guard_signal_apis();
            return new MprotectTracker(without_gil([&] { return memwatch::make_mprotect(); }));
        }));

    // memwatch_capi.h's table, for other extensions.
    memwatch::capi::install(m, &tracker_of);
}
