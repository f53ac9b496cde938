/* servemesh.runtime._relay: the per-item step of an in-process call, in C.
 *
 * An in-process call hands the caller an async iterator over the handler's items
 * (serving.Call.items). In Python that iterator is an async generator wrapped
 * around the handler's: every item then pays for a second generator frame, a
 * second asend object and a second StopIteration, about as much as the handler's
 * own step. A Relay does the same job without a frame: each read forwards to
 * the handler's read, passes through whatever the handler awaits (so the caller's
 * task waits on it, and cancellation reaches the handler), and on an item
 * converts it for the caller's mode:
 *
 *   RAW        the item as the handler yielded it
 *   DATA       an Annotated item's data, any other item as it is
 *   ANNOTATED  an Annotated item as it is, any other item wrapped in Annotated
 *
 * Everything that is not per item stays in Python, on the call (``owner``):
 *
 *   owner._relay_started()     at the first read of an interruptible call
 *   owner._relay_end(exc)      the handler ended (exc None) or raised exc (an item
 *                              that could not be converted counts as raised):
 *                              returns None (the stream is over) or an awaitable
 *                              the read finishes with (its exception is what the
 *                              caller sees); may raise, which the caller then sees
 *   owner._relay_aclose()      aclose(): an awaitable that closes the handler
 *   owner._relay_dropped(started)  the relay is garbage before its end (``started``:
 *                              whether it was read)
 *
 * The relay is its own awaitable: __anext__ and __await__ return it, and one read
 * is in flight at a time (as with an async generator). It implements am_send, so
 * an ``await`` in the caller takes an item without a StopIteration being made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { RAW = 0, DATA = 1, ANNOTATED = 2 };
enum { FRESH, RUNNING, FINISHING, DONE };

typedef struct {
    PyObject_HEAD
    PyObject *owner;     /* the serving call */
    PyObject *inner;     /* the handler's async iterator */
    PyObject *current;   /* the iterator of the handler's read in flight, or NULL */
    PyObject *tail;      /* FINISHING: the iterator of what the stream finishes with */
    PyObject *annotated; /* the Annotated class */
    int mode;
    int state;
    int interruptible;
    int running;         /* a call into the relay is under way (re-entering it is refused) */
} Relay;

static PyObject *str_data, *str_started, *str_end, *str_aclose, *str_dropped, *str_throw, *str_close;

/* The iterator to send into for awaitable ``aw`` (a new reference). */
static PyObject *
await_iter(PyObject *aw)
{
    if (PyCoro_CheckExact(aw)) {
        Py_INCREF(aw);
        return aw;
    }
    PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(aw)->tp_name);
        return NULL;
    }
    PyObject *it = am->am_await(aw);
    if (it != NULL && !PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

static void
relay_release(Relay *r)
{
    r->state = DONE;
    Py_CLEAR(r->current);
    Py_CLEAR(r->tail);
    Py_CLEAR(r->inner);
}

/* Raise StopIteration(value) the way a generator returning ``value`` does. */
static void
set_stop_iteration(PyObject *value)
{
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

/* The value of a StopIteration being raised now (cleared; a new reference), or
 * NULL with the exception left in place when it is something else. */
static PyObject *
fetch_stop_iteration(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *result = NULL;
    if (value != NULL && PyObject_TypeCheck(value, (PyTypeObject *)PyExc_StopIteration)) {
        result = ((PyStopIterationObject *)value)->value;
        Py_XINCREF(result);
    }
    else if (value != NULL && !PyTuple_Check(value)) {
        result = value;
        Py_INCREF(result);
    }
    else if (value != NULL && PyTuple_GET_SIZE(value) > 0) {
        result = PyTuple_GET_ITEM(value, 0);
        Py_INCREF(result);
    }
    if (result == NULL) {
        result = Py_None;
        Py_INCREF(result);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return result;
}

/* ``item`` as the caller's mode wants it (steals ``item``; NULL on error). */
static PyObject *
convert(Relay *r, PyObject *item)
{
    if (r->mode == DATA) {
        if ((PyObject *)Py_TYPE(item) == r->annotated) {
            PyObject *data = PyObject_GetAttr(item, str_data);
            Py_DECREF(item);
            return data;
        }
    }
    else if (r->mode == ANNOTATED) {
        if ((PyObject *)Py_TYPE(item) != r->annotated) {
            PyObject *wrapped = PyObject_CallOneArg(r->annotated, item);
            Py_DECREF(item);
            return wrapped;
        }
    }
    return item;
}

static PySendResult
send_tail(Relay *r, PyObject *arg, PyObject **result)
{
    PyObject *tail = r->tail;
    Py_INCREF(tail);
    PySendResult s = PyIter_Send(tail, arg, result);
    Py_DECREF(tail);
    if (s == PYGEN_NEXT)
        return s;
    relay_release(r);
    if (s == PYGEN_RETURN) {
        Py_CLEAR(*result);
        PyErr_SetNone(PyExc_StopAsyncIteration);
    }
    return PYGEN_ERROR;
}

/* The handler's read failed (the exception is set): end the stream the way the
 * owner says. */
static PySendResult
ended(Relay *r, PyObject **result)
{
    *result = NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *arg = Py_None;
    if (type != NULL && PyErr_GivenExceptionMatches(type, PyExc_StopAsyncIteration)) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        Py_INCREF(arg);
    }
    else {
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        arg = value != NULL ? value : Py_None;
        if (value == NULL)
            Py_INCREF(arg);
    }
    Py_CLEAR(r->current);
    PyObject *tail = PyObject_CallMethodOneArg(r->owner, str_end, arg);
    Py_DECREF(arg);
    if (tail == NULL) {
        relay_release(r);
        return PYGEN_ERROR;
    }
    if (tail == Py_None) {
        Py_DECREF(tail);
        relay_release(r);
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return PYGEN_ERROR;
    }
    r->tail = await_iter(tail);
    Py_DECREF(tail);
    if (r->tail == NULL) {
        relay_release(r);
        return PYGEN_ERROR;
    }
    r->state = FINISHING;
    return send_tail(r, Py_None, result);
}

/* The first step of the stream: an interruptible call learns its task. */
static int
begin(Relay *r)
{
    r->state = RUNNING;
    if (r->interruptible) {
        PyObject *x = PyObject_CallMethodNoArgs(r->owner, str_started);
        if (x == NULL)
            return -1;
        Py_DECREF(x);
    }
    return 0;
}

static int
already_running(Relay *r)
{
    if (!r->running)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "the stream is already being read");
    return 1;
}

static PySendResult
relay_step(Relay *r, PyObject *arg, PyObject **result)
{
    switch (r->state) {
    case DONE:
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return PYGEN_ERROR;
    case FINISHING:
        return send_tail(r, arg, result);
    case FRESH:
        if (begin(r) < 0)
            return ended(r, result);
        break;
    }
    if (r->current == NULL) {
        PyAsyncMethods *am = Py_TYPE(r->inner)->tp_as_async;
        if (am == NULL || am->am_anext == NULL) {
            PyErr_Format(PyExc_TypeError, "handler returned %.100s, not an async iterator",
                         Py_TYPE(r->inner)->tp_name);
            return ended(r, result);
        }
        PyObject *aw = am->am_anext(r->inner);
        if (aw == NULL)
            return ended(r, result);
        r->current = await_iter(aw);
        Py_DECREF(aw);
        if (r->current == NULL)
            return ended(r, result);
    }
    PyObject *current = r->current;
    Py_INCREF(current);
    PySendResult s = PyIter_Send(current, arg, result);
    Py_DECREF(current);
    if (s == PYGEN_NEXT)
        return s;
    Py_CLEAR(r->current);
    if (s == PYGEN_RETURN) {
        *result = convert(r, *result);
        if (*result != NULL)
            return PYGEN_RETURN;
    }
    return ended(r, result);
}

static PySendResult
relay_send(Relay *r, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (already_running(r))
        return PYGEN_ERROR;
    r->running = 1;
    PySendResult s = relay_step(r, arg, result);
    r->running = 0;
    return s;
}

/* A send result as ``__next__`` / ``send`` / ``throw`` return it. */
static PyObject *
as_next(PySendResult s, PyObject *result)
{
    if (s == PYGEN_RETURN) {
        set_stop_iteration(result);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

/* ``ended`` as ``__next__`` returns it. */
static PyObject *
ended_next(Relay *r)
{
    PyObject *result;
    PySendResult s = ended(r, &result);
    return as_next(s, result);
}

static PySendResult
relay_am_send(PyObject *self, PyObject *arg, PyObject **result)
{
    return relay_send((Relay *)self, arg, result);
}

static PyObject *
relay_iternext(PyObject *self)
{
    PyObject *result;
    PySendResult s = relay_send((Relay *)self, Py_None, &result);
    return as_next(s, result);
}

static PyObject *
relay_send_method(PyObject *self, PyObject *arg)
{
    PyObject *result;
    PySendResult s = relay_send((Relay *)self, arg, &result);
    return as_next(s, result);
}

/* Raise what throw(typ[, val[, tb]]) was given, here. */
static void
raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return;
        }
        if (tb != Py_None)
            PyException_SetTraceback(typ, tb);
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val == Py_None ? NULL : val);
    }
    else {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
    }
}

static PyObject *
relay_throw_step(Relay *r, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (r->state == DONE) {
        raise_thrown(args, nargs);
        return NULL;
    }
    if (r->state == FRESH && begin(r) < 0)
        return ended_next(r);
    PyObject *target = r->state == FINISHING ? r->tail : r->current;
    if (target == NULL) {  /* between reads: it is raised where the stream stands */
        raise_thrown(args, nargs);
        return ended_next(r);
    }
    Py_INCREF(target);
    PyObject *meth = PyObject_GetAttr(target, str_throw);
    if (meth == NULL) {
        result = NULL;
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {  /* raised at the await, as CPython does */
            PyErr_Clear();
            raise_thrown(args, nargs);
        }
    }
    else {
        result = PyObject_Vectorcall(meth, args, nargs, NULL);
        Py_DECREF(meth);
    }
    Py_DECREF(target);
    if (result != NULL)
        return result;  /* the read goes on, awaiting something else */
    PyObject *value = fetch_stop_iteration();
    if (r->state == FINISHING) {
        relay_release(r);
        if (value != NULL) {
            Py_DECREF(value);
            PyErr_SetNone(PyExc_StopAsyncIteration);
        }
        return NULL;
    }
    Py_CLEAR(r->current);
    if (value != NULL) {  /* the handler caught it and yielded an item */
        value = convert(r, value);
        if (value != NULL)
            return as_next(PYGEN_RETURN, value);
    }
    return ended_next(r);
}

static PyObject *
relay_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Relay *r = (Relay *)self;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    if (already_running(r))
        return NULL;
    r->running = 1;
    PyObject *result = relay_throw_step(r, args, nargs);
    r->running = 0;
    return result;
}

static PyObject *
relay_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* the task awaiting a read is closed: the read is abandoned (aclose() or the
     * garbage collector ends the stream) */
    Relay *r = (Relay *)self;
    if (already_running(r))
        return NULL;
    PyObject *target = r->state == FINISHING ? r->tail : r->current;
    if (target == NULL)
        Py_RETURN_NONE;
    Py_INCREF(target);
    Py_CLEAR(r->current);
    if (r->state == FINISHING) {  /* what it finished with is abandoned too */
        Py_CLEAR(r->tail);
        r->state = RUNNING;
    }
    r->running = 1;
    PyObject *meth = PyObject_GetAttr(target, str_close);
    PyObject *res = NULL;
    if (meth == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {  /* nothing to close */
            PyErr_Clear();
            res = Py_None;
            Py_INCREF(res);
        }
    }
    else {
        res = PyObject_CallNoArgs(meth);
        Py_DECREF(meth);
    }
    r->running = 0;
    Py_DECREF(target);
    if (res == NULL)
        return NULL;
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyObject *
relay_aclose(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Relay *r = (Relay *)self;
    if (r->running || r->current != NULL || r->tail != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "aclose(): the stream is being read");
        return NULL;
    }
    relay_release(r);
    return PyObject_CallMethodNoArgs(r->owner, str_aclose);
}

static PyObject *
relay_self(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PyObject *
relay_anext(PyObject *self)
{
    /* one read at a time, as with an async generator */
    Relay *r = (Relay *)self;
    if (r->running || r->current != NULL || r->state == FINISHING) {
        PyErr_SetString(PyExc_RuntimeError, "anext(): the stream is already being read");
        return NULL;
    }
    Py_INCREF(self);
    return self;
}

static PyObject *
relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *owner, *inner, *annotated;
    int mode, interruptible;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Relay() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOiOp:Relay", &owner, &inner, &mode, &annotated, &interruptible))
        return NULL;
    if (mode < RAW || mode > ANNOTATED) {
        PyErr_Format(PyExc_ValueError, "mode must be 0, 1 or 2, not %d", mode);
        return NULL;
    }
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    Py_INCREF(owner);
    r->owner = owner;
    Py_INCREF(inner);
    r->inner = inner;
    Py_INCREF(annotated);
    r->annotated = annotated;
    r->mode = mode;
    r->interruptible = interruptible;
    r->state = FRESH;
    return (PyObject *)r;
}

static void
relay_finalize(PyObject *self)
{
    Relay *r = (Relay *)self;
    if (r->state == DONE || r->owner == NULL)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *started = r->state == FRESH ? Py_False : Py_True;
    relay_release(r);
    PyObject *res = PyObject_CallMethodOneArg(r->owner, str_dropped, started);
    if (res == NULL)
        PyErr_WriteUnraisable(self);
    else
        Py_DECREF(res);
    PyErr_Restore(type, value, tb);
}

static int
relay_traverse(Relay *r, visitproc visit, void *arg)
{
    Py_VISIT(r->owner);
    Py_VISIT(r->inner);
    Py_VISIT(r->current);
    Py_VISIT(r->tail);
    Py_VISIT(r->annotated);
    return 0;
}

static int
relay_clear(Relay *r)
{
    Py_CLEAR(r->current);
    Py_CLEAR(r->tail);
    Py_CLEAR(r->inner);
    Py_CLEAR(r->owner);
    Py_CLEAR(r->annotated);
    return 0;
}

static void
relay_dealloc(PyObject *self)
{
    if (PyObject_CallFinalizerFromDealloc(self) < 0)
        return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    relay_clear((Relay *)self);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *
relay_get_started(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((Relay *)self)->state != FRESH);
}

static PyObject *
relay_get_finished(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((Relay *)self)->state == DONE);
}

static PyGetSetDef relay_getset[] = {
    {"started", relay_get_started, NULL, "Whether a read was made.", NULL},
    {"finished", relay_get_finished, NULL, "Whether the stream is over (ended, failed or closed).", NULL},
    {NULL},
};

static PyMethodDef relay_methods[] = {
    {"send", relay_send_method, METH_O, "Step the read in flight (or start one) with a value."},
    {"throw", (PyCFunction)(void (*)(void))relay_throw, METH_FASTCALL, "Raise an exception in the read in flight."},
    {"close", relay_close, METH_NOARGS, "Abandon the read in flight."},
    {"aclose", relay_aclose, METH_NOARGS, "End the stream: an awaitable that closes the handler."},
    {NULL},
};

static PyAsyncMethods relay_as_async = {
    .am_await = relay_self,
    .am_aiter = relay_self,
    .am_anext = relay_anext,
    .am_send = relay_am_send,
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "servemesh.runtime._relay.Relay",
    .tp_doc = "Relay(owner, handler_iterator, mode, annotated, interruptible): an in-process call's items.",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = relay_new,
    .tp_dealloc = relay_dealloc,
    .tp_finalize = relay_finalize,
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_as_async = &relay_as_async,
    .tp_iter = relay_self,
    .tp_iternext = relay_iternext,
    .tp_methods = relay_methods,
    .tp_getset = relay_getset,
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "servemesh.runtime._relay",
    .m_doc = "The per-item step of an in-process call, in C (see serving.Call.items).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    if (PyType_Ready(&RelayType) < 0)
        return NULL;
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(str_data, "_data");
    INTERN(str_started, "_relay_started");
    INTERN(str_end, "_relay_end");
    INTERN(str_aclose, "_relay_aclose");
    INTERN(str_dropped, "_relay_dropped");
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
#undef INTERN
    PyObject *m = PyModule_Create(&relay_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "RAW", RAW) < 0 || PyModule_AddIntConstant(m, "DATA", DATA) < 0
        || PyModule_AddIntConstant(m, "ANNOTATED", ANNOTATED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
