/* The prediction log's hand-over, compiled: what ``PredictionLog.hand_over`` does in Python
 * (the sample, the request's record, ``PredictionLog.offer``), step for step, on the same
 * objects, without the interpreter; and ``row_blocks.RowBlocks``, whose ``copy`` it calls. The
 * Python is the reference, and runs where this is not built (no C compiler);
 * tests/unit/test_prediction_log_hand_over.py holds the two to the same results.
 *
 * Why: every logged request pays for the hand-over on the serving thread. In Python it took
 * ~3.7 us a request in a loop and ~9 us of the event loop thread's CPU a call in a server; the
 * least a hand-over can do (an id appended, a row copied) ~1 us and ~2.7 us. With the files
 * written, that least one cost the server ~10 us of CPU a call and the Python one ~17
 * (bench/log_floor.py, bench/results/log_floor.md).
 *
 * ``HandOver(log)`` is called as ``PredictionLog.hand_over`` is (positional arguments). It reads
 * the tuples the Python keeps for it (``LogStream.offer_facts``, ``_Waiting.constants``,
 * ``Pending.lists``) rather than an attribute each, and calls back into the log where the Python
 * does more than the usual case: ``log.hand_over`` (no queue yet for the version's settings),
 * ``log.wake_writer`` and ``log.count_dropped``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#define BLOCK_BYTES (1 << 20) /* row_blocks.BLOCK_BYTES */

enum { QUEUED = 0, WAKE = 1, SLOW = 2 }; /* below 0: -1 - the rows dropped */

/* The Python helpers (``configure``). */
static PyObject *nbytes_of;   /* records.nbytes_of */
static PyObject *sampled;     /* records.sampled */
static PyObject *copy_array;  /* numpy.array */
static PyObject *empty_array; /* numpy.empty */

static PyObject *s_offer_facts, *s_constants, *s_pending, *s_lists, *s_rows, *s_nbytes, *s_since, *s_stopping,
    *s_waiting, *s_lock, *s_acquire, *s_release, *s_hand_over, *s_wake_writer, *s_count_dropped, *s_shape,
    *s_ndim, *s_copy, *s_dtype, *s_itemsize;

static long long clock_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* ``getattr(o, name)`` as a C number; -1 with an exception set on failure. */
static int attr_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int attr_true(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    return truth;
}

static int set_ll(PyObject *o, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int done = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return done;
}

/* The rows of a request: the first dimension of its first tensor (1 for a scalar). */
static int rows_of(PyObject *arrays, long long *rows) {
    Py_ssize_t pos = 0;
    PyObject *name, *values;
    *rows = 1;
    if (!PyDict_Next(arrays, &pos, &name, &values)) return 0;
    long long ndim;
    if (attr_ll(values, s_ndim, &ndim) < 0) return -1;
    if (ndim == 0) return 0;
    PyObject *shape = PyObject_GetAttr(values, s_shape);
    if (shape == NULL) return -1;
    PyObject *first = PySequence_GetItem(shape, 0);
    Py_DECREF(shape);
    if (first == NULL) return -1;
    *rows = PyLong_AsLongLong(first);
    Py_DECREF(first);
    return (*rows == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int truthy_dict(PyObject *o) { return o != Py_None && PyDict_Check(o) && PyDict_GET_SIZE(o) > 0; }

static int nbytes_of_both(PyObject *inputs, PyObject *outputs, long long *nbytes) {
    long long total = 0;
    PyObject *both[2] = {inputs, outputs};
    for (int i = 0; i < 2; i++) {
        PyObject *n = PyObject_CallOneArg(nbytes_of, both[i]);
        if (n == NULL) return -1;
        long long v = PyLong_AsLongLong(n);
        Py_DECREF(n);
        if (v == -1 && PyErr_Occurred()) return -1;
        total += v;
    }
    *nbytes = total;
    return 0;
}

/* ---- RowBlocks: row_blocks.RowBlocks, compiled (that file says why the log copies rows into
 * blocks it reuses). The same attributes and methods; the lock of the log is held around it. */

typedef struct {
    PyObject_HEAD
    PyObject *row_shape; /* tuple of ints */
    PyObject *dtype;
    Py_ssize_t rows;       /* rows a block holds */
    Py_ssize_t max_blocks; /* blocks kept for reuse at most */
    Py_ssize_t row_nbytes;
    PyObject *blocks;  /* list: the blocks kept for reuse */
    PyObject *current; /* the block being filled, or NULL */
    Py_buffer current_buffer; /* its memory (valid while ``current`` is not NULL) */
    Py_ssize_t used, start;
    PyObject *filled; /* list of (block, first row, row after the last): runs not yet taken */
    int outside;      /* rows were copied outside the blocks since the last take_runs */
} RowBlocksObject;

static PyTypeObject RowBlocksType;

static void drop_current(RowBlocksObject *self) {
    if (self->current != NULL) {
        PyBuffer_Release(&self->current_buffer);
        Py_CLEAR(self->current);
    }
}

static int RowBlocks_init(RowBlocksObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"row_shape", "dtype", "max_bytes", NULL};
    PyObject *row_shape, *dtype;
    double max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!Od", names, &PyTuple_Type, &row_shape, &dtype, &max_bytes))
        return -1;
    long long itemsize;
    if (attr_ll(dtype, s_itemsize, &itemsize) < 0) return -1;
    long long row_nbytes = itemsize;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(row_shape); i++) {
        long long d = PyLong_AsLongLong(PyTuple_GET_ITEM(row_shape, i));
        if (d == -1 && PyErr_Occurred()) return -1;
        if (d < 0) {
            PyErr_SetString(PyExc_ValueError, "a row's dimensions are fixed");
            return -1;
        }
        row_nbytes *= d;
    }
    if (row_nbytes < 1) row_nbytes = 1;
    drop_current(self);
    Py_XSETREF(self->row_shape, Py_NewRef(row_shape));
    Py_XSETREF(self->dtype, Py_NewRef(dtype));
    self->row_nbytes = (Py_ssize_t)row_nbytes;
    self->rows = BLOCK_BYTES / row_nbytes > 1 ? BLOCK_BYTES / row_nbytes : 1;
    self->max_blocks = 2 + (Py_ssize_t)(max_bytes / (double)(self->rows * row_nbytes));
    Py_XSETREF(self->blocks, PyList_New(0));
    Py_XSETREF(self->filled, PyList_New(0));
    self->used = self->start = 0;
    self->outside = 0;
    return self->blocks != NULL && self->filled != NULL ? 0 : -1;
}

static void RowBlocks_dealloc(RowBlocksObject *self) {
    drop_current(self);
    Py_XDECREF(self->row_shape);
    Py_XDECREF(self->dtype);
    Py_XDECREF(self->blocks);
    Py_XDECREF(self->filled);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A block no copy or run refers to (only ``blocks`` holds it), or a new one. */
static PyObject *unused_block(RowBlocksObject *self) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->blocks); i++) {
        PyObject *block = PyList_GET_ITEM(self->blocks, i);
        if (Py_REFCNT(block) == 1) return Py_NewRef(block);
    }
    PyObject *shape = PyTuple_New(1 + PyTuple_GET_SIZE(self->row_shape));
    if (shape == NULL) return NULL;
    PyObject *rows = PyLong_FromSsize_t(self->rows);
    if (rows == NULL) {
        Py_DECREF(shape);
        return NULL;
    }
    PyTuple_SET_ITEM(shape, 0, rows);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->row_shape); i++)
        PyTuple_SET_ITEM(shape, i + 1, Py_NewRef(PyTuple_GET_ITEM(self->row_shape, i)));
    PyObject *block = empty_array == NULL ? NULL : PyObject_CallFunctionObjArgs(empty_array, shape, self->dtype, NULL);
    if (empty_array == NULL) PyErr_SetString(PyExc_RuntimeError, "_hand_over.configure() was not called");
    Py_DECREF(shape);
    if (block == NULL) return NULL;
    if (PyList_GET_SIZE(self->blocks) < self->max_blocks && PyList_Append(self->blocks, block) < 0) {
        Py_DECREF(block);
        return NULL;
    }
    return block;
}

/* Whether ``values`` is a batch of rows of this shape and datatype (n rows, set). */
static int fits(RowBlocksObject *self, PyObject *values, Py_ssize_t *n) {
    PyObject *dtype = PyObject_GetAttr(values, s_dtype);
    if (dtype == NULL) return -1;
    int same = dtype == self->dtype ? 1 : PyObject_RichCompareBool(dtype, self->dtype, Py_EQ);
    Py_DECREF(dtype);
    if (same <= 0) return same;
    PyObject *shape = PyObject_GetAttr(values, s_shape);
    if (shape == NULL) return -1;
    Py_ssize_t dims = PyTuple_GET_SIZE(self->row_shape);
    same = PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == dims + 1;
    for (Py_ssize_t i = 0; same && i < dims; i++) {
        same = PyObject_RichCompareBool(PyTuple_GET_ITEM(shape, i + 1), PyTuple_GET_ITEM(self->row_shape, i), Py_EQ);
        if (same < 0) {
            Py_DECREF(shape);
            return -1;
        }
    }
    if (same) {
        *n = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, 0));
        if (*n == -1 && PyErr_Occurred()) same = -1;
    }
    Py_DECREF(shape);
    return same;
}

static PyObject *copy_rows(RowBlocksObject *self, PyObject *values) {
    Py_ssize_t n = 0;
    int fit = fits(self, values, &n);
    if (fit < 0) return NULL;
    if (!fit || n > self->rows) {
        self->outside = 1;
        return PyObject_CallMethodNoArgs(values, s_copy);
    }
    if (self->current == NULL || self->used + n > self->rows) {
        if (self->current != NULL && self->used > self->start) {
            PyObject *run = Py_BuildValue("(Onn)", self->current, self->start, self->used);
            if (run == NULL || PyList_Append(self->filled, run) < 0) {
                Py_XDECREF(run);
                return NULL;
            }
            Py_DECREF(run);
        }
        PyObject *block = unused_block(self);
        if (block == NULL) return NULL;
        drop_current(self);
        if (PyObject_GetBuffer(block, &self->current_buffer, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(block);
            return NULL;
        }
        self->current = block;
        self->used = self->start = 0;
    }
    PyObject *first = PyLong_FromSsize_t(self->used), *after = PyLong_FromSsize_t(self->used + n);
    PyObject *slice = first && after ? PySlice_New(first, after, NULL) : NULL;
    Py_XDECREF(first);
    Py_XDECREF(after);
    if (slice == NULL) return NULL;
    PyObject *rows = PyObject_GetItem(self->current, slice);
    Py_DECREF(slice);
    if (rows == NULL) return NULL;
    Py_buffer source;
    char *into = (char *)self->current_buffer.buf + self->used * self->row_nbytes;
    if (PyObject_GetBuffer(values, &source, PyBUF_C_CONTIGUOUS) == 0) {
        if (source.len == n * self->row_nbytes) {
            memcpy(into, source.buf, (size_t)source.len);
            PyBuffer_Release(&source);
            self->used += n;
            return rows;
        }
        PyBuffer_Release(&source);
    } else {
        PyErr_Clear(); /* not contiguous: numpy copies it */
    }
    if (PyObject_SetItem(rows, Py_Ellipsis, values) < 0) {
        Py_DECREF(rows);
        return NULL;
    }
    self->used += n;
    return rows;
}

static PyObject *RowBlocks_copy(RowBlocksObject *self, PyObject *values) { return copy_rows(self, values); }

static PyObject *RowBlocks_take_runs(RowBlocksObject *self, PyObject *unused) {
    PyObject *runs = self->filled;
    if (self->current != NULL && self->used > self->start) {
        PyObject *run = Py_BuildValue("(Onn)", self->current, self->start, self->used);
        if (run == NULL || PyList_Append(runs, run) < 0) {
            Py_XDECREF(run);
            return NULL;
        }
        Py_DECREF(run);
    }
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    int outside = self->outside;
    self->filled = fresh; /* ``runs`` keeps the old list's reference */
    self->start = self->used;
    self->outside = 0;
    if (outside) {
        Py_DECREF(runs);
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(runs);
    PyObject *views = PyList_New(count);
    for (Py_ssize_t i = 0; views != NULL && i < count; i++) {
        PyObject *run = PyList_GET_ITEM(runs, i);
        PyObject *slice = PySlice_New(PyTuple_GET_ITEM(run, 1), PyTuple_GET_ITEM(run, 2), NULL);
        PyObject *view = slice ? PyObject_GetItem(PyTuple_GET_ITEM(run, 0), slice) : NULL;
        Py_XDECREF(slice);
        if (view == NULL) Py_CLEAR(views);
        else PyList_SET_ITEM(views, i, view);
    }
    Py_DECREF(runs);
    return views;
}

static PyMemberDef RowBlocks_members[] = {
    {"row_shape", T_OBJECT_EX, offsetof(RowBlocksObject, row_shape), READONLY, "a row's dimensions"},
    {"dtype", T_OBJECT_EX, offsetof(RowBlocksObject, dtype), READONLY, "the rows' datatype"},
    {"rows", T_PYSSIZET, offsetof(RowBlocksObject, rows), READONLY, "rows a block holds"},
    {"max_blocks", T_PYSSIZET, offsetof(RowBlocksObject, max_blocks), READONLY,
     "blocks kept for reuse at most: enough for the queue's bound in bytes"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef RowBlocks_methods[] = {
    {"copy", (PyCFunction)RowBlocks_copy, METH_O,
     "values (a batch of rows) copied; into the current block when it has this shape and datatype and fits in one."},
    {"take_runs", (PyCFunction)RowBlocks_take_runs, METH_NOARGS,
     "The rows copied since the last call, in order, as runs of consecutive rows of the blocks (views); None when "
     "some were copied outside the blocks."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RowBlocksType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "serving.prediction_log._hand_over.RowBlocks",
    .tp_basicsize = sizeof(RowBlocksObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Rows of one tensor, copied into blocks of BLOCK_BYTES (row_blocks.RowBlocks, compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RowBlocks_init,
    .tp_dealloc = (destructor)RowBlocks_dealloc,
    .tp_members = RowBlocks_members,
    .tp_methods = RowBlocks_methods,
};

/* ``writer._append``: one request's ``arrays`` added to ``tensors`` (which hold ``n`` requests
 * before it), copied when ``blocks`` is not NULL (into a tensor's blocks where it has them,
 * else by numpy.array). The copies are all made before any list changes. */
static int append_tensors(PyObject *tensors, PyObject *arrays, Py_ssize_t n, PyObject *blocks) {
    if (arrays != Py_None && PyDict_GET_SIZE(arrays) > 0) {
        Py_ssize_t count = PyDict_GET_SIZE(arrays), pos = 0, i = 0;
        PyObject *kept = PyList_New(count);
        if (kept == NULL) return -1;
        PyObject *name, *values;
        while (i < count && PyDict_Next(arrays, &pos, &name, &values)) { /* (the request's own dict) */
            PyObject *copy;
            if (blocks == NULL) {
                copy = Py_NewRef(values);
            } else {
                PyObject *b = PyDict_GetItemWithError(blocks, name);
                if (b == NULL && PyErr_Occurred()) copy = NULL;
                else if (b != NULL && Py_IS_TYPE(b, &RowBlocksType)) copy = copy_rows((RowBlocksObject *)b, values);
                else if (b != NULL && b != Py_None) copy = PyObject_CallMethodOneArg(b, s_copy, values);
                else copy = PyObject_CallOneArg(copy_array, values);
            }
            if (copy == NULL) {
                Py_DECREF(kept);
                return -1;
            }
            PyList_SET_ITEM(kept, i++, copy);
        }
        if (i < count) { /* it shrank while copies ran Python: not one of the requests it is given */
            PyErr_SetString(PyExc_RuntimeError, "a request's tensors changed while the log copied them");
            Py_DECREF(kept);
            return -1;
        }
        pos = 0;
        i = 0;
        while (i < count && PyDict_Next(arrays, &pos, &name, &values)) {
            PyObject *column = PyDict_GetItemWithError(tensors, name);
            if (column == NULL) {
                if (PyErr_Occurred()) goto failed;
                column = PyList_New(n);
                if (column == NULL) goto failed;
                for (Py_ssize_t k = 0; k < n; k++) PyList_SET_ITEM(column, k, Py_NewRef(Py_None));
                int set = PyDict_SetItem(tensors, name, column);
                Py_DECREF(column); /* the dict holds it */
                if (set < 0) goto failed;
            }
            if (PyList_Append(column, PyList_GET_ITEM(kept, i++)) < 0) goto failed;
        }
        Py_DECREF(kept);
        goto lacking;
    failed:
        Py_DECREF(kept);
        return -1;
    }
lacking:;
    Py_ssize_t pos = 0;
    PyObject *name, *column;
    while (PyDict_Next(tensors, &pos, &name, &column)) {
        if (PyList_Check(column) && PyList_GET_SIZE(column) == n && PyList_Append(column, Py_None) < 0) return -1;
    }
    return 0;
}

/* ``Pending.add``: the request's fields, each on its list (``lists``: ``Pending.lists``), its
 * inputs copied (``blocks``); ``queued``: the requests waiting now. */
static int keep(PyObject *lists, PyObject *blocks, PyObject *request_id, long long time_ns, PyObject *route,
                PyObject *failure, long long latency_ns, long long rows, long long nbytes, PyObject *inputs,
                PyObject *outputs, Py_ssize_t *queued) {
    if (!PyTuple_Check(lists) || PyTuple_GET_SIZE(lists) != 9 || !PyDict_Check(PyTuple_GET_ITEM(lists, 7)) ||
        !PyDict_Check(PyTuple_GET_ITEM(lists, 8)) || (blocks != Py_None && !PyDict_Check(blocks))) {
        PyErr_SetString(PyExc_TypeError, "Pending.lists is not what the compiled hand-over knows");
        return -1;
    }
    for (int i = 0; i < 7; i++) {
        if (!PyList_Check(PyTuple_GET_ITEM(lists, i))) {
            PyErr_SetString(PyExc_TypeError, "Pending.lists is not what the compiled hand-over knows");
            return -1;
        }
    }
    PyObject *ids = PyTuple_GET_ITEM(lists, 0);
    Py_ssize_t n = PyList_GET_SIZE(ids);
    if (append_tensors(PyTuple_GET_ITEM(lists, 7), inputs, n, blocks == Py_None ? NULL : blocks) < 0 ||
        append_tensors(PyTuple_GET_ITEM(lists, 8), outputs, n, NULL) < 0)
        return -1;
    PyObject *numbers[4] = {PyLong_FromLongLong(time_ns), PyLong_FromLongLong(latency_ns), PyLong_FromLongLong(rows),
                            PyLong_FromLongLong(nbytes)};
    int done = numbers[0] && numbers[1] && numbers[2] && numbers[3] && PyList_Append(ids, request_id) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 1), numbers[0]) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 2), route) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 3), failure) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 4), numbers[1]) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 5), numbers[2]) == 0 &&
               PyList_Append(PyTuple_GET_ITEM(lists, 6), numbers[3]) == 0;
    for (int i = 0; i < 4; i++) Py_XDECREF(numbers[i]);
    *queued = PyList_GET_SIZE(ids);
    return done ? 0 : -1;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *log;
    PyObject *waiting; /* log._waiting: the queue of each version */
    PyObject *acquire, *release; /* log._lock's */
    PyObject *hand_over, *wake_writer, *count_dropped; /* log's */
} HandOverObject;

/* ``PredictionLog.offer``'s body, the lock held: the code (the top of this file says what it
 * means); on a failure ``*error`` is set, with a Python exception. */
static long long offer_locked(HandOverObject *self, PyObject *stream, PyObject *key, PyObject *request_id,
                              long long time_ns, PyObject *route, PyObject *failure, long long latency_ns,
                              long long rows, long long nbytes, PyObject *inputs, PyObject *outputs, int *error) {
    PyObject *waiting = PyDict_GetItemWithError(self->waiting, key); /* borrowed */
    if (waiting == NULL) {
        *error = PyErr_Occurred() != NULL;
        return SLOW;
    }
    Py_INCREF(waiting); /* (the dict could drop it while Python code runs) */
    long long code = SLOW;
    PyObject *constants = PyObject_GetAttr(waiting, s_constants);
    PyObject *pending = NULL, *lists = NULL;
    if (constants == NULL) goto failed;
    if (!PyTuple_Check(constants) || PyTuple_GET_SIZE(constants) != 6) {
        PyErr_SetString(PyExc_TypeError, "_Waiting.constants is not what the compiled hand-over knows");
        goto failed;
    }
    if (PyTuple_GET_ITEM(constants, 0) != stream) goto done; /* new settings: a new queue */
    long long w_rows, w_nbytes;
    int stopping = attr_true(self->log, s_stopping);
    if (stopping < 0 || attr_ll(waiting, s_rows, &w_rows) < 0 || attr_ll(waiting, s_nbytes, &w_nbytes) < 0)
        goto failed;
    long long max_rows = PyLong_AsLongLong(PyTuple_GET_ITEM(constants, 1));
    double max_bytes = PyFloat_AsDouble(PyTuple_GET_ITEM(constants, 2));
    long long flush_rows = PyLong_AsLongLong(PyTuple_GET_ITEM(constants, 3));
    double flush_bytes = PyFloat_AsDouble(PyTuple_GET_ITEM(constants, 4));
    if (PyErr_Occurred()) goto failed;
    long long new_rows = w_rows + rows, new_nbytes = w_nbytes + nbytes;
    if (stopping || new_rows > max_rows || (double)new_nbytes > max_bytes) {
        code = -1 - rows;
        goto done;
    }
    int was_full = w_rows >= flush_rows || (double)w_nbytes >= flush_bytes;
    Py_ssize_t queued;
    pending = PyObject_GetAttr(waiting, s_pending);
    lists = pending ? PyObject_GetAttr(pending, s_lists) : NULL;
    if (lists == NULL ||
        keep(lists, PyTuple_GET_ITEM(constants, 5), request_id, time_ns, route, failure, latency_ns, rows, nbytes,
             inputs, outputs, &queued) < 0 ||
        set_ll(waiting, s_rows, new_rows) < 0 || set_ll(waiting, s_nbytes, new_nbytes) < 0)
        goto failed;
    code = QUEUED;
    if (queued == 1) { /* the first: its flush_s starts now */
        PyObject *since = PyFloat_FromDouble((double)clock_ns(CLOCK_MONOTONIC) / 1e9);
        if (since == NULL) goto failed;
        int set = PyObject_SetAttr(waiting, s_since, since);
        Py_DECREF(since);
        if (set < 0) goto failed;
        code = WAKE;
    } else if (!was_full && (new_rows >= flush_rows || (double)new_nbytes >= flush_bytes)) {
        code = WAKE; /* once, as it fills, not per row */
    }
    goto done;
failed:
    *error = 1;
done:
    Py_XDECREF(lists);
    Py_XDECREF(pending);
    Py_XDECREF(constants);
    Py_DECREF(waiting);
    return code;
}

static PyObject *HandOver_call(HandOverObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((nargs != 6 && nargs != 7) || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError,
                        "HandOver(stream, request_id, route, start_ns, inputs, outputs[, failure]): positional");
        return NULL;
    }
    PyObject *stream = args[0], *request_id = args[1], *route = args[2], *inputs = args[4], *outputs = args[5];
    PyObject *failure = nargs == 7 ? args[6] : Py_None;
    long long start_ns = PyLong_AsLongLong(args[3]);
    if (start_ns == -1 && PyErr_Occurred()) return NULL;
    if ((inputs != Py_None && !PyDict_Check(inputs)) || (outputs != Py_None && !PyDict_Check(outputs))) {
        PyErr_SetString(PyExc_TypeError, "inputs and outputs are dicts or None");
        return NULL;
    }
    PyObject *facts = PyObject_GetAttr(stream, s_offer_facts);
    if (facts == NULL) return NULL;
    if (!PyTuple_Check(facts) || PyTuple_GET_SIZE(facts) != 6) {
        Py_DECREF(facts);
        PyErr_SetString(PyExc_TypeError, "LogStream.offer_facts is not what the compiled hand-over knows");
        return NULL;
    }
    PyObject *result = NULL;
    /* PredictionLog.hand_over: the sample */
    double rate = PyFloat_AsDouble(PyTuple_GET_ITEM(facts, 0));
    if (rate == -1.0 && PyErr_Occurred()) goto out;
    if (rate < 1.0) {
        PyObject *in = PyObject_CallFunctionObjArgs(sampled, request_id, PyTuple_GET_ITEM(facts, 0), NULL);
        int truth = in ? PyObject_IsTrue(in) : -1;
        Py_XDECREF(in);
        if (truth < 0) goto out;
        if (!truth) {
            result = Py_NewRef(Py_None);
            goto out;
        }
    }
    /* PredictionLog.hand_over: the request's record */
    long long rows = 1;
    if (PyTuple_GET_ITEM(facts, 1) == Py_True) {
        PyObject *first = truthy_dict(inputs) ? inputs : truthy_dict(outputs) ? outputs : NULL;
        if (first != NULL && rows_of(first, &rows) < 0) goto out;
    }
    if (PyTuple_GET_ITEM(facts, 2) != Py_True) inputs = Py_None;
    if (PyTuple_GET_ITEM(facts, 3) != Py_True) outputs = Py_None;
    long long nbytes;
    PyObject *row_nbytes = PyTuple_GET_ITEM(facts, 4);
    if (row_nbytes != Py_None) {
        nbytes = rows * PyLong_AsLongLong(row_nbytes);
        if (PyErr_Occurred()) goto out;
    } else if (nbytes_of_both(inputs, outputs, &nbytes) < 0) {
        goto out;
    }
    long long now = clock_ns(CLOCK_MONOTONIC);
    long long time_ns = clock_ns(CLOCK_REALTIME);
    /* PredictionLog.offer */
    PyObject *took = PyObject_CallNoArgs(self->acquire);
    if (took == NULL) goto out;
    Py_DECREF(took);
    int error = 0;
    long long code = offer_locked(self, stream, PyTuple_GET_ITEM(facts, 5), request_id, time_ns, route, failure,
                                  now - start_ns, rows, nbytes, inputs, outputs, &error);
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb); /* the lock is released whatever happened */
    PyObject *released = PyObject_CallNoArgs(self->release);
    if (released == NULL) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc_value);
        Py_XDECREF(exc_tb);
        goto out;
    }
    Py_DECREF(released);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    if (error) goto out;
    if (code == QUEUED) {
        result = Py_NewRef(Py_None);
    } else if (code == WAKE) {
        result = PyObject_CallNoArgs(self->wake_writer);
    } else if (code == SLOW) {
        result = PyObject_Vectorcall(self->hand_over, args, nargs, NULL);
    } else {
        PyObject *dropped = PyLong_FromLongLong(-1 - code);
        result = dropped ? PyObject_CallFunctionObjArgs(self->count_dropped, stream, dropped, NULL) : NULL;
        Py_XDECREF(dropped);
    }
out:
    Py_DECREF(facts);
    return result;
}

static int HandOver_init(HandOverObject *self, PyObject *args, PyObject *kwds) {
    PyObject *log;
    if (!PyArg_ParseTuple(args, "O", &log)) return -1;
    if (nbytes_of == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_hand_over.configure() was not called");
        return -1;
    }
    PyObject *lock = PyObject_GetAttr(log, s_lock);
    if (lock == NULL) return -1;
    Py_XSETREF(self->acquire, PyObject_GetAttr(lock, s_acquire));
    Py_XSETREF(self->release, PyObject_GetAttr(lock, s_release));
    Py_DECREF(lock);
    Py_XSETREF(self->waiting, PyObject_GetAttr(log, s_waiting));
    Py_XSETREF(self->hand_over, PyObject_GetAttr(log, s_hand_over));
    Py_XSETREF(self->wake_writer, PyObject_GetAttr(log, s_wake_writer));
    Py_XSETREF(self->count_dropped, PyObject_GetAttr(log, s_count_dropped));
    Py_XSETREF(self->log, Py_NewRef(log));
    if (!self->acquire || !self->release || !self->waiting || !self->hand_over || !self->wake_writer ||
        !self->count_dropped)
        return -1;
    if (!PyDict_Check(self->waiting)) {
        PyErr_SetString(PyExc_TypeError, "log._waiting is a dict");
        return -1;
    }
    self->vectorcall = (vectorcallfunc)HandOver_call;
    return 0;
}

static void HandOver_dealloc(HandOverObject *self) {
    Py_XDECREF(self->log);
    Py_XDECREF(self->waiting);
    Py_XDECREF(self->acquire);
    Py_XDECREF(self->release);
    Py_XDECREF(self->hand_over);
    Py_XDECREF(self->wake_writer);
    Py_XDECREF(self->count_dropped);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject HandOverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "serving.prediction_log._hand_over.HandOver",
    .tp_basicsize = sizeof(HandOverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "HandOver(log): called as PredictionLog.hand_over is (positional arguments), compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HandOver_init,
    .tp_dealloc = (destructor)HandOver_dealloc,
    .tp_vectorcall_offset = offsetof(HandOverObject, vectorcall),
    .tp_call = PyVectorcall_Call,
};

static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "configure(nbytes_of, sampled, array, empty)");
        return NULL;
    }
    Py_XSETREF(nbytes_of, Py_NewRef(args[0]));
    Py_XSETREF(sampled, Py_NewRef(args[1]));
    Py_XSETREF(copy_array, Py_NewRef(args[2]));
    Py_XSETREF(empty_array, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(nbytes_of, sampled, array, empty): the Python it calls (records.nbytes_of, records.sampled, "
     "numpy.array, numpy.empty)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_hand_over",
                                        "The prediction log's hand-over, compiled (see _hand_over.c).", -1, methods,
                                        NULL, NULL, NULL, NULL};

#define INTERN(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return NULL;

PyMODINIT_FUNC PyInit__hand_over(void) {
    INTERN(s_offer_facts, "offer_facts")
    INTERN(s_constants, "constants")
    INTERN(s_pending, "pending")
    INTERN(s_lists, "lists")
    INTERN(s_rows, "rows")
    INTERN(s_nbytes, "nbytes")
    INTERN(s_since, "since")
    INTERN(s_stopping, "_stopping")
    INTERN(s_waiting, "_waiting")
    INTERN(s_lock, "_lock")
    INTERN(s_acquire, "acquire")
    INTERN(s_release, "release")
    INTERN(s_hand_over, "hand_over")
    INTERN(s_wake_writer, "wake_writer")
    INTERN(s_count_dropped, "count_dropped")
    INTERN(s_shape, "shape")
    INTERN(s_ndim, "ndim")
    INTERN(s_copy, "copy")
    INTERN(s_dtype, "dtype")
    INTERN(s_itemsize, "itemsize")
    if (PyType_Ready(&RowBlocksType) < 0 || PyType_Ready(&HandOverType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "BLOCK_BYTES", BLOCK_BYTES) < 0 ||
        PyModule_AddObjectRef(m, "RowBlocks", (PyObject *)&RowBlocksType) < 0 ||
        PyModule_AddObjectRef(m, "HandOver", (PyObject *)&HandOverType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
