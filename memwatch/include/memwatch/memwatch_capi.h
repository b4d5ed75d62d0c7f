/*
 * memwatch C API: page-write tracking for other C and C++ extensions.
 *
 * The numpy way: memwatch's extension module exports a capsule
 * (MEMWATCH_CAPI_CAPSULE) holding a versioned table of function pointers;
 * memwatch_import_capi() below fetches it.  Compile with
 *
 *     -I$(python3 -c 'import memwatch; print(memwatch.get_include())')
 *
 * and include <Python.h> first, as for any extension.  No link-time
 * dependency: every call goes through the table.
 *
 *     static const memwatch_capi *mw;
 *     PyMODINIT_FUNC PyInit_mymod(void) {
 *         mw = memwatch_import_capi(1);      // NULL + ImportError set
 *         if (mw == NULL) return NULL;
 *         ...
 *     }
 *     memwatch_watch *w = mw->open(buf, len, "auto", 0);
 *     ...                                   // writes
 *     int64_t n = mw->dirty_into(w, 0, MEMWATCH_ALL, out, cap, MEMWATCH_RESET);
 *     mw->close(w);
 *
 * Semantics are memwatch.Watch's (README "For C and C++ extensions"):
 *  - open() creates a memwatch.Watch on the pages covering [address,
 *    address + length) of this process: the same backend choice ("auto" or a
 *    name), the same overlap registry (a C watch and a Python Watch, or two C
 *    watches, on the same pages each see every write), the same errors.
 *  - Offsets are bytes from the watch's page-aligned start
 *    (memwatch_info.address, i.e. address rounded down to page_size).
 *  - A new watch reports only writes made after open().
 *  - open() takes an address, not a buffer export: keep the range mapped
 *    (and a bytearray unresized) until close().
 *
 * Threads and the GIL:
 *  - dirty_into() and reset() are the hot calls.  They may be called from
 *    any thread, with or without the GIL, also from threads Python does not
 *    know.  While the watch is alone on its pages (no other memwatch Watch
 *    overlaps them) they call memwatch's C++ tracker directly: no Python, no
 *    GIL, no allocation.  (Exceptions, always through Python: a watch
 *    opened over pages other Watches already held in part, whose range is
 *    then several registrations, and the softdirty backend, which resets
 *    whole processes only.)  While another Watch shares the pages they take the
 *    GIL (PyGILState_Ensure) and go through memwatch's Python registry, which
 *    gives every watch every write; they return to the direct path once the
 *    watch is alone again.  If you hold the GIL when calling them, you keep
 *    it during the call: release it yourself around long scans.
 *  - open() and close() always take the GIL internally (PyGILState_Ensure):
 *    do not call them while holding a lock that a thread holding the GIL may
 *    wait for.
 *  - Calls on one watch from several threads are serialised; close() must
 *    not race with any other call on the same watch, and frees it.
 *  - At interpreter exit (from memwatch's atexit hook on), calls that need
 *    Python fail with ECANCELED unless the calling thread holds the GIL
 *    (close() then still frees the handle); the hook waits (5 s at most)
 *    for calls already inside Python to return, so no thread of yours is
 *    ended inside PyGILState_Ensure.  The direct path (watch alone on its
 *    pages) keeps working until the process exits.  In a fork() child,
 *    inherited watches fail (EINVAL): open new ones there.
 *
 * Errors: a failing call returns NULL or -1 and records, for the calling
 * thread, an errno value and a message; last_error() returns both (the
 * message is valid until the thread's next failing call).  errno values:
 * EINVAL bad argument or closed/inherited watch, EOPNOTSUPP no backend can
 * watch the range (or the one asked for cannot), ENOMEM, ECANCELED
 * interpreter finalizing, EIO anything else, and the kernel's errno for a
 * failing system call (ENOMEM for an unmapped range, EBUSY, ...).
 *
 * Versioning: `version` is the highest MEMWATCH_CAPI_VERSION the installed
 * table implements and `size` its sizeof.  A newer version only appends
 * members; the offsets of every earlier member never change (checked below
 * at compile time, and by tests/test_capi.py).  Ask memwatch_import_capi()
 * for the lowest version whose members you use.
 */
#ifndef MEMWATCH_CAPI_H
#define MEMWATCH_CAPI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MEMWATCH_CAPI_VERSION 1
#define MEMWATCH_CAPI_CAPSULE "memwatch._memwatch._C_API"

/* dirty_into()/reset() length: to the end of the watched range. */
#define MEMWATCH_ALL UINT64_MAX
/* dirty_into() flags: reset exactly the reported pages (and the clean pages
 * before the point where `out` filled up), atomically where the backend is
 * atomic. */
#define MEMWATCH_RESET 1u

/* memwatch_info.caps bits: what the chosen backend can do (memwatch.Backend). */
#define MEMWATCH_CAP_ATOMIC 1u
#define MEMWATCH_CAP_SEES_KERNEL_WRITES 2u
#define MEMWATCH_CAP_FALSE_POSITIVES 4u
#define MEMWATCH_CAP_PARTIAL_RESET 8u

typedef struct memwatch_watch memwatch_watch; /* opaque */

typedef struct memwatch_info {
	uint32_t size;       /* set by the caller: sizeof(memwatch_info) */
	uint32_t caps;       /* MEMWATCH_CAP_* */
	uint64_t address;    /* the watched range's page-aligned start */
	uint64_t length;     /* its length in bytes (whole pages) */
	uint64_t target_offset; /* where open()'s address lies, from `address` */
	const char *backend; /* "pagemap_scan", ...; static storage */
} memwatch_info;

typedef struct memwatch_capi {
	uint32_t version; /* MEMWATCH_CAPI_VERSION of the installed memwatch */
	uint32_t size;    /* sizeof(memwatch_capi) of the installed memwatch */
	uint64_t page_size;

	/* ---- version 1 ---- */

	/* Watch the pages covering [address, address + length) of this
	 * process.  backend: "auto" (or NULL) or a backend name.  flags: 0. */
	memwatch_watch *(*open)(void *address, uint64_t length, const char *backend,
				unsigned flags);
	/* Stop watching and free w (also when it fails); close(NULL) is 0. */
	int (*close)(memwatch_watch *w);
	/* Byte offsets (from the watched range's start) of the pages written in
	 * [offset, offset + length) of the watched range, ascending, into
	 * out[0..capacity); stops when out is full; returns the count.  offset
	 * is a multiple of page_size, length is rounded up to pages or
	 * MEMWATCH_ALL.  flags: 0 or MEMWATCH_RESET. */
	int64_t (*dirty_into)(memwatch_watch *w, uint64_t offset, uint64_t length, uint64_t *out,
			      uint64_t capacity, unsigned flags);
	/* Mark [offset, offset + length) clean (same rules as dirty_into). */
	int (*reset)(memwatch_watch *w, uint64_t offset, uint64_t length);
	/* The calling thread's last error: the message (never NULL, "" when
	 * none) and, if errnum is not NULL, its errno value. */
	const char *(*last_error)(int *errnum);
	/* Fill *info (info->size set by the caller, at least
	 * MEMWATCH_INFO_V1_SIZE). */
	int (*info)(const memwatch_watch *w, memwatch_info *info);
} memwatch_capi;

/* ABI guard: the version-1 members stay at these offsets in every later
 * version (a new version appends after MEMWATCH_CAPI_V1_SIZE). */
#define MEMWATCH__P ((size_t)sizeof(void *))
#define MEMWATCH_CAPI_V1_SIZE ((size_t)16 + 6 * MEMWATCH__P)
#define MEMWATCH_INFO_V1_SIZE ((size_t)32 + MEMWATCH__P)

#if defined(__cplusplus)
#define MEMWATCH__STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MEMWATCH__STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#else
#define MEMWATCH__STATIC_ASSERT(cond, msg)
#endif

MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, version) == 0, "memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, size) == 4, "memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, page_size) == 8, "memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, open) == 16 + 0 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, close) == 16 + 1 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, dirty_into) == 16 + 2 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, reset) == 16 + 3 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, last_error) == 16 + 4 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_capi, info) == 16 + 5 * MEMWATCH__P,
			"memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(sizeof(memwatch_capi) >= MEMWATCH_CAPI_V1_SIZE, "memwatch_capi v1 ABI");
MEMWATCH__STATIC_ASSERT(offsetof(memwatch_info, backend) == 32, "memwatch_info v1 ABI");
MEMWATCH__STATIC_ASSERT(sizeof(memwatch_info) >= MEMWATCH_INFO_V1_SIZE, "memwatch_info v1 ABI");

/* The table size a caller of version `version` needs (0 if unknown). */
static inline size_t memwatch_capi_size_for(unsigned version)
{
	return version == 1 ? MEMWATCH_CAPI_V1_SIZE : 0;
}

#ifndef MEMWATCH_CAPI_NO_PYTHON
/*
 * Import memwatch (and so its extension) and return its C API table, or NULL
 * with ImportError set -- also when the installed memwatch implements a lower
 * version than min_version, or min_version is not one this header knows.
 * Call with the GIL held (e.g. in your module's init function) and keep the
 * pointer: the table lives as long as the process.
 */
static inline const memwatch_capi *memwatch_import_capi(unsigned min_version)
{
	const memwatch_capi *api;

	if (min_version < 1 || min_version > MEMWATCH_CAPI_VERSION) {
		PyErr_Format(PyExc_ImportError,
			     "memwatch C API version %u was requested, but this memwatch_capi.h "
			     "knows versions 1 to %u",
			     min_version, (unsigned)MEMWATCH_CAPI_VERSION);
		return NULL;
	}
	api = (const memwatch_capi *)PyCapsule_Import(MEMWATCH_CAPI_CAPSULE, 0);
	if (api == NULL)
		return NULL;
	if (api->version < min_version || api->size < memwatch_capi_size_for(min_version)) {
		PyErr_Format(PyExc_ImportError,
			     "memwatch C API version %u is required, but the installed memwatch "
			     "provides version %u (table of %u bytes); upgrade memwatch",
			     min_version, (unsigned)api->version, (unsigned)api->size);
		return NULL;
	}
	return api;
}
#endif /* MEMWATCH_CAPI_NO_PYTHON */

#ifdef __cplusplus
}
#endif

#endif /* MEMWATCH_CAPI_H */
