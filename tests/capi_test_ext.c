/*
 * A tiny extension built against memwatch/memwatch_capi.h at test time by
 * tests/test_capi.py (gcc, sysconfig's include path, into tmp_path).  It
 * drives the C API the way another extension would: the hot calls from C
 * threads Python does not know, without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <memwatch/memwatch_capi.h>

static const memwatch_capi *api;

static PyObject *api_error(void)
{
	int err = 0;
	const char *msg = api->last_error(&err);
	PyObject *args = Py_BuildValue("(is)", err, msg);

	if (args != NULL) {
		PyErr_SetObject(PyExc_OSError, args);
		Py_DECREF(args);
	}
	return NULL;
}

static int need_api(void)
{
	if (api == NULL) {
		PyErr_SetString(PyExc_RuntimeError, "call import_api() first");
		return 0;
	}
	return 1;
}

static memwatch_watch *handle(PyObject *obj)
{
	void *p = PyLong_AsVoidPtr(obj);

	return (memwatch_watch *)p;
}

static PyObject *offsets_list(const uint64_t *out, int64_t n)
{
	PyObject *list = PyList_New(0);

	for (int64_t i = 0; list != NULL && i < n; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(out[i]);

		if (v == NULL || PyList_Append(list, v) < 0) {
			Py_XDECREF(v);
			Py_CLEAR(list);
			break;
		}
		Py_DECREF(v);
	}
	return list;
}

static PyObject *import_api(PyObject *self, PyObject *args)
{
	unsigned min_version;

	if (!PyArg_ParseTuple(args, "I", &min_version))
		return NULL;
	api = memwatch_import_capi(min_version);
	if (api == NULL)
		return NULL;
	return Py_BuildValue("(IIK)", api->version, api->size, (unsigned long long)api->page_size);
}

static void set_size(PyObject *d, const char *key, size_t value)
{
	PyObject *v = PyLong_FromSize_t(value);

	if (v != NULL) {
		PyDict_SetItemString(d, key, v);
		Py_DECREF(v);
	}
}

#define FIELD(name) set_size(d, #name, offsetof(memwatch_capi, name))

static PyObject *layout(PyObject *self, PyObject *unused)
{
	PyObject *d = PyDict_New();

	if (d == NULL)
		return NULL;
	FIELD(version);
	FIELD(size);
	FIELD(page_size);
	FIELD(open);
	FIELD(close);
	FIELD(dirty_into);
	FIELD(reset);
	FIELD(last_error);
	FIELD(info);
	set_size(d, "sizeof", sizeof(memwatch_capi));
	set_size(d, "header_version", MEMWATCH_CAPI_VERSION);
	return d;
}

static PyObject *w_open(PyObject *self, PyObject *args)
{
	unsigned long long address, length;
	const char *backend = NULL;
	unsigned flags = 0;
	memwatch_watch *w;

	if (!need_api() || !PyArg_ParseTuple(args, "KK|zI", &address, &length, &backend, &flags))
		return NULL;
	/* open() takes the GIL itself: show that it works when it is released. */
	Py_BEGIN_ALLOW_THREADS
	w = api->open((void *)(uintptr_t)address, length, backend, flags);
	Py_END_ALLOW_THREADS
	if (w == NULL)
		return api_error();
	return PyLong_FromVoidPtr(w);
}

static PyObject *w_close(PyObject *self, PyObject *arg)
{
	int rc;
	memwatch_watch *w;

	if (!need_api())
		return NULL;
	w = handle(arg);
	if (PyErr_Occurred())
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	rc = api->close(w);
	Py_END_ALLOW_THREADS
	if (rc < 0)
		return api_error();
	Py_RETURN_NONE;
}

static PyObject *w_info(PyObject *self, PyObject *arg)
{
	memwatch_info info;

	if (!need_api())
		return NULL;
	memset(&info, 0, sizeof(info));
	info.size = sizeof(info);
	if (api->info(handle(arg), &info) < 0)
		return api_error();
	return Py_BuildValue("{sKsKsKsssI}", "address", (unsigned long long)info.address, "length",
			     (unsigned long long)info.length, "target_offset",
			     (unsigned long long)info.target_offset, "backend", info.backend, "caps",
			     info.caps);
}

/* dirty_into() in this thread with the GIL released. */
static PyObject *w_dirty(PyObject *self, PyObject *args)
{
	PyObject *h, *list;
	unsigned long long cap, offset = 0, length = MEMWATCH_ALL;
	int reset;
	int64_t n;
	uint64_t *out;
	memwatch_watch *w;

	if (!need_api() || !PyArg_ParseTuple(args, "OKp|KK", &h, &cap, &reset, &offset, &length))
		return NULL;
	w = handle(h);
	out = calloc(cap ? cap : 1, sizeof(*out));
	if (out == NULL)
		return PyErr_NoMemory();
	Py_BEGIN_ALLOW_THREADS
	n = api->dirty_into(w, offset, length, out, cap, reset ? MEMWATCH_RESET : 0);
	Py_END_ALLOW_THREADS
	list = n < 0 ? api_error() : offsets_list(out, n);
	free(out);
	return list;
}

static PyObject *w_reset(PyObject *self, PyObject *args)
{
	PyObject *h;
	unsigned long long offset = 0, length = MEMWATCH_ALL;
	int rc;

	if (!need_api() || !PyArg_ParseTuple(args, "O|KK", &h, &offset, &length))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	rc = api->reset(handle(h), offset, length);
	Py_END_ALLOW_THREADS
	if (rc < 0)
		return api_error();
	Py_RETURN_NONE;
}

/* One dirty_into() from a C thread Python does not know. */
struct job {
	memwatch_watch *w;
	uint64_t *out;
	uint64_t cap;
	unsigned flags;
	int64_t n;
	int err;
	char msg[512];
};

static void *job_run(void *arg)
{
	struct job *j = arg;

	j->n = api->dirty_into(j->w, 0, MEMWATCH_ALL, j->out, j->cap, j->flags);
	if (j->n < 0) {
		const char *m = api->last_error(&j->err);

		snprintf(j->msg, sizeof(j->msg), "%s", m);
	}
	return NULL;
}

/*
 * dirty_in_thread(h, cap, reset, keep_gil): run dirty_into() in a new C
 * thread.  With keep_gil, this thread holds the GIL while it waits (at most
 * 20 s): the call can only finish if it needs no Python.
 */
static PyObject *w_dirty_in_thread(PyObject *self, PyObject *args)
{
	PyObject *h, *list;
	unsigned long long cap;
	int reset, keep_gil = 0, rc;
	pthread_t th;
	struct job *j;

	if (!need_api() || !PyArg_ParseTuple(args, "OKp|p", &h, &cap, &reset, &keep_gil))
		return NULL;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return PyErr_NoMemory();
	j->w = handle(h);
	j->cap = cap;
	j->flags = reset ? MEMWATCH_RESET : 0;
	j->out = calloc(cap ? cap : 1, sizeof(uint64_t));
	if (j->out == NULL || pthread_create(&th, NULL, job_run, j) != 0) {
		free(j->out);
		free(j);
		return PyErr_NoMemory();
	}
	if (keep_gil) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 20;
		rc = pthread_timedjoin_np(th, NULL, &ts);
		if (rc != 0) {
			/* The job waits for the GIL: let it finish, then fail. */
			Py_BEGIN_ALLOW_THREADS
			pthread_join(th, NULL);
			Py_END_ALLOW_THREADS
			free(j->out);
			free(j);
			PyErr_SetString(PyExc_TimeoutError,
					"dirty_into() did not finish while this thread held the GIL");
			return NULL;
		}
	} else {
		Py_BEGIN_ALLOW_THREADS
		pthread_join(th, NULL);
		Py_END_ALLOW_THREADS
	}
	if (j->n < 0) {
		PyObject *a = Py_BuildValue("(is)", j->err, j->msg);

		if (a != NULL) {
			PyErr_SetObject(PyExc_OSError, a);
			Py_DECREF(a);
		}
		list = NULL;
	} else {
		list = offsets_list(j->out, j->n);
	}
	free(j->out);
	free(j);
	return list;
}

/* A C thread polling dirty_into(MEMWATCH_RESET) in a loop, as an
 * application's frame loop would, while Python writes. */
static struct poller {
	pthread_t th;
	memwatch_watch *w;
	uint64_t npages, page;
	unsigned char *seen;
	volatile int stop;
	long rounds;
	int err;
	char msg[512];
} poll_state;

static void *poll_run(void *arg)
{
	struct poller *p = arg;
	uint64_t out[16]; /* small on purpose: the loop must resume */

	for (;;) {
		int last = p->stop;
		int64_t n = api->dirty_into(p->w, 0, MEMWATCH_ALL, out, 16, MEMWATCH_RESET);

		if (n < 0) {
			const char *m = api->last_error(&p->err);

			snprintf(p->msg, sizeof(p->msg), "%s", m);
			return NULL;
		}
		for (int64_t i = 0; i < n; i++)
			if (out[i] / p->page < p->npages)
				p->seen[out[i] / p->page] = 1;
		p->rounds++;
		if (last && n < 16)
			return NULL; /* one full pass after stop was asked */
	}
}

static PyObject *poll_start(PyObject *self, PyObject *args)
{
	PyObject *h;
	unsigned long long npages;

	if (!need_api() || !PyArg_ParseTuple(args, "OK", &h, &npages))
		return NULL;
	memset(&poll_state, 0, sizeof(poll_state));
	poll_state.w = handle(h);
	poll_state.npages = npages;
	poll_state.page = api->page_size;
	poll_state.seen = calloc(npages ? npages : 1, 1);
	if (poll_state.seen == NULL)
		return PyErr_NoMemory();
	if (pthread_create(&poll_state.th, NULL, poll_run, &poll_state) != 0) {
		free(poll_state.seen);
		return PyErr_NoMemory();
	}
	Py_RETURN_NONE;
}

static PyObject *poll_stop(PyObject *self, PyObject *unused)
{
	PyObject *pages, *res;

	__atomic_store_n(&poll_state.stop, 1, __ATOMIC_SEQ_CST);
	Py_BEGIN_ALLOW_THREADS
	pthread_join(poll_state.th, NULL);
	Py_END_ALLOW_THREADS
	pages = PyList_New(0);
	for (uint64_t i = 0; pages != NULL && i < poll_state.npages; i++) {
		if (poll_state.seen[i]) {
			PyObject *v = PyLong_FromUnsignedLongLong(i);

			PyList_Append(pages, v);
			Py_XDECREF(v);
		}
	}
	free(poll_state.seen);
	if (pages == NULL)
		return NULL;
	res = Py_BuildValue("(Nlis)", pages, poll_state.rounds, poll_state.err, poll_state.msg);
	return res;
}

static PyMethodDef methods[] = {
	{"import_api", import_api, METH_VARARGS, NULL},
	{"layout", layout, METH_NOARGS, NULL},
	{"open", w_open, METH_VARARGS, NULL},
	{"close", w_close, METH_O, NULL},
	{"info", w_info, METH_O, NULL},
	{"dirty", w_dirty, METH_VARARGS, NULL},
	{"reset", w_reset, METH_VARARGS, NULL},
	{"dirty_in_thread", w_dirty_in_thread, METH_VARARGS, NULL},
	{"poll_start", poll_start, METH_VARARGS, NULL},
	{"poll_stop", poll_stop, METH_NOARGS, NULL},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
	PyModuleDef_HEAD_INIT, MODNAME, NULL, -1, methods, NULL, NULL, NULL, NULL,
};

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
PyMODINIT_FUNC CAT(PyInit_, MODNAME_ID)(void)
{
	return PyModule_Create(&moddef);
}
