// The C API table behind memwatch/include/memwatch/memwatch_capi.h.
//
// open()/close() go through the Python facade (memwatch.Watch) with the GIL
// taken by PyGILState_Ensure, so a C watch gets the same backend choice,
// overlap registry (memwatch/_registry.py) and error words as a Python one.
// The hot calls, dirty_into() and reset(), call the C++ Tracker of the
// Watch's one registration directly, with no Python and no GIL, for as long
// as the registry leaves it unshared; while another Watch shares the pages
// Tracker::scan()/reset() throw TrackerShared, and the call takes the GIL and
// goes through Watch.dirty_into()/reset() (the registry's shared path), which
// reports every write to every Watch.
#include "capi.hpp"
#include "interpreter.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include "../memwatch/include/memwatch/memwatch_capi.h"
#include "util.hpp"

namespace py = pybind11;

struct memwatch_watch {
    PyObject *watch = nullptr;        // memwatch.Watch (strong reference)
    PyObject *tracker_obj = nullptr;  // its sole registration's tracker, or nullptr
    memwatch::Tracker *fast = nullptr;  // tracker_obj's C++ tracker
    std::uint64_t address = 0;
    std::uint64_t length = 0;
    std::uint64_t target_offset = 0;
    std::uint32_t caps = 0;
    const char *backend = "";
};

namespace memwatch::capi {
namespace {

TrackerOf g_tracker_of = nullptr;

// The calling thread's last error (memwatch_capi.last_error).
thread_local int t_errno = 0;
thread_local char t_msg[512] = "";

void set_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void set_error(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(t_msg, sizeof t_msg, fmt, ap);
    va_end(ap);
    t_errno = err;
    errno = err;
}

// The error of a C++ exception from a Tracker (no GIL needed).
void set_error_from_cxx() {
    try {
        throw;
    } catch (const std::system_error &e) {
        set_error(e.code().value(), "%s", e.what());
    } catch (const std::invalid_argument &e) {
        set_error(EINVAL, "%s", e.what());
    } catch (const std::bad_alloc &) {
        set_error(ENOMEM, "out of memory");
    } catch (const std::exception &e) {
        set_error(EIO, "%s", e.what());
    } catch (...) {
        set_error(EIO, "unknown C++ exception");
    }
}

// The error of the Python exception that is set (GIL held); clears it.
// OSError (UnsupportedError included: EOPNOTSUPP) keeps its errno;
// ValueError/TypeError/OverflowError -> EINVAL, MemoryError -> ENOMEM.
void set_error_from_python() {
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int err = EIO;
    if (type != nullptr && PyErr_GivenExceptionMatches(type, PyExc_OSError)) {
        PyObject *e = value ? PyObject_GetAttrString(value, "errno") : nullptr;
        if (e != nullptr && PyLong_Check(e)) {
            err = static_cast<int>(PyLong_AsLong(e));
        }
        Py_XDECREF(e);
        PyErr_Clear();
    } else if (type != nullptr && (PyErr_GivenExceptionMatches(type, PyExc_ValueError) ||
                                   PyErr_GivenExceptionMatches(type, PyExc_TypeError) ||
                                   PyErr_GivenExceptionMatches(type, PyExc_OverflowError))) {
        err = EINVAL;
    } else if (type != nullptr && PyErr_GivenExceptionMatches(type, PyExc_MemoryError)) {
        err = ENOMEM;
    }
    std::string text = "unknown error";
    if (type != nullptr) {
        text = reinterpret_cast<PyTypeObject *>(type)->tp_name;
        PyObject *s = value ? PyObject_Str(value) : nullptr;
        const char *u = s ? PyUnicode_AsUTF8(s) : nullptr;
        if (u != nullptr && *u) {
            text += ": ";
            text += u;
        }
        Py_XDECREF(s);
        PyErr_Clear();
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    set_error(err == 0 ? EIO : err, "%s", text.c_str());
}

// Interpreter exit.  CPython ends a thread that asks for the GIL once
// finalization has begun (pthread_exit inside PyGILState_Ensure: through
// our noexcept frames that is std::terminate), and a thread parked inside
// the registry would hold its lock.  So an atexit hook, which runs before
// finalization starts, closes the gate: from then on a thread that does not
// hold the GIL never asks for it (ECANCELED), and the hook waits, with the
// GIL released, until every thread that got in before has left Python.
// seq_cst on both atomics: a thread counts itself in, then reads the gate;
// the hook closes the gate, then reads the count (the store-buffering pair).
std::atomic<bool> g_gate_closed{false};
std::atomic<int> g_in_python{0};

void close_gate() {
    g_gate_closed.store(true);
    PyThreadState *ts = PyEval_SaveThread();
    for (int i = 0; i < 5000 && g_in_python.load() != 0; ++i) {
        ::usleep(1000);  // at most 5 s: exit must never hang
    }
    PyEval_RestoreThread(ts);
}

// The GIL for one call that must run Python, from any thread.
class Gil {
public:
    Gil() noexcept {
        if (!Py_IsInitialized()) {
            set_error(ECANCELED, "the Python interpreter is not running");
            return;
        }
        if (PyGILState_Check()) {  // e.g. a capsule destructor: already ours
            state_ = PyGILState_Ensure();
            held_ = true;
            return;
        }
        g_in_python.fetch_add(1);
        counted_ = true;
        if (g_gate_closed.load() || interpreter_finalizing()) {
            set_error(ECANCELED, "the Python interpreter is exiting: memwatch cannot run Python "
                                 "for this call any more");
            return;
        }
        state_ = PyGILState_Ensure();
        held_ = true;
    }
    ~Gil() {
        if (held_) {
            PyGILState_Release(state_);
        }
        if (counted_) {
            g_in_python.fetch_sub(1);
        }
    }
    Gil(const Gil &) = delete;
    Gil &operator=(const Gil &) = delete;
    explicit operator bool() const noexcept { return held_; }

private:
    PyGILState_STATE state_{};
    bool held_ = false;
    bool counted_ = false;
};

const char *static_backend_name(const std::string &name) {
    static const char *const names[] = {"syscall", "pagemap_scan", "softdirty", "uffd",
                                        "mprotect"};
    for (const char *n : names) {
        if (name == n) {
            return n;
        }
    }
    return "unknown";
}

std::uint64_t u64_attr(PyObject *obj, const char *name) {
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == nullptr) {
        throw py::error_already_set();
    }
    const unsigned long long r = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (r == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
        throw py::error_already_set();
    }
    return r;
}

// GIL held.  Fills h from a new memwatch.Watch.
void describe(memwatch_watch *h) {
    py::handle w(h->watch);
    h->address = u64_attr(h->watch, "address");
    h->length = u64_attr(h->watch, "length");
    h->target_offset = u64_attr(h->watch, "target_offset");
    const std::string name = py::str(w.attr("backend"));
    h->backend = static_backend_name(name);
    py::object b = py::module_::import("memwatch._backends").attr("_backend")(name);
    std::uint32_t caps = 0;
    if (py::bool_(b.attr("atomic"))) {
        caps |= MEMWATCH_CAP_ATOMIC;
    }
    if (py::bool_(b.attr("sees_kernel_writes"))) {
        caps |= MEMWATCH_CAP_SEES_KERNEL_WRITES;
    }
    if (py::bool_(b.attr("false_positives"))) {
        caps |= MEMWATCH_CAP_FALSE_POSITIVES;
    }
    if (py::bool_(b.attr("partial_reset"))) {
        caps |= MEMWATCH_CAP_PARTIAL_RESET;
    }
    h->caps = caps;
    // The tracker of the Watch's one registration, when it is exactly the
    // Watch's range (memwatch.Watch._sole_tracker): it stays attached until
    // the Watch closes, and refuses direct calls (TrackerShared) whenever the
    // registry shares it.
    py::object t = w.attr("_sole_tracker")();
    if (!t.is_none()) {
        memwatch::Tracker *tr = g_tracker_of(t.ptr());
        if (tr != nullptr) {
            h->tracker_obj = t.release().ptr();
            h->fast = tr;
        }
    }
}

memwatch_watch *c_open(void *address, std::uint64_t length, const char *backend,
                       unsigned flags) noexcept {
    if (flags != 0) {
        set_error(EINVAL, "open: flags must be 0, got %#x", flags);
        return nullptr;
    }
    Gil gil;
    if (!gil) {
        return nullptr;
    }
    memwatch_watch *h = nullptr;
    try {
        h = new memwatch_watch;
        py::object watch_cls = py::module_::import("memwatch").attr("Watch");
        py::object w = watch_cls(py::int_(reinterpret_cast<std::uintptr_t>(address)),
                                 py::int_(length),
                                 py::arg("backend") = py::str(backend ? backend : "auto"));
        h->watch = w.release().ptr();
        describe(h);
        return h;
    } catch (py::error_already_set &e) {
        e.restore();
        set_error_from_python();
    } catch (...) {
        set_error_from_cxx();
    }
    if (h != nullptr) {
        if (h->watch != nullptr) {
            PyObject *r = PyObject_CallMethod(h->watch, "close", nullptr);
            Py_XDECREF(r);
            PyErr_Clear();
        }
        Py_XDECREF(h->tracker_obj);
        Py_XDECREF(h->watch);
        delete h;
    }
    return nullptr;
}

int c_close(memwatch_watch *h) noexcept {
    if (h == nullptr) {
        return 0;
    }
    int rc = 0;
    {
        Gil gil;
        if (!gil) {
            // The process is exiting: leave the Watch to it, free the handle.
            delete h;
            return -1;
        }
        PyObject *r = PyObject_CallMethod(h->watch, "close", nullptr);
        if (r == nullptr) {
            set_error_from_python();
            rc = -1;
        }
        Py_XDECREF(r);
        Py_XDECREF(h->tracker_obj);
        Py_DECREF(h->watch);
    }
    delete h;
    return rc;
}

// Checks (offset, length) against the watched range; returns the
// page-rounded length, or sets the error and returns false.
bool narrow(const memwatch_watch *h, std::uint64_t offset, std::uint64_t &length) {
    const std::uint64_t page = memwatch::page_size();
    if (offset % page != 0) {
        set_error(EINVAL, "offset %#llx is not a multiple of the page size",
                  static_cast<unsigned long long>(offset));
        return false;
    }
    if (offset > h->length) {
        set_error(EINVAL, "offset %#llx is outside the watched range (0..%#llx)",
                  static_cast<unsigned long long>(offset),
                  static_cast<unsigned long long>(h->length));
        return false;
    }
    if (length == MEMWATCH_ALL) {
        length = h->length - offset;
        return true;
    }
    if (length > h->length - offset) {
        set_error(EINVAL, "range %#llx+%#llx is outside the watched range (0..%#llx)",
                  static_cast<unsigned long long>(offset),
                  static_cast<unsigned long long>(length),
                  static_cast<unsigned long long>(h->length));
        return false;
    }
    length = (length + page - 1) / page * page;
    return true;
}

// Watch.dirty_into()/reset() with the GIL (the registry's shared path).
std::int64_t slow_dirty_into(memwatch_watch *h, std::uint64_t offset, std::uint64_t length,
                             std::uint64_t *out, std::uint64_t cap, bool reset) {
    Gil gil;
    if (!gil) {
        return -1;
    }
    try {
        py::object mem = py::reinterpret_steal<py::object>(PyMemoryView_FromMemory(
            reinterpret_cast<char *>(out), static_cast<Py_ssize_t>(cap * 8), PyBUF_WRITE));
        if (!mem) {
            throw py::error_already_set();
        }
        py::object view = mem.attr("cast")("Q");
        std::int64_t n = -1;
        try {
            n = py::handle(h->watch)
                    .attr("dirty_into")(view, py::arg("reset") = py::bool_(reset),
                                        py::arg("start") = py::int_(offset),
                                        py::arg("length") = py::int_(length))
                    .cast<std::int64_t>();
        } catch (...) {
            view.attr("release")();
            mem.attr("release")();
            throw;
        }
        view.attr("release")();
        mem.attr("release")();
        return n;
    } catch (py::error_already_set &e) {
        e.restore();
        set_error_from_python();
    } catch (...) {
        set_error_from_cxx();
    }
    return -1;
}

int slow_reset(memwatch_watch *h, std::uint64_t offset, std::uint64_t length) {
    Gil gil;
    if (!gil) {
        return -1;
    }
    PyObject *r = PyObject_CallMethod(h->watch, "reset", "KK",
                                      static_cast<unsigned long long>(offset),
                                      static_cast<unsigned long long>(length));
    if (r == nullptr) {
        set_error_from_python();
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

std::int64_t c_dirty_into(memwatch_watch *h, std::uint64_t offset, std::uint64_t length,
                          std::uint64_t *out, std::uint64_t cap, unsigned flags) noexcept {
    if (h == nullptr) {
        set_error(EINVAL, "dirty_into: watch is NULL");
        return -1;
    }
    if ((flags & ~MEMWATCH_RESET) != 0) {
        set_error(EINVAL, "dirty_into: unknown flags %#x", flags & ~MEMWATCH_RESET);
        return -1;
    }
    if (out == nullptr && cap != 0) {
        set_error(EINVAL, "dirty_into: out is NULL");
        return -1;
    }
    if (!narrow(h, offset, length)) {
        return -1;
    }
    if (cap == 0 || length == 0) {
        return 0;  // nothing reported, hence nothing reset
    }
    const bool reset = (flags & MEMWATCH_RESET) != 0;
    if (h->fast != nullptr) {
        try {
            const std::size_t n = h->fast->scan(static_cast<std::int64_t>(h->address + offset),
                                                static_cast<std::int64_t>(length), out,
                                                static_cast<std::size_t>(cap), reset);
            if (offset != 0) {
                for (std::size_t i = 0; i < n; ++i) {
                    out[i] += offset;
                }
            }
            return static_cast<std::int64_t>(n);
        } catch (const TrackerShared &) {
            // Another Watch shares the pages: the registry's path below.
        } catch (...) {
            set_error_from_cxx();
            return -1;
        }
    }
    return slow_dirty_into(h, offset, length, out, cap, reset);
}

int c_reset(memwatch_watch *h, std::uint64_t offset, std::uint64_t length) noexcept {
    if (h == nullptr) {
        set_error(EINVAL, "reset: watch is NULL");
        return -1;
    }
    if (!narrow(h, offset, length)) {
        return -1;
    }
    if (length == 0) {
        return 0;
    }
    if (h->fast != nullptr && (h->caps & MEMWATCH_CAP_PARTIAL_RESET)) {
        try {
            h->fast->reset(static_cast<std::int64_t>(h->address + offset),
                           static_cast<std::int64_t>(length));
            return 0;
        } catch (const TrackerShared &) {
        } catch (...) {
            set_error_from_cxx();
            return -1;
        }
    }
    return slow_reset(h, offset, length);
}

const char *c_last_error(int *errnum) noexcept {
    if (errnum != nullptr) {
        *errnum = t_errno;
    }
    return t_msg;
}

int c_info(const memwatch_watch *h, memwatch_info *info) noexcept {
    if (h == nullptr || info == nullptr) {
        set_error(EINVAL, "info: watch or info is NULL");
        return -1;
    }
    if (info->size < MEMWATCH_INFO_V1_SIZE) {
        set_error(EINVAL, "info: info->size is %u, at least %u expected (set it to "
                          "sizeof(memwatch_info))",
                  info->size, static_cast<unsigned>(MEMWATCH_INFO_V1_SIZE));
        return -1;
    }
    info->caps = h->caps;
    info->address = h->address;
    info->length = h->length;
    info->target_offset = h->target_offset;
    info->backend = h->backend;
    return 0;
}

memwatch_capi g_table = {
    MEMWATCH_CAPI_VERSION,
    static_cast<std::uint32_t>(sizeof(memwatch_capi)),
    0,  // page_size, set by install()
    c_open,
    c_close,
    c_dirty_into,
    c_reset,
    c_last_error,
    c_info,
};

}  // namespace

void install(py::module_ &m, TrackerOf tracker_of) {
    g_tracker_of = tracker_of;
    g_table.page_size = memwatch::page_size();
    PyObject *cap = PyCapsule_New(&g_table, MEMWATCH_CAPI_CAPSULE, nullptr);
    if (cap == nullptr) {
        throw py::error_already_set();
    }
    m.attr("_C_API") = py::reinterpret_steal<py::object>(cap);
    py::module_::import("atexit").attr("register")(
        py::cpp_function([] { close_gate(); }, py::name("_memwatch_capi_close_gate")));
}

}  // namespace memwatch::capi
