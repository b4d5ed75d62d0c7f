// The C API for other extensions (memwatch/include/memwatch/memwatch_capi.h):
// a capsule, memwatch._memwatch._C_API, holding the table of function
// pointers.  Implemented in capi.cpp; the bindings only install it.
#pragma once

#include <pybind11/pybind11.h>

#include "tracker.hpp"

namespace memwatch::capi {

// The C++ tracker behind a _memwatch.*Tracker object, or nullptr if obj is
// not one (GIL held).  The bindings know the Python tracker types.
using TrackerOf = Tracker *(*)(PyObject *obj);

// Add the _C_API capsule to the extension module.
void install(pybind11::module_ &m, TrackerOf tracker_of);

}  // namespace memwatch::capi
