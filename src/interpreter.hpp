// What the interpreter is doing, for code that may run without the GIL:
// shared by the bindings (_memwatch.cpp) and the C API (capi.cpp).
#pragma once

#include <Python.h>

namespace memwatch {

// Is the interpreter finalizing (then a non-main thread that asks for the
// GIL back is ended with pthread_exit on CPython < 3.14)?
inline bool interpreter_finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

}  // namespace memwatch
