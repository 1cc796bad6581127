# cython: language_level=3, binding=True, embedsignature=True
# cython: autotestdict=False, auto_pickle=False
# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled dispatcher: the hot path of ``_dispatch_py.py``, same names and behaviour.

Read ``_dispatch_py.py`` first: it is the specification, and this file follows it
class by class and method by method. What differs is only how:

* each plugin's queue is a C ring of object pointers, not a deque;
* the canonical header shape (what ``encode`` writes) is decoded in C; every other
  shape goes to the shared strict decoder in ``_frames.py``, which also writes all
  decode error messages;
* per-frame objects (``PluginHeader``, ``PluginMessage``) are final, free-listed and
  not tracked by the GC, so a burst of frames never triggers a collection;
* "queue full" is a status code internally; an exception is built only when one
  must be raised;
* ``dispatch_nowait``, ``try_dispatch`` and ``dispatch`` parse their usual calls in C
  (``nyx_install_sender``) and a route key is hashed without a call
  (``nyx_fast_key_bits``), where the twin remembers a key's lane (``_Route.memo``);
  keyless frames are spread inline in both.

Errors, stats records, constants, handler resolution and argument checks are shared
with the twin, so messages are identical by construction.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_Check
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_GET_ITEM, PyList_New, PyList_SET_ITEM
from cpython.long cimport (
    PyLong_AsLongLongAndOverflow,
    PyLong_AsUnsignedLongLongMask,
    PyLong_Check,
    PyLong_FromUnsignedLong,
)
from cpython.memoryview cimport PyMemoryView_Check
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.limits cimport LLONG_MAX
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

import asyncio
import collections.abc
import inspect
import sys
import threading
import time
from collections import deque

from nyxplug._batch import MAX_MESSAGE_LIMIT, BatchResult, bad_length, frame_list
from nyxplug._breaker import REFUSAL_REASONS, CircuitBreaker
from nyxplug._constants import (
    DEFAULT_CAPACITY,
    DEFAULT_FRAME_PERMISSIONS,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_PAYLOAD_SIZE,
    MAX_BATCH_SEQ,
    PLUGIN_FRAME_MAX,
    PLUGIN_FRAME_MIN,
    DispatchStatus,
    FrameType,
    Permission,
    mirror_mismatches,
)
from nyxplug._errors import (
    AlreadyLoaded,
    AlreadyRegistered,
    BreakerNotSet,
    CircuitOpen,
    FrameTooLarge,
    HeaderDecodeError,
    NotRegistered,
    PermissionDenied,
    PluginClosed,
    PluginNotLoaded,
    PluginNotRegistered,
    SandboxViolation,
    UnknownFrameType,
    VersionError,
    WouldBlock,
    WrongThread,
)
from nyxplug._frames import decode_frame_fields, decode_header_fields
from nyxplug._handlers import log_handler_error, report_overrun, resolve_handler
from nyxplug._info import PluginInfo, permission_mask
from nyxplug._refused import Refused
from nyxplug._routing import (
    BASE_VERSION,
    MAX_VERSIONS,
    MatchRule,
    RouteInfo,
    check_key,
    check_version,
    route_salt,
    weight_threshold,
)
from nyxplug._replies import (
    abandon,
    await_reply,
    check_timeout,
    fail,
    fail_batch,
    settle,
    settle_batch,
)
from nyxplug._stats import DispatchStats, PluginStats
from nyxplug._validate import (
    BatchErrors,
    as_byte_view,
    as_bytes,
    check_list,
    check_overrun,
    check_policy,
    check_uint,
    enter_guard,
    frame_type_object,
    make_guard,
)

__all__ = (
    "Dispatcher", "PluginFrame", "PluginHeader", "PluginMessage", "PluginRegistry", "decode_batch",
    "encode_batch", "route_point",
)

cdef extern from "Python.h":
    long PyLong_AsLongAndOverflow(object, int*) except? -1

# The calling thread's id, as threading.get_ident() gives it: on POSIX CPython that is
# (unsigned long)pthread_self(), so call that directly (one call, not two as through
# PyThread_get_thread_ident); elsewhere ask CPython.
cdef extern from *:
    """
    #if defined(HAVE_PTHREAD_H) && !defined(_WIN32)
    #include <pthread.h>
    static inline unsigned long nyx_thread_id(void) { return (unsigned long)pthread_self(); }
    #else
    #include "pythread.h"
    static inline unsigned long nyx_thread_id(void) { return PyThread_get_thread_ident(); }
    #endif
    """
    unsigned long nyx_thread_id() nogil

# A monotonic clock in seconds for timing a synchronous handler call: clock_gettime
# (a vDSO call on Linux, about 25 ns) where there is one, else CPython's own.
cdef extern from *:
    """
    #include <time.h>
    #if defined(CLOCK_MONOTONIC) && !defined(_WIN32)
    static inline double nyx_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #elif PY_VERSION_HEX >= 0x030D0000
    static inline double nyx_monotonic(void) {
        PyTime_t t;
        (void)PyTime_MonotonicRaw(&t);
        return PyTime_AsSecondsDouble(t);
    }
    #else
    static inline double nyx_monotonic(void) {
        return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
    }
    #endif
    """
    double nyx_monotonic() nogil

# A route key's 64 bits (see ``_routing``) without a call for the common keys: an exact
# int that fits one machine word (its value mod 2**64), an exact bytes object, or an
# exact str of ASCII characters (its UTF-8 is its data). 0: take the general path.
cdef extern from *:
    """
    static inline uint64_t nyx_fnv1a64(const unsigned char* p, Py_ssize_t n) {
        uint64_t h = 0xCBF29CE484222325ULL;
        for (Py_ssize_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ULL;
        return h;
    }
    static inline int nyx_fast_key_bits(PyObject* key, uint64_t* out) {
        if (PyLong_CheckExact(key)) {
    #if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_LIMITED_API)
            if (PyUnstable_Long_IsCompact((PyLongObject*)key)) {
                *out = (uint64_t)(int64_t)PyUnstable_Long_CompactValue((PyLongObject*)key);
                return 1;
            }
    #elif !defined(Py_LIMITED_API)
            Py_ssize_t size = Py_SIZE(key);
            if (size == 1) { *out = (uint64_t)((PyLongObject*)key)->ob_digit[0]; return 1; }
            if (size == 0) { *out = 0; return 1; }
            if (size == -1) { *out = (uint64_t)0 - (uint64_t)((PyLongObject*)key)->ob_digit[0]; return 1; }
    #endif
            return 0;
        }
        if (PyBytes_CheckExact(key)) {
            *out = nyx_fnv1a64((const unsigned char*)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key));
            return 1;
        }
    #if !defined(Py_LIMITED_API)
        if (PyUnicode_CheckExact(key) && PyUnicode_IS_COMPACT_ASCII(key)) {
            *out = nyx_fnv1a64((const unsigned char*)PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key));
            return 1;
        }
    #endif
        return 0;
    }
    """
    uint64_t nyx_fnv1a64(const unsigned char* p, Py_ssize_t n) noexcept
    bint nyx_fast_key_bits(object key, uint64_t* out) noexcept

# A faster argument parser for the three sending methods, whose signature is
# ``(frame_type, header, payload=b"", *, key=None)``: Cython's own parser takes a
# reference to each argument and scans the keyword names in a loop (about 40 machine
# instructions for a call with ``key=``, roughly 4 ns). The usual calls - two or three
# positional arguments, and perhaps ``key=`` - go straight to the method's body here,
# with borrowed references; any other call goes to Cython's parser, so every error is
# the same. ``nyx_install_sender`` puts it in place of the method's C function once, at
# import (it leaves Cython's in place if the method is not the kind it expects).
cdef extern from *:
    """
    typedef PyObject* (*nyx_send_body)(PyObject*, PyObject*, PyObject*, PyObject*, PyObject*);
    typedef PyObject* (*nyx_fastcall)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*);
    typedef struct { nyx_send_body body; nyx_fastcall parser; } nyx_sender;
    static PyObject* nyx_key_name = NULL;  /* "key", interned as the caller's names are */
    static PyObject* nyx_no_payload = NULL;  /* b"" */
    static nyx_sender nyx_senders[3];

    static inline PyObject* nyx_send_call(nyx_sender* m, PyObject* self, PyObject* const* args,
                                          Py_ssize_t nargs, PyObject* kwnames) {
        PyObject* key = Py_None;
        if (kwnames != NULL) {
            if (PyTuple_GET_SIZE(kwnames) != 1 || PyTuple_GET_ITEM(kwnames, 0) != nyx_key_name)
                return m->parser(self, args, nargs, kwnames);
            key = args[nargs];
        }
        if (nargs == 2) return m->body(self, args[0], args[1], nyx_no_payload, key);
        if (nargs == 3) return m->body(self, args[0], args[1], args[2], key);
        return m->parser(self, args, nargs, kwnames);
    }
    static PyObject* nyx_send0(PyObject* s, PyObject* const* a, Py_ssize_t n, PyObject* k) {
        return nyx_send_call(&nyx_senders[0], s, a, n, k);
    }
    static PyObject* nyx_send1(PyObject* s, PyObject* const* a, Py_ssize_t n, PyObject* k) {
        return nyx_send_call(&nyx_senders[1], s, a, n, k);
    }
    static PyObject* nyx_send2(PyObject* s, PyObject* const* a, Py_ssize_t n, PyObject* k) {
        return nyx_send_call(&nyx_senders[2], s, a, n, k);
    }

    /* 1 when the parser of sender ``slot`` (0..2) replaced the method's C function. */
    static int nyx_install_sender(PyObject* descr, int slot, nyx_send_body body,
                                  PyObject* key_name, PyObject* no_payload) {
    #if defined(Py_LIMITED_API) || !defined(METH_FASTCALL)
        return 0;
    #else
        static const nyx_fastcall fast[3] = {nyx_send0, nyx_send1, nyx_send2};
        if (slot < 0 || slot > 2 || !PyObject_TypeCheck(descr, &PyMethodDescr_Type)) return 0;
        PyMethodDef* def = ((PyMethodDescrObject*)descr)->d_method;
        if (def->ml_flags != (METH_FASTCALL | METH_KEYWORDS)) return 0;
        if (def->ml_meth == (PyCFunction)(void(*)(void))fast[slot]) return 1;  /* again */
        if (nyx_key_name == NULL) {
            Py_INCREF(key_name); nyx_key_name = key_name;
            Py_INCREF(no_payload); nyx_no_payload = no_payload;
        }
        nyx_senders[slot].body = body;
        nyx_senders[slot].parser = (nyx_fastcall)(void(*)(void))def->ml_meth;
        def->ml_meth = (PyCFunction)(void(*)(void))fast[slot];
        return 1;
    #endif
    }
    """
    ctypedef object (*nyx_send_body)(object, object, object, object, object)
    bint nyx_install_sender(object descr, int slot, nyx_send_body body, object key_name,
                            object no_payload) except -1

# C mirrors of values in _constants.py, for the hot path; _C_MIRRORS below shows them
# to Python under the names they mirror.
cdef enum:
    S_OK = 0
    S_WOULD_BLOCK = 1
    S_PLUGIN_CLOSED = 2
    S_NOT_REGISTERED = 3
    S_NOT_LOADED = 4
    S_PERMISSION_DENIED = 5
    S_SANDBOX_VIOLATION = 6
    S_HEADER_DECODE_ERROR = 7
    S_FRAME_TOO_LARGE = 8
    S_UNKNOWN_FRAME_TYPE = 9
    S_CIRCUIT_OPEN = 10

cdef enum:
    FLAG_REQUIRED = 0x01
    MAX_FLAGS = 255
    CONTROL_CODE = 0x53

cdef uint64_t MAX_PLUGIN_ID = 0xFFFFFFFF

_C_MIRRORS = {
    "FLAG_REQUIRED": FLAG_REQUIRED,
    "MAX_FLAGS": MAX_FLAGS,
    "MAX_PLUGIN_ID": MAX_PLUGIN_ID,
    "FrameType.CONTROL": CONTROL_CODE,
    "DispatchStatus.OK": S_OK,
    "DispatchStatus.WOULD_BLOCK": S_WOULD_BLOCK,
    "DispatchStatus.PLUGIN_CLOSED": S_PLUGIN_CLOSED,
    "DispatchStatus.PLUGIN_NOT_REGISTERED": S_NOT_REGISTERED,
    "DispatchStatus.PLUGIN_NOT_LOADED": S_NOT_LOADED,
    "DispatchStatus.PERMISSION_DENIED": S_PERMISSION_DENIED,
    "DispatchStatus.SANDBOX_VIOLATION": S_SANDBOX_VIOLATION,
    "DispatchStatus.HEADER_DECODE_ERROR": S_HEADER_DECODE_ERROR,
    "DispatchStatus.FRAME_TOO_LARGE": S_FRAME_TOO_LARGE,
    "DispatchStatus.UNKNOWN_FRAME_TYPE": S_UNKNOWN_FRAME_TYPE,
    "DispatchStatus.CIRCUIT_OPEN": S_CIRCUIT_OPEN,
}
_out_of_step = mirror_mismatches(_C_MIRRORS)
if _out_of_step:  # not an assert: python -O would strip it
    raise ImportError(
        "nyxplug._dispatch was built against other constants than nyxplug._constants ("
        + "; ".join(_out_of_step) + ") - rebuild it with `make install`"
    )
del _out_of_step

cdef enum:
    FIRST_RING_SIZE_LIMIT = 1024  # a ring starts at most this big (not a mirror)

cdef list _STATUS = [DispatchStatus(code) for code in range(S_CIRCUIT_OPEN + 1)]


@cython.final
cdef class _Ready:
    """The already-finished awaitable ``dispatch`` returns when it did not have to wait.

    Awaiting it costs one call instead of a coroutine per frame. It is registered as
    a ``Coroutine`` so ``asyncio.create_task`` and ``asyncio.run`` accept it too.
    """

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration

    def send(self, value):
        raise StopIteration

    def throw(self, typ, val=None, tb=None):
        # The frame is already enqueued, so the dispatch has happened: like a finished
        # future, a late cancellation (a task cancelled before its first step, or
        # wait_for(..., 0)) cannot undo it. Complete normally - "returned" means
        # "enqueued exactly once" (SPEC 3), never "cancelled" after enqueuing.
        raise StopIteration

    def close(self):
        return None

    def __repr__(self):
        return "<nyxplug dispatch: enqueued>"


collections.abc.Coroutine.register(_Ready)
cdef _Ready _READY = _Ready()


# -- the canonical header codec in C ----------------------------------------------

cdef inline Py_ssize_t _head_size(uint64_t value) noexcept:
    if value < 24:
        return 1
    if value < 0x100:
        return 2
    if value < 0x10000:
        return 3
    if value < 0x100000000:
        return 5
    return 9


cdef inline Py_ssize_t _canonical_size(uint64_t id_, uint64_t flags, Py_ssize_t data_len) noexcept:
    return 4 + _head_size(id_) + 6 + _head_size(flags) + 5 + _head_size(data_len) + data_len


cdef inline Py_ssize_t _put_head(unsigned char* out, unsigned char major, uint64_t value) noexcept:
    cdef unsigned char mt = major << 5
    cdef int width, i
    if value < 24:
        out[0] = mt | <unsigned char>value
        return 1
    if value < 0x100:
        out[0] = mt | 24
        width = 1
    elif value < 0x10000:
        out[0] = mt | 25
        width = 2
    elif value < 0x100000000:
        out[0] = mt | 26
        width = 4
    else:
        out[0] = mt | 27
        width = 8
    for i in range(width):
        out[width - i] = <unsigned char>(value >> (8 * i))
    return width + 1


cdef inline Py_ssize_t _read_uint(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                  unsigned char major, uint64_t* out) noexcept:
    """Read a head of ``major`` with a 0-4 byte argument; the new position, or -1."""
    cdef unsigned char initial, info
    if pos >= end:
        return -1
    initial = p[pos]
    if (initial >> 5) != major:
        return -1
    info = initial & 0x1F
    if info < 24:
        out[0] = info
        return pos + 1
    if info == 24:
        if pos + 2 > end:
            return -1
        out[0] = p[pos + 1]
        return pos + 2
    if info == 25:
        if pos + 3 > end:
            return -1
        out[0] = (<uint64_t>p[pos + 1] << 8) | p[pos + 2]
        return pos + 3
    if info == 26:
        if pos + 5 > end:
            return -1
        out[0] = ((<uint64_t>p[pos + 1] << 24) | (<uint64_t>p[pos + 2] << 16)
                  | (<uint64_t>p[pos + 3] << 8) | p[pos + 4])
        return pos + 5
    return -1


cdef PluginHeader _decode_canonical(bytes buf):
    """Decode ``{"id", "flags", "data"}`` in that order with short heads; None otherwise."""
    return _decode_canonical_at(<const unsigned char*>PyBytes_AS_STRING(buf),
                                PyBytes_GET_SIZE(buf))


cdef PluginHeader _decode_canonical_at(const unsigned char* p, Py_ssize_t end):
    cdef Py_ssize_t pos
    cdef uint64_t id_ = 0, flags = 0, length = 0
    if end < 18 or memcmp(p, b"\xa3\x62id", 4) != 0:
        return None
    pos = _read_uint(p, 4, end, 0, &id_)
    if pos < 0 or pos + 6 > end or memcmp(p + pos, b"\x65flags", 6) != 0:
        return None
    pos = _read_uint(p, pos + 6, end, 0, &flags)
    if pos < 0 or flags > MAX_FLAGS or pos + 5 > end or memcmp(p + pos, b"\x64data", 5) != 0:
        return None
    pos = _read_uint(p, pos + 5, end, 2, &length)
    if pos < 0 or <uint64_t>(end - pos) != length:
        return None
    cdef PluginHeader header = PluginHeader.__new__(PluginHeader)
    header.id = PyLong_FromUnsignedLong(<unsigned long>id_)
    header.flags = <int>flags
    header.data = PyBytes_FromStringAndSize(<const char*>p + pos, <Py_ssize_t>length)
    header._cid = <unsigned long>id_
    header._size = _canonical_size(id_, flags, <Py_ssize_t>length)
    return header


cdef PluginHeader _decode_any(bytes buf, Py_ssize_t max_size):
    """The C fast path, then the shared strict decoder for every other shape."""
    cdef PluginHeader header = _decode_canonical(buf)
    if header is not None:
        return header
    id_, flags, data = decode_header_fields(buf, max_size)
    return _new_header(id_, flags, data)


cdef PluginHeader _new_header(object id_, int flags, bytes data):
    cdef PluginHeader header = PluginHeader.__new__(PluginHeader)
    header.id = id_
    header.flags = flags
    header.data = data
    header._cid = <unsigned long>id_
    header._size = _canonical_size(<uint64_t>id_, <uint64_t>flags, PyBytes_GET_SIZE(data))
    return header


cdef inline void _write_header(unsigned char* p, PluginHeader header) noexcept:
    """The canonical encoding of ``header`` at ``p`` (``header._size`` bytes)."""
    cdef Py_ssize_t pos
    cdef Py_ssize_t length = PyBytes_GET_SIZE(header.data)
    memcpy(p, b"\xa3\x62id", 4)
    pos = 4 + _put_head(p + 4, 0, header._cid)
    memcpy(p + pos, b"\x65flags", 6)
    pos += 6
    pos += _put_head(p + pos, 0, <uint64_t>header.flags)
    memcpy(p + pos, b"\x64data", 5)
    pos += 5
    pos += _put_head(p + pos, 2, <uint64_t>length)
    memcpy(p + pos, PyBytes_AS_STRING(header.data), length)


@cython.final
@cython.no_gc
@cython.freelist(1024)
cdef class PluginHeader:
    """The Nyx plugin header ``{"id", "flags", "data"}`` that names a frame's plugin."""

    cdef readonly object id
    cdef readonly int flags
    cdef readonly bytes data
    cdef Py_ssize_t _size
    cdef unsigned long _cid  # the id as a C value, for the runtime cache

    def __init__(self, id, flags=0, data=b""):
        self.id = check_uint("id", id, MAX_PLUGIN_ID)
        self.flags = check_uint("flags", flags, MAX_FLAGS)
        self.data = as_bytes("data", data)
        self._cid = <unsigned long>self.id
        self._size = _canonical_size(<uint64_t>self.id, <uint64_t>self.flags,
                                     PyBytes_GET_SIZE(self.data))

    @classmethod
    def required(cls, id, data=b""):
        """A header with the "required" flag (bit 0) set."""
        return cls(id, FLAG_REQUIRED, data)

    @classmethod
    def optional(cls, id, data=b""):
        """A header with no flags set."""
        return cls(id, 0, data)

    @property
    def is_required(self):
        """True when bit 0 of ``flags`` is set."""
        return bool(self.flags & FLAG_REQUIRED)

    def encode(self):
        """The canonical CBOR encoding, byte-for-byte what ``cbor2.dumps`` gives."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self._size)
        _write_header(<unsigned char*>PyBytes_AS_STRING(out), self)
        return out

    @classmethod
    def decode(cls, buf, *, max_size=DEFAULT_MAX_HEADER_SIZE):
        """Decode a header strictly (SPEC 1); ``FrameTooLarge`` before decoding if too long."""
        cdef bytes raw = <bytes>buf if type(buf) is bytes else as_bytes("buf", buf)
        cdef Py_ssize_t limit
        if type(max_size) is int and 0 <= max_size <= 2**62:
            limit = max_size
        else:  # the twin's check and message, for anything unusual
            limit = check_uint("max_size", max_size, 2**62)
        if PyBytes_GET_SIZE(raw) > limit:
            raise FrameTooLarge("header", PyBytes_GET_SIZE(raw), limit)
        return _decode_any(raw, limit)

    def __eq__(self, other):
        if not isinstance(other, PluginHeader):
            return NotImplemented
        cdef PluginHeader o = <PluginHeader>other
        return self.id == o.id and self.flags == o.flags and self.data == o.data

    def __hash__(self):
        return hash((self.id, self.flags, self.data))

    def __repr__(self):
        return f"PluginHeader(id={self.id}, flags={self.flags}, data={self.data!r})"

    def __reduce__(self):
        return (PluginHeader, (self.id, self.flags, self.data))


cdef list _TYPE_OBJECTS = [frame_type_object(code) for code in range(256)]


cdef inline object _frame_type_of(object frame_type):
    """``frame_type_object(check_uint("frame_type", frame_type, 255))``, in C for an int or
    ``FrameType`` in range (the shared check raises the twin's error for the rest)."""
    cdef int overflow = 0
    cdef long long code
    if isinstance(frame_type, int) and not isinstance(frame_type, bool):
        code = PyLong_AsLongLongAndOverflow(frame_type, &overflow)
        if overflow == 0 and 0 <= code <= 255:
            return _TYPE_OBJECTS[code]
    return frame_type_object(check_uint("frame_type", frame_type, 255))


@cython.final
@cython.no_gc
@cython.freelist(1024)
cdef class PluginMessage:
    """What a plugin's handler receives: the frame type, its header and its payload."""

    cdef readonly object frame_type
    cdef readonly PluginHeader header
    cdef readonly bytes payload
    cdef readonly Py_ssize_t size

    def __init__(self, frame_type, header, payload=b""):
        if not isinstance(header, PluginHeader):
            raise TypeError(f"Expected `header` to be a PluginHeader, got {type(header).__name__}")
        self.frame_type = _frame_type_of(frame_type)
        self.header = <PluginHeader>header
        self.payload = <bytes>payload if type(payload) is bytes else as_bytes("payload", payload)
        self.size = self.header._size + PyBytes_GET_SIZE(self.payload)

    @property
    def plugin_id(self):
        """The id of the plugin the header names."""
        return self.header.id

    @property
    def is_required(self):
        """True when the header's "required" flag is set."""
        return bool(self.header.flags & FLAG_REQUIRED)

    def __repr__(self):
        return (
            f"PluginMessage(frame_type=0x{int(self.frame_type):02x}, "
            f"header={self.header!r}, payload={self.payload!r})"
        )


# -- whole frames (SPEC 8) ------------------------------------------------------------

cdef list _FRAME_TYPES = [frame_type_object(code) for code in range(256)]


cdef PluginFrame _decode_frame_at(const unsigned char* p, Py_ssize_t end, bint prefix,
                                  Py_ssize_t* used):
    """The layout ``encode`` writes, in C; None for anything else (other key order, long
    heads, truncation, trailing bytes outside prefix mode): the shared strict decoder
    then decides, and writes any error message."""
    cdef Py_ssize_t pos, data_at
    cdef uint64_t frame_type = 0, id_ = 0, flags = 0, length = 0, payload_len = 0
    if end < 47 or memcmp(p, b"\xa3\x6aframe_type", 12) != 0:
        return None
    pos = _read_uint(p, 12, end, 0, &frame_type)
    if pos < 0 or frame_type > 255 or pos + 11 > end:
        return None
    if memcmp(p + pos, b"\x66header\xa3\x62id", 11) != 0:
        return None
    pos = _read_uint(p, pos + 11, end, 0, &id_)
    if pos < 0 or pos + 6 > end or memcmp(p + pos, b"\x65flags", 6) != 0:
        return None
    pos = _read_uint(p, pos + 6, end, 0, &flags)
    if pos < 0 or flags > MAX_FLAGS or pos + 5 > end or memcmp(p + pos, b"\x64data", 5) != 0:
        return None
    pos = _read_uint(p, pos + 5, end, 2, &length)
    if pos < 0 or length > <uint64_t>(end - pos):
        return None
    data_at = pos
    pos += <Py_ssize_t>length
    if pos + 8 > end or memcmp(p + pos, b"\x67payload", 8) != 0:
        return None
    pos = _read_uint(p, pos + 8, end, 2, &payload_len)
    if pos < 0 or payload_len > <uint64_t>(end - pos):
        return None
    if not prefix and <uint64_t>(end - pos) != payload_len:
        return None
    cdef PluginHeader header = PluginHeader.__new__(PluginHeader)
    header.id = PyLong_FromUnsignedLong(<unsigned long>id_)
    header.flags = <int>flags
    header.data = PyBytes_FromStringAndSize(<const char*>p + data_at, <Py_ssize_t>length)
    header._cid = <unsigned long>id_
    header._size = _canonical_size(id_, flags, <Py_ssize_t>length)
    cdef PluginFrame frame = PluginFrame.__new__(PluginFrame)
    frame.frame_type = _FRAME_TYPES[frame_type]
    frame.header = header
    frame.payload = PyBytes_FromStringAndSize(<const char*>p + pos, <Py_ssize_t>payload_len)
    used[0] = pos + <Py_ssize_t>payload_len
    return frame


cdef PluginFrame _new_frame(object frame_type, object id_, int flags, bytes data, bytes payload):
    cdef PluginFrame frame = PluginFrame.__new__(PluginFrame)
    frame.frame_type = _FRAME_TYPES[frame_type]
    frame.header = _new_header(id_, flags, data)
    frame.payload = payload
    return frame


cdef inline Py_ssize_t _frame_limit(object max_size) except -1:
    if type(max_size) is int and 0 <= max_size <= 2**62:
        return max_size
    return check_uint("max_size", max_size, 2**62)  # the twin's check and message


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class PluginFrame:
    """A whole Nyx ``PluginFrame`` as it crosses a byte stream (SPEC 8): frame type,
    header and payload in one CBOR map, ``{"frame_type", "header", "payload"}``."""

    cdef readonly object frame_type
    cdef readonly PluginHeader header
    cdef readonly bytes payload

    def __init__(self, frame_type, header, payload=b""):
        if not isinstance(header, PluginHeader):
            raise TypeError(f"Expected `header` to be a PluginHeader, got {type(header).__name__}")
        self.frame_type = _frame_type_of(frame_type)
        self.header = <PluginHeader>header
        self.payload = <bytes>payload if type(payload) is bytes else as_bytes("payload", payload)

    def encode(self):
        """Byte-for-byte ``cbor2.dumps`` of the frame's map (Nyx's own layout)."""
        cdef uint64_t frame_type = <int>self.frame_type
        cdef Py_ssize_t payload_len = PyBytes_GET_SIZE(self.payload)
        cdef Py_ssize_t pos = 12 + _head_size(frame_type) + 7
        cdef Py_ssize_t size = pos + self.header._size + 8 + _head_size(payload_len) + payload_len
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(p, b"\xa3\x6aframe_type", 12)
        _put_head(p + 12, 0, frame_type)
        memcpy(p + pos - 7, b"\x66header", 7)
        _write_header(p + pos, self.header)
        pos += self.header._size
        memcpy(p + pos, b"\x67payload", 8)
        pos += 8
        pos += _put_head(p + pos, 2, <uint64_t>payload_len)
        memcpy(p + pos, PyBytes_AS_STRING(self.payload), payload_len)
        return out

    @classmethod
    def decode(cls, buf, *, max_size=DEFAULT_MAX_FRAME_SIZE):
        """Decode exactly one frame, strictly (SPEC 8); ``FrameTooLarge`` before decoding
        if ``buf`` is longer than ``max_size``, ``FrameDecodeError`` for the rest."""
        cdef bytes raw = <bytes>buf if type(buf) is bytes else as_bytes("buf", buf)
        cdef Py_ssize_t limit = _frame_limit(max_size)
        cdef Py_ssize_t used = 0
        cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
        if end > limit:
            raise FrameTooLarge("frame", end, limit)
        frame = _decode_frame_at(<const unsigned char*>PyBytes_AS_STRING(raw), end, False, &used)
        if frame is not None:
            return frame
        ft, id_, flags, data, payload, used = decode_frame_fields(raw, limit)
        return _new_frame(ft, id_, flags, data, payload)

    @classmethod
    def decode_prefix(cls, buf, *, max_size=DEFAULT_MAX_FRAME_SIZE):
        """Decode the frame at the front of ``buf``: ``(frame, bytes used)``; bytes after
        it are left alone. ``None`` when ``buf`` ends inside the frame (feed more bytes);
        ``FrameTooLarge`` when the frame needs more than ``max_size`` bytes."""
        cdef Py_ssize_t limit = _frame_limit(max_size)
        cdef Py_ssize_t used = 0
        cdef Py_buffer view
        cdef PluginFrame frame
        if type(buf) is bytes:
            frame = _decode_frame_at(<const unsigned char*>PyBytes_AS_STRING(buf),
                                     min(PyBytes_GET_SIZE(buf), limit), True, &used)
        elif isinstance(buf, (bytearray, memoryview)):
            source = as_byte_view("buf", buf)
            PyObject_GetBuffer(source, &view, PyBUF_SIMPLE)
            try:
                frame = _decode_frame_at(<const unsigned char*>view.buf, min(view.len, limit),
                                         True, &used)
            finally:
                PyBuffer_Release(&view)
        else:
            frame = None
        if frame is not None:
            return frame, used
        fields = decode_frame_fields(as_byte_view("buf", buf), limit, True)
        if fields is None:
            return None
        ft, id_, flags, data, payload, used_ = fields
        return _new_frame(ft, id_, flags, data, payload), used_

    def __eq__(self, other):
        if not isinstance(other, PluginFrame):
            return NotImplemented
        cdef PluginFrame o = <PluginFrame>other
        return (self.frame_type == o.frame_type and self.header == o.header
                and self.payload == o.payload)

    def __hash__(self):
        return hash((self.frame_type, self.header, self.payload))

    def __repr__(self):
        return (
            f"PluginFrame(frame_type=0x{int(self.frame_type):02x}, "
            f"header={self.header!r}, payload={self.payload!r})"
        )

    def __reduce__(self):
        return (PluginFrame, (int(self.frame_type), self.header, self.payload))


# -- the isolation wire's frame batches ---------------------------------------------

cdef list _BATCH_TYPES = [frame_type_object(code) for code in range(256)]


cdef inline bint _small_uint(object value, long long limit) noexcept:
    """True for an int (not a bool) in ``0..limit``, checked in C; the batch codec hands
    anything else to ``check_uint``, which accepts it or raises the twin's error."""
    cdef int overflow = 0
    cdef long long number
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    number = PyLong_AsLongLongAndOverflow(value, &overflow)
    return overflow == 0 and 0 <= number <= limit


cdef inline void _put_le(unsigned char* p, uint64_t value, int width) noexcept:
    cdef int i
    for i in range(width):
        p[i] = <unsigned char>(value >> (8 * i))


cdef inline uint64_t _get_le(const unsigned char* p, int width) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(width):
        value |= (<uint64_t>p[i]) << (8 * i)
    return value


def encode_batch(kind, seq, messages):
    """One frame batch of the isolation protocol, framed: ``u32 length | u8 kind | u64 seq |
    u32 count`` then ``u8 type | u16 header length | u32 payload length | header | payload``
    per frame (little-endian; the header in its canonical encoding). ``messages`` holds
    ``PluginMessage`` or ``PluginFrame`` items."""
    if not _small_uint(kind, 255):
        kind = check_uint("kind", kind, 255)
    if not _small_uint(seq, LLONG_MAX):
        seq = check_uint("seq", seq, MAX_BATCH_SEQ)
    cdef unsigned char c_kind = kind
    cdef uint64_t c_seq = seq
    cdef list items = <list>(messages if type(messages) is list
                             else check_list("messages", messages))
    cdef Py_ssize_t total = 17, count = len(items)
    cdef Py_ssize_t pos = 17, size
    cdef PluginHeader hdr
    cdef bytes payload
    cdef object item
    for item in items:
        if type(item) is PluginMessage:
            hdr = (<PluginMessage>item).header
            payload = (<PluginMessage>item).payload
        elif type(item) is PluginFrame:
            hdr = (<PluginFrame>item).header
            payload = (<PluginFrame>item).payload
        else:
            raise BatchErrors.not_a_message(item)
        if hdr._size > 0xFFFF:
            raise BatchErrors.header_too_long(hdr._size)
        total += 7 + hdr._size + PyBytes_GET_SIZE(payload)
    if total - 4 > 0xFFFFFFFF or count > 0xFFFFFFFF:
        raise BatchErrors.batch_too_large(total)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    _put_le(p, <uint64_t>(total - 4), 4)
    p[4] = c_kind
    _put_le(p + 5, c_seq, 8)
    _put_le(p + 13, <uint64_t>count, 4)
    cdef object frame_type
    for item in items:
        if type(item) is PluginMessage:
            frame_type = (<PluginMessage>item).frame_type
            hdr = (<PluginMessage>item).header
            payload = (<PluginMessage>item).payload
        else:
            frame_type = (<PluginFrame>item).frame_type
            hdr = (<PluginFrame>item).header
            payload = (<PluginFrame>item).payload
        size = PyBytes_GET_SIZE(payload)
        p[pos] = <unsigned char>(<int>frame_type)
        _put_le(p + pos + 1, <uint64_t>hdr._size, 2)
        _put_le(p + pos + 3, <uint64_t>size, 4)
        pos += 7
        _write_header(p + pos, hdr)
        pos += hdr._size
        memcpy(p + pos, PyBytes_AS_STRING(payload), size)
        pos += size
    return out


def decode_batch(body, max_header, max_payload):
    """``(seq, messages)`` from a frame batch's body (after the kind byte); ``ValueError``
    for anything malformed, the header decoded as strictly as ``PluginHeader.decode``."""
    cdef bytes raw = <bytes>body if type(body) is bytes else as_bytes("body", body)
    if not _small_uint(max_header, 2**62):
        max_header = check_uint("max_header", max_header, 2**62)
    if not _small_uint(max_payload, 2**62):
        max_payload = check_uint("max_payload", max_payload, 2**62)
    cdef Py_ssize_t header_limit = max_header
    cdef Py_ssize_t payload_limit = max_payload
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = 12, header_len, payload_len, i
    cdef uint64_t seq, count
    cdef PluginHeader header
    cdef PluginMessage msg
    cdef list messages = []
    if end < 12:
        raise BatchErrors.too_short(end)
    seq = _get_le(p, 8)
    count = _get_le(p + 8, 4)
    for i in range(<Py_ssize_t>count):
        if pos + 7 > end:
            raise BatchErrors.ends_inside(seq, i, count)
        header_len = <Py_ssize_t>_get_le(p + pos + 1, 2)
        payload_len = <Py_ssize_t>_get_le(p + pos + 3, 4)
        if header_len > header_limit or payload_len > payload_limit:
            raise BatchErrors.frame_too_large(seq, header_limit, payload_limit, header_len,
                                              payload_len)
        if pos + 7 + header_len + payload_len > end:
            raise BatchErrors.ends_inside(seq, i, count)
        header = _decode_canonical_at(p + pos + 7, header_len)
        if header is None:
            header = _decode_any(PyBytes_FromStringAndSize(<const char*>p + pos + 7, header_len),
                                 header_limit)
        msg = PluginMessage.__new__(PluginMessage)
        msg.frame_type = _BATCH_TYPES[p[pos]]
        msg.header = header
        msg.payload = PyBytes_FromStringAndSize(<const char*>p + pos + 7 + header_len,
                                                payload_len)
        msg.size = header_len + payload_len
        messages.append(msg)
        pos += 7 + header_len + payload_len
    if pos != end:
        raise BatchErrors.trailing_bytes(seq, count)
    return seq, messages


# -- registry ---------------------------------------------------------------------

@cython.final
cdef class _Entry:
    """A registry entry; runtimes hold it so a permission change reaches the next frame."""

    cdef object info
    cdef unsigned int mask
    cdef bint alive

    def __init__(self, info):
        self.info = info
        self.mask = info.permissions.value
        self.alive = True


@cython.final
cdef class PluginRegistry:
    """Which plugins exist and which frame permissions each holds."""

    cdef dict _entries

    def __init__(self):
        self._entries = {}

    def register(self, info):
        """Add ``info``; ``AlreadyRegistered`` if its id is taken."""
        if not isinstance(info, PluginInfo):
            raise TypeError(f"Expected a PluginInfo, got {type(info).__name__}")
        entry = self._entries.get(info.id)
        if entry is not None:
            raise AlreadyRegistered(info.id, (<_Entry>entry).info.name)
        self._entries[info.id] = _Entry(info)

    def unregister(self, plugin_id):
        """Remove the plugin and return its info; ``NotRegistered`` if unknown."""
        entry = self._entries.pop(plugin_id, None)
        if entry is None:
            raise NotRegistered(plugin_id)
        (<_Entry>entry).alive = False
        return (<_Entry>entry).info

    def set_permissions(self, plugin_id, permissions, *, source=None):
        """Replace a registered plugin's permissions; applies to the next frame.

        ``source`` is the manifest that grants them (errors then name its fix), None
        when code does.
        """
        entry = self._entries.get(plugin_id)
        if entry is None:
            raise NotRegistered(plugin_id)
        old = (<_Entry>entry).info
        info = PluginInfo(old.id, old.name, Permission(permission_mask(permissions)),
                          source=source)
        (<_Entry>entry).info = info
        (<_Entry>entry).mask = info.permissions.value
        return info

    def is_registered(self, plugin_id):
        """True if the id is registered."""
        return plugin_id in self._entries

    def has_permission(self, plugin_id, permission):
        """True if the plugin holds every bit of ``permission``; False for unknown ids."""
        entry = self._entries.get(plugin_id)
        if entry is None:
            return False
        cdef unsigned int wanted = permission.value
        return ((<_Entry>entry).mask & wanted) == wanted

    def get(self, plugin_id):
        """The plugin's info, or None."""
        entry = self._entries.get(plugin_id)
        return None if entry is None else (<_Entry>entry).info

    def __len__(self):
        return len(self._entries)

    def __contains__(self, plugin_id):
        return plugin_id in self._entries

    def __iter__(self):
        return iter([(<_Entry>self._entries[key]).info for key in sorted(self._entries)])

    def __repr__(self):
        return f"<nyxplug.PluginRegistry plugins={len(self._entries)}>"


# -- one loaded plugin --------------------------------------------------------------

cdef class _Runtime


#: ``_routing.POINT_RANGE``: 2**53, one past the largest point.
cdef extern from *:
    """
    #define NYX_POINT_RANGE (((uint64_t)1) << 53)
    """
    const uint64_t NYX_POINT_RANGE


cdef inline uint64_t _splitmix64(uint64_t x) noexcept:
    """SplitMix64's output for state ``x`` (see ``_routing``)."""
    cdef uint64_t z = x + <uint64_t>0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline bint _is_key(object key) noexcept:
    """Whether ``key`` is of a route key's type (``_routing.check_key`` says what is)."""
    return (PyLong_Check(key) or PyUnicode_Check(key) or PyBytes_Check(key)
            or PyByteArray_Check(key) or PyMemoryView_Check(key))


cdef int _key_bits(object key, uint64_t* out) except -1:
    """The 64 bits a route key hashes to before the salt (see ``_routing``)."""
    cdef const char* text
    cdef Py_ssize_t size
    cdef Py_buffer view
    if isinstance(key, int):
        out[0] = PyLong_AsUnsignedLongLongMask(key)
    elif type(key) is bytes:
        out[0] = nyx_fnv1a64(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    elif isinstance(key, str):
        try:
            text = PyUnicode_AsUTF8AndSize(key, &size)
        except UnicodeEncodeError:  # lone surrogates: as _routing encodes them
            key = (<str>key).encode("utf-8", "surrogatepass")
            out[0] = nyx_fnv1a64(<const unsigned char*>PyBytes_AS_STRING(key),
                                 PyBytes_GET_SIZE(key))
            return 0
        out[0] = nyx_fnv1a64(<const unsigned char*>text, size)
    elif isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
        out[0] = nyx_fnv1a64(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    else:
        check_key(key)
    return 0


def route_point(key, salt=0):
    """The key's 53-bit point on a route, as ``nyxplug._routing`` specifies it."""
    cdef uint64_t bits
    if not nyx_fast_key_bits(key, &bits):
        _key_bits(key, &bits)
    cdef uint64_t mixed = _splitmix64(bits ^ <uint64_t>(salt & 0xFFFFFFFFFFFFFFFF))
    return mixed >> 11


@cython.final
cdef class _Route:
    """Where a plugin's frames go during a rollout (see ``_routing``): the stable lane
    holds this record; ``candidate`` takes the keys whose point is below ``threshold``
    and the keyless frames ``acc`` carries over ``POINT_RANGE``."""

    cdef _Runtime candidate
    cdef uint64_t threshold
    cdef uint64_t salt
    # keyless frames' error diffusion: 0 <= acc < POINT_RANGE (set_route may carry it
    # over from the route this one replaces)
    cdef uint64_t acc
    cdef object weight
    cdef list rules  # A/B rules with their lanes (None: none, and no cost)
    cdef tuple rule_info
    cdef _Runtime shadow  # gets a copy of every frame routed elsewhere

    def __init__(self, candidate, weight, salt, rules, shadow=None):
        self.candidate = candidate
        self.weight = weight
        self.threshold = weight_threshold(weight) if candidate is not None else 0
        self.salt = salt & 0xFFFFFFFFFFFFFFFF
        self.acc = 0
        self.rules = rules or None
        self.rule_info = tuple(rule for rule, _lane in rules)
        self.shadow = shadow


@cython.final
cdef class _Runtime:
    """One loaded plugin: its queue (a C ring), waiting senders, worker and counters."""

    cdef object id
    cdef _Entry entry
    cdef Py_ssize_t capacity
    cdef PyObject** ring
    cdef Py_ssize_t ring_mask
    cdef Py_ssize_t head
    cdef Py_ssize_t count
    cdef Py_ssize_t reserved
    cdef object waiters
    cdef object handler
    cdef bint batch
    cdef object loop
    cdef object worker
    cdef object wakeup
    cdef list idle_waiters
    cdef bint closed
    # A swap asks the worker to stop after the frame in flight (checked between frames);
    # ``swap`` is the swap task in progress, which an unload waits for.
    cdef bint pausing
    cdef object swap
    cdef object guard  # the plugin's SandboxGuard (SPEC 7), or None when no policy applies
    # A synchronous call longer than ``overrun_limit`` seconds is told to ``on_overrun``
    # (None: calls are not timed).
    cdef double overrun_limit
    cdef object on_overrun
    # Requests waiting for their reply: message -> reply target (see _replies).
    cdef dict replies
    cdef unsigned long long processed
    cdef unsigned long long errors
    cdef unsigned long long nbytes
    cdef unsigned long long permission_violations
    cdef unsigned long long sandbox_violations
    cdef unsigned long long dropped
    cdef Py_ssize_t high_watermark
    cdef unsigned long long would_block
    cdef unsigned long long plugin_closed
    # The circuit breaker (None: none set). ``gate`` is 0 while frames pass without
    # asking it; ``epoch`` changes with each of its transitions (see _breaker).
    cdef object breaker
    cdef int gate
    cdef long long epoch
    cdef long long stale_until  # the breaker's, and its config's record_every
    cdef long long record_every
    cdef unsigned long long circuit_open
    # The route record while the plugin has a rollout (None: every frame comes here,
    # at the cost of one compare). Only the stable lane, the one in ``_runtimes``,
    # holds it. ``routed`` counts frames the router sent to this lane.
    cdef _Route route
    cdef str version
    cdef unsigned long long routed
    cdef unsigned long long shadowed  # copies mirrored here (see set_route's shadow)
    cdef unsigned long long shadow_dropped

    def __cinit__(self):
        self.ring = NULL

    def __dealloc__(self):
        self._release_all()
        if self.ring is not NULL:
            PyMem_Free(self.ring)
            self.ring = NULL

    cdef int setup(self, object plugin_id, _Entry entry, Py_ssize_t capacity, object handler,
                   bint batch, object loop) except -1:
        cdef Py_ssize_t size = 1
        while size < capacity and size < FIRST_RING_SIZE_LIMIT:
            size <<= 1
        self.ring = <PyObject**>PyMem_Malloc(size * sizeof(PyObject*))
        if self.ring is NULL:
            raise MemoryError()
        self.ring_mask = size - 1
        self.id = plugin_id
        self.entry = entry
        self.capacity = capacity
        self.waiters = deque()
        self.handler = handler
        self.batch = batch
        self.loop = loop
        self.idle_waiters = []
        self.replies = {}
        self.version = BASE_VERSION
        return 0

    cdef int _grow(self) except -1:
        """Double the ring (it starts small so a huge capacity costs nothing up front)."""
        cdef Py_ssize_t old_size = self.ring_mask + 1
        cdef Py_ssize_t i
        cdef PyObject** bigger = <PyObject**>PyMem_Malloc(2 * old_size * sizeof(PyObject*))
        if bigger is NULL:
            raise MemoryError()
        for i in range(self.count):
            bigger[i] = self.ring[(self.head + i) & self.ring_mask]
        PyMem_Free(self.ring)
        self.ring = bigger
        self.ring_mask = 2 * old_size - 1
        self.head = 0
        return 0

    cdef inline bint has_room(self) noexcept:
        """A free slot that no parked sender is owed."""
        return self.count + self.reserved < self.capacity

    cdef inline int push(self, PluginMessage msg) except -1:
        if self.count > self.ring_mask:
            self._grow()
        Py_INCREF(msg)
        self.ring[(self.head + self.count) & self.ring_mask] = <PyObject*>msg
        self.count += 1
        if self.count > self.high_watermark:
            self.high_watermark = self.count
        return 0

    cdef inline PluginMessage pop(self):
        cdef PyObject* item = self.ring[self.head]
        self.ring[self.head] = NULL
        self.head = (self.head + 1) & self.ring_mask
        self.count -= 1
        cdef PluginMessage msg = <PluginMessage>item
        Py_XDECREF(item)
        return msg

    cdef void consume_all(self) noexcept:
        """The no-op consumer: count every queued frame as processed and free it."""
        cdef PyObject* item
        cdef unsigned long long nbytes = 0
        cdef Py_ssize_t i
        for i in range(self.count):
            item = self.ring[(self.head + i) & self.ring_mask]
            nbytes += (<PluginMessage>item).size
            self.ring[(self.head + i) & self.ring_mask] = NULL
            Py_XDECREF(item)
        self.processed += self.count
        self.nbytes += nbytes
        self.head = 0
        self.count = 0

    cdef list take_all(self):
        """Hand every queued frame to the worker, counting them as processed."""
        cdef list batch = []
        cdef PluginMessage msg
        while self.count:
            msg = self.pop()
            self.nbytes += msg.size
            batch.append(msg)
        self.processed += len(batch)
        return batch

    cdef void drop_all(self) noexcept:
        """Discard every queued frame, counting them as dropped."""
        self.dropped += self.count
        self._release_all()

    cdef void _release_all(self) noexcept:
        cdef Py_ssize_t i
        cdef PyObject* item
        if self.ring is NULL:
            return
        for i in range(self.count):
            item = self.ring[(self.head + i) & self.ring_mask]
            self.ring[(self.head + i) & self.ring_mask] = NULL
            Py_XDECREF(item)
        self.head = 0
        self.count = 0

    cdef object stats(self):
        return PluginStats(
            messages_processed=self.processed,
            errors=self.errors,
            bytes_processed=self.nbytes,
            permission_violations=self.permission_violations,
            sandbox_violations=self.sandbox_violations
            + (self.guard.violations if self.guard is not None else 0),
            dropped=self.dropped,
            queue_depth=self.count,
            high_watermark=self.high_watermark,
            would_block=self.would_block,
            plugin_closed=self.plugin_closed,
            circuit_open=self.circuit_open,
        )

    cdef inline long long enqueued(self) noexcept:
        """Frames enqueued so far: the ordinal of the last one (see _breaker)."""
        return <long long>self.processed + self.count

    cdef int sync(self) except -1:
        """Copy the breaker's gate and epoch after it was asked anything."""
        breaker = self.breaker
        self.gate = breaker.gate
        self.epoch = breaker.epoch
        self.stale_until = breaker.stale_until
        return 0


# -- the dispatcher ------------------------------------------------------------------

@cython.final
def _observe(task):
    """Retrieve a finished task's outcome so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


cdef class Dispatcher:
    """Routes typed frames into per-plugin bounded queues, checked and counted (SPEC 3)."""

    cdef PluginRegistry _registry
    cdef Py_ssize_t _max_header
    cdef Py_ssize_t _max_payload
    cdef unsigned int _required[256]
    cdef list _type_objects
    cdef object _sandbox
    cdef dict _runtimes
    cdef dict _unloading
    # Loaded versions by plugin id, made at the first load_version (stable lane included).
    cdef dict _lanes
    # The runtime the last frame went to: consecutive frames for one plugin skip the
    # dict lookup. Closed runtimes never match, so unload and reload stay correct.
    cdef _Runtime _last_rt
    cdef unsigned long _last_id
    cdef unsigned long long _plugins_loaded
    cdef unsigned long long _plugins_unloaded
    cdef unsigned long long _frames_dispatched
    # Refusals by DispatchStatus code; dispatch_errors is their sum.
    cdef unsigned long long _refused[S_CIRCUIT_OPEN + 1]
    # The thread whose loop the dispatcher serves (rebound by the first load_plugin):
    # one compare per call keeps other threads out.
    cdef unsigned long _owner
    cdef object _owner_name
    # Left by a failed _prepare for _error: the frame type and the error details.
    cdef object _p_ft
    cdef object _p_error

    def __init__(self, registry=None, *, sandbox=None,
                 max_header_size=DEFAULT_MAX_HEADER_SIZE,
                 max_payload_size=DEFAULT_MAX_PAYLOAD_SIZE):
        cdef int code
        if registry is None:
            registry = PluginRegistry()
        elif not isinstance(registry, PluginRegistry):
            raise TypeError(
                "Expected `registry` to be a PluginRegistry of the same implementation as "
                f"the Dispatcher, got {type(registry).__module__}.{type(registry).__name__}"
            )
        self._sandbox = check_policy("sandbox", sandbox)
        self._registry = registry
        self._max_header = check_uint("max_header_size", max_header_size, 2**62)
        self._max_payload = check_uint("max_payload_size", max_payload_size, 2**62)
        for code in range(256):
            self._required[code] = 0
        for code, permission in DEFAULT_FRAME_PERMISSIONS.items():
            self._required[code] = permission.value
        self._type_objects = [frame_type_object(code) for code in range(256)]
        self._runtimes = {}
        self._unloading = {}
        self._lanes = {}
        for code in range(S_CIRCUIT_OPEN + 1):
            self._refused[code] = 0
        self._bind_thread()

    cdef int _bind_thread(self) except -1:
        self._owner = nyx_thread_id()
        self._owner_name = threading.current_thread().name
        return 0

    cdef object _wrong_thread(self, str method):
        return WrongThread.here(method, self._owner, self._owner_name)

    cdef int _refuse_thread(self, str method) except -1:
        """Raise WrongThread; kept out of line so the hot methods stay small."""
        raise self._wrong_thread(method)

    # -- frame types -------------------------------------------------------------

    def register_frame_type(self, code, permission):
        """Route plugin-range frame type ``code`` (``0x50..0x5F``), requiring ``permission``."""
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"Expected `code` to be an int, got {type(code).__name__}")
        if not PLUGIN_FRAME_MIN <= code <= PLUGIN_FRAME_MAX:
            raise UnknownFrameType(code, None, True)
        if not isinstance(permission, Permission) or not permission.value:
            raise TypeError(
                f"Expected `permission` to be a non-empty Permission, got {permission!r}"
            )
        if code in DEFAULT_FRAME_PERMISSIONS and DEFAULT_FRAME_PERMISSIONS[code] != permission:
            raise ValueError(
                f"Frame type 0x{code:02x} ({FrameType(code).name}) is built in and requires "
                f"{DEFAULT_FRAME_PERMISSIONS[code].name}; it cannot be remapped"
            )
        self._required[<int>code] = permission.value

    def required_permission(self, frame_type):
        """The permission a sender and a target need for ``frame_type``; None if not routed."""
        cdef int code = check_uint("frame_type", frame_type, 255)
        return Permission(self._required[code]) if self._required[code] else None

    # -- plugins -----------------------------------------------------------------

    async def load_plugin(self, info, handler=None, *, capacity=DEFAULT_CAPACITY, sandbox=None,
                          overrun_limit=None, on_overrun=None):
        """Register ``info`` if needed, create the plugin's bounded queue, start its worker.

        ``sandbox`` (a ``SandboxPolicy``, or a ready ``SandboxGuard``) overrides the
        dispatcher's policy for this plugin. With ``overrun_limit`` (seconds) and
        ``on_overrun``, each synchronous handler call is timed and one that took longer
        is reported as ``on_overrun(message_or_batch, elapsed_seconds)`` (it cannot be
        interrupted; an awaitable it returns is not counted).
        """
        if not isinstance(info, PluginInfo):
            raise TypeError(f"Expected `info` to be a PluginInfo, got {type(info).__name__}")
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Expected `capacity` to be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"Expected `capacity` >= 1, got {capacity} - for plugin {info.id}")
        plugin_id = info.id
        if not self._runtimes and not self._unloading:
            self._bind_thread()  # nothing runs: the dispatcher moves to this loop's thread
        elif nyx_thread_id() != self._owner:
            raise self._wrong_thread("load_plugin")
        if plugin_id in self._runtimes:
            raise AlreadyLoaded(plugin_id)
        if plugin_id in self._unloading:
            raise AlreadyLoaded(plugin_id, True)
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        limit, report = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        loop = asyncio.get_running_loop()
        cdef PluginRegistry registry = self._registry
        if not registry.is_registered(plugin_id):
            registry.register(info)
        cdef _Runtime rt = _Runtime()
        rt.setup(plugin_id, <_Entry>registry._entries[plugin_id], capacity, call, batch, loop)
        rt.guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, rt.entry.info
        )
        rt.overrun_limit = limit
        rt.on_overrun = report
        self._runtimes[plugin_id] = rt
        self._plugins_loaded += 1
        self._start_worker(rt, None)

    async def unload_plugin(self, plugin_id, *, drain=True):
        """Stop taking frames for ``plugin_id``, drain or drop its queue, unregister it.

        Cancelling this call does not reopen the plugin: the worker finishes in the
        background and the unload completes there.
        """
        rt_obj = self._runtimes.get(plugin_id)
        if rt_obj is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime rt = <_Runtime>rt_obj
        while rt.swap is not None:  # the swapped-in worker is the one that drains
            await asyncio.wait([rt.swap])
            if self._runtimes.get(plugin_id) is not rt:
                raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        rt.route = None  # from the next frame, all go to the stable lane
        lanes = self._lanes.pop(plugin_id, None)
        if lanes is not None:
            for lane in lanes.values():
                if lane is not rt:
                    await self._close_lane(lane, drain)
            if self._runtimes.get(plugin_id) is not rt:
                raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        del self._runtimes[plugin_id]
        self._unloading[plugin_id] = rt
        rt.closed = True
        for waiter in rt.waiters:
            if not waiter.done():
                waiter.set_result(False)
        rt.waiters.clear()
        if not drain:
            rt.drop_all()
        self._wake_worker(rt)
        worker = rt.worker
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            if not worker.done():
                worker.add_done_callback(lambda _task: self._finish_unload(rt))
                raise
        return self._finish_unload(rt)

    async def swap_handler(self, plugin_id, handler, *, sandbox=None, between=None,
                           overrun_limit=None, on_overrun=None):
        """Replace a loaded plugin's handler; its queue, queued frames and counters stay.

        The worker finishes the frame (or batch) in flight and stops; ``between()``
        runs while no frame is handled (the place to hand state over: if it raises,
        the old handler resumes and the exception propagates); then a new worker runs
        ``handler`` from the same queue, so nothing is lost or reordered and senders
        never see an error. Returns the pause in seconds (old worker's last frame to
        the new worker's start). Swaps of one plugin run in turn; cancelling the
        caller does not cancel the swap. Like ``sandbox``, ``overrun_limit`` and
        ``on_overrun`` belong to the new handler: give them again to keep timing it.
        """
        rt_obj = self._runtimes.get(plugin_id)
        if rt_obj is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime rt = <_Runtime>rt_obj
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        overrun = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        if between is not None and not callable(between):
            raise TypeError(f"Expected `between` to be callable, got {type(between).__name__}")
        guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, rt.entry.info
        )
        swap = rt.loop.create_task(self._swap(rt, rt.swap, call, batch, guard, between, overrun))
        rt.swap = swap
        try:
            return await asyncio.shield(swap)
        except asyncio.CancelledError:
            if not swap.done():  # the swap goes on; its outcome is nobody's to raise
                swap.add_done_callback(_observe)
            raise

    async def _swap(self, _Runtime rt, previous, call, bint batch, guard, between, overrun):
        try:
            if previous is not None:
                await asyncio.wait([previous])
            if rt.closed:
                raise PluginNotLoaded(rt.id, None, rt.entry.info)
            worker = rt.worker
            rt.pausing = True
            self._wake_worker(rt)
            await asyncio.wait([worker])  # it returns after the frame in flight
            stopped = time.perf_counter()
            rt.pausing = False
            if between is not None:
                try:
                    between()
                except BaseException:
                    self._start_worker(rt, None)  # the old handler resumes
                    raise
            if rt.guard is not None:  # its refusals stay counted after the guard goes
                rt.sandbox_violations += rt.guard.violations
            rt.handler = call
            rt.batch = batch
            rt.guard = guard
            rt.overrun_limit, rt.on_overrun = overrun
            started = rt.loop.create_future()
            self._start_worker(rt, started)
            return await started - stopped
        finally:
            if rt.swap is asyncio.current_task():
                rt.swap = None

    cdef int _start_worker(self, _Runtime rt, started) except -1:
        rt.worker = rt.loop.create_task(self._work(rt, started), name=f"nyxplug-worker-{rt.id}")
        return 0

    def _finish_unload(self, _Runtime rt):
        if rt.replies:  # requests whose frames were dropped: never left waiting
            abandon(rt.replies, rt.entry.info)
        if self._unloading.get(rt.id) is rt:
            del self._unloading[rt.id]
            if self._registry.is_registered(rt.id):
                self._registry.unregister(rt.id)
            self._plugins_unloaded += 1
        return rt.stats()

    async def aclose(self):
        """Unload every plugin, draining each queue."""
        for plugin_id in sorted(self._runtimes):
            if plugin_id in self._runtimes:
                await self.unload_plugin(plugin_id)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()

    async def wait_idle(self, plugin_id=None):
        """Wait until the plugin (or every plugin) has an empty queue and no handler running."""
        if plugin_id is None:
            for pid, rt in list(self._runtimes.items()):
                for lane in list(self._lanes.get(pid, {"": rt}).values()):
                    await self._wait_idle(lane)
            return
        rt = self._runtimes.get(plugin_id)
        if rt is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        for lane in list(self._lanes.get(plugin_id, {"": rt}).values()):
            await self._wait_idle(lane)

    async def _wait_idle(self, _Runtime rt):
        if rt.count == 0 and rt.wakeup is not None:
            return
        waiter = rt.loop.create_future()
        rt.idle_waiters.append(waiter)
        await waiter

    # -- dispatch ----------------------------------------------------------------

    cdef PluginMessage _prepare(self, object frame_type, object header, object payload,
                                object key, int* status, PyObject** rt_out):
        """Run the checks of SPEC 3 up to (not including) the queue.

        On success return the message, set ``*status`` to OK and ``*rt_out`` to the
        target runtime (borrowed from ``_runtimes``: use it before any Python code
        runs). On failure return None with ``*status`` set and the details in
        ``_p_error``.
        """
        cdef long code
        cdef int overflow = 0
        cdef Py_ssize_t header_size, payload_size
        cdef PluginHeader hdr
        cdef bytes raw = None
        cdef unsigned int required
        cdef PyObject* found
        cdef _Runtime rt
        cdef _Entry entry
        if not isinstance(frame_type, int) or isinstance(frame_type, bool):
            raise TypeError(f"Expected `frame_type` to be an int, got {type(frame_type).__name__}")
        if type(payload) is not bytes:
            payload = as_bytes("payload", payload)
        code = PyLong_AsLongAndOverflow(frame_type, &overflow)
        if overflow or code < 0 or code > 255:
            code = -1
        # 1. size limits, before any decoding
        if type(header) is PluginHeader:
            hdr = <PluginHeader>header
            header_size = hdr._size
        else:
            if type(header) is bytes:
                raw = <bytes>header
            elif isinstance(header, (bytearray, memoryview)):
                raw = as_bytes("header", header)
            else:
                hdr = self._coerce_header(header)
            header_size = PyBytes_GET_SIZE(raw) if raw is not None else hdr._size
        if header_size > self._max_header:
            return self._fail(frame_type, S_FRAME_TOO_LARGE, status,
                              FrameTooLarge("header", header_size, self._max_header, frame_type))
        payload_size = PyBytes_GET_SIZE(<bytes>payload)
        if payload_size > self._max_payload:
            return self._fail(frame_type, S_FRAME_TOO_LARGE, status,
                              FrameTooLarge("payload", payload_size, self._max_payload, frame_type))
        # 2. header decoding
        if raw is not None:
            try:
                hdr = _decode_any(raw, self._max_header)
            except HeaderDecodeError as exc:
                return self._fail(frame_type, S_HEADER_DECODE_ERROR, status,
                                  exc._with_frame_type(frame_type))
        plugin_id = hdr.id
        # 3. frame type
        required = self._required[code] if code >= 0 else 0
        if not required:
            return self._fail(frame_type, S_UNKNOWN_FRAME_TYPE, status,
                              UnknownFrameType(frame_type, plugin_id))
        # 4. registry and 5. loaded runtime
        rt = self._last_rt
        if rt is None or rt.closed or self._last_id != hdr._cid:
            found = PyDict_GetItemWithError(self._runtimes, plugin_id)
            if found is NULL:
                if plugin_id in self._registry._entries:
                    return self._fail(frame_type, S_NOT_LOADED, status, plugin_id)
                return self._fail(frame_type, S_NOT_REGISTERED, status, plugin_id)
            rt = <_Runtime>found
            self._last_rt = rt
            self._last_id = hdr._cid
        # 5b. route: during a rollout the key picks the version's lane; else one compare
        # ``mirror`` is borrowed (the route and ``_lanes`` hold the lane): an owned local
        # would cost the frames of every plugin without a route a reference count.
        cdef PyObject* mirror = NULL
        cdef PyObject* lane
        if rt.route is not None:
            lane = self._route(rt, key, hdr, code, &mirror)
            if lane != <PyObject*>rt:  # the stable lane (most frames): no reference count
                rt = <_Runtime>lane
        elif key is not None and not _is_key(key):
            check_key(key)  # raises TypeError
        entry = rt.entry
        if not entry.alive:
            found = PyDict_GetItemWithError(self._registry._entries, plugin_id)
            if found is NULL:
                return self._fail(frame_type, S_NOT_REGISTERED, status, plugin_id)
            entry = <_Entry>found
            rt.entry = entry
        # 6. permission
        if (entry.mask & required) != required:
            rt.permission_violations += 1
            return self._fail(frame_type, S_PERMISSION_DENIED, status,
                              PermissionDenied(plugin_id, frame_type, Permission(required),
                                               entry.info))
        # 7. sandbox preflight (SPEC 7): the plugin's guard checks a CONTROL frame's header
        if rt.guard is not None and code == CONTROL_CODE:
            detail = rt.guard.preflight(hdr)
            if detail is not None:
                rt.sandbox_violations += 1
                return self._fail(frame_type, S_SANDBOX_VIOLATION, status,
                                  SandboxViolation(plugin_id, frame_type, detail, entry.info))
        # 8. circuit breaker: asked only when its gate is shut (not plain CLOSED)
        if rt.gate and self._refused_by_breaker(rt, frame_type):
            status[0] = S_CIRCUIT_OPEN
            return None
        cdef PluginMessage msg = PluginMessage.__new__(PluginMessage)
        msg.frame_type = self._type_objects[code]
        msg.header = hdr
        msg.payload = <bytes>payload
        msg.size = header_size + payload_size
        if mirror is not NULL:
            self._mirror(<_Runtime>mirror, msg)
        rt_out[0] = <PyObject*>rt
        status[0] = S_OK
        return msg

    cdef int _mirror(self, _Runtime lane, PluginMessage msg) except -1:
        """Offer the shadow lane a copy (the same immutable message): never waits, never
        refuses the frame itself; a full queue or a breaker that is not closed drops it."""
        if lane.gate or not lane.has_room():
            lane.shadow_dropped += 1
            return 0
        lane.push(msg)
        lane.shadowed += 1
        if lane.wakeup is not None:
            self._wake_worker(lane)
        return 0

    cdef inline PyObject* _route(self, _Runtime rt, object key, PluginHeader hdr, long code,
                                 PyObject** mirror) except NULL:
        """Step 5b for a plugin with a route: the lane of the frame with route key ``key``
        (see ``_routing``), counted, borrowed (the route and ``_lanes`` hold the lanes),
        and the shadow lane to copy it to (borrowed). A keyless frame (error diffusion)
        or a common key (``nyx_fast_key_bits``) on a route without A/B rules is decided
        here, inline, without a call (about 20 machine instructions fewer per routed
        frame than out of line); the route is read through ``rt`` (no reference counts);
        the rest goes to ``_route_slow``."""
        # (two calls out of line, as few as can be: with more, the C compiler stops
        # inlining this into _prepare)
        cdef uint64_t bits = 0, acc
        cdef PyObject* lane = <PyObject*>rt
        if key is not None and not nyx_fast_key_bits(key, &bits):
            return self._route_slow(rt, key, hdr, code, mirror, False, 0)
        if rt.route.rules is not None:
            return self._route_slow(rt, key, hdr, code, mirror, True, bits)
        if key is None:
            acc = rt.route.acc + rt.route.threshold  # below 2**54: no overflow
            if acc >= NYX_POINT_RANGE:
                acc -= NYX_POINT_RANGE
                lane = <PyObject*>rt.route.candidate  # a threshold above 0: a candidate is set
            rt.route.acc = acc
        elif (_splitmix64(bits ^ rt.route.salt) >> 11) < rt.route.threshold:
            lane = <PyObject*>rt.route.candidate  # a threshold above 0: a candidate is set
        (<_Runtime>lane).routed += 1
        if rt.route.shadow is not None and <PyObject*>rt.route.shadow != lane:
            mirror[0] = <PyObject*>rt.route.shadow
        return lane

    cdef PyObject* _route_slow(self, _Runtime rt, object key, PluginHeader hdr, long code,
                               PyObject** mirror, bint hashed, uint64_t bits) except NULL:
        """``_route`` for another key type or a route with A/B rules; ``hashed``: the
        key's ``bits`` are known (a keyless frame has none). The lane is borrowed, as
        ``_route``'s."""
        cdef PyObject* lane = <PyObject*>rt
        cdef uint64_t acc
        found = None
        if not hashed:
            _key_bits(key, &bits)
        if rt.route.rules is not None:
            found = self._match_rule(rt.route, key is not None, bits, hdr, code)
        if found is not None:
            lane = <PyObject*>found
        elif key is None:  # error diffusion, as in _route
            acc = rt.route.acc + rt.route.threshold
            if acc >= NYX_POINT_RANGE:
                acc -= NYX_POINT_RANGE
                lane = <PyObject*>rt.route.candidate
            rt.route.acc = acc
        elif (_splitmix64(bits ^ rt.route.salt) >> 11) < rt.route.threshold:
            lane = <PyObject*>rt.route.candidate
        (<_Runtime>lane).routed += 1
        if rt.route.shadow is not None and <PyObject*>rt.route.shadow != lane:
            mirror[0] = <PyObject*>rt.route.shadow
        return lane  # borrowed: the route's rules hold the lanes they name

    cdef object _match_rule(self, _Route route, bint keyed, uint64_t bits, PluginHeader hdr,
                            long code):
        """The lane the first matching A/B rule names, else None (the weight decides)."""
        key_bits = bits if keyed else None
        for rule, lane in route.rules:
            if rule.matches(hdr.flags, hdr.data, code, key_bits):
                return lane
        return None

    cdef int _refused_by_breaker(self, _Runtime rt, object frame_type) except -1:
        """Ask the breaker to admit one frame; on refusal keep the error for ``_error``."""
        breaker = rt.breaker
        cdef int reason = breaker.admit(rt.enqueued())
        rt.sync()
        if not reason:
            return 0
        rt.circuit_open += 1
        self._p_ft = frame_type
        self._p_error = CircuitOpen(rt.id, frame_type, REFUSAL_REASONS[reason],
                                    breaker.retry_after, rt.entry.info, breaker.forced_by)
        return 1

    cdef PluginMessage _fail(self, object frame_type, int code, int* status, object detail):
        """Keep what ``_error`` needs to build the exception, only if one is raised."""
        self._p_ft = frame_type
        self._p_error = detail
        status[0] = code
        return None

    cdef PluginHeader _coerce_header(self, object header):
        """Accept the other twin's PluginHeader; refuse anything else with TypeError."""
        other = sys.modules.get("nyxplug._dispatch_py")  # imported if one of its headers exists
        if other is not None and type(header) is other.PluginHeader:
            return PluginHeader(header.id, header.flags, header.data)
        raise TypeError(
            f"Expected `header` to be bytes-like or a PluginHeader, got {type(header).__name__}"
        )

    cdef object _error(self, int status):
        """The exception for a failed ``_prepare`` (built only when raising)."""
        detail, frame_type = self._p_error, self._p_ft
        self._p_error = self._p_ft = None
        if status == S_NOT_REGISTERED:
            return PluginNotRegistered(detail, frame_type)
        if status == S_NOT_LOADED:
            return PluginNotLoaded(detail, frame_type, self._registry.get(detail))
        return detail

    cdef inline int _enqueue(self, _Runtime rt, PluginMessage msg) except -1:
        rt.push(msg)
        self._frames_dispatched += 1
        if rt.wakeup is not None:
            self._wake_worker(rt)
        return 0

    cdef inline int _submit(self, object frame_type, object header, object payload,
                            object key, PyObject** rt_out) except -1:
        """Prepare and enqueue without waiting; count a failure. ``*rt_out`` as in _prepare."""
        cdef int status
        cdef PluginMessage msg = self._prepare(frame_type, header, payload, key, &status,
                                               rt_out)
        cdef _Runtime rt
        if status == S_OK:
            rt = <_Runtime>rt_out[0]
            if rt.has_room():
                self._enqueue(rt, msg)
                return S_OK
            status = S_WOULD_BLOCK
            rt.would_block += 1
            if rt.gate:  # a half-open probe met a full queue: load, not an outcome
                rt.breaker.unadmit()
        self._refused[status] += 1
        return status

    cdef inline int _submit_frame(self, PluginFrame frame) except -1:
        """``_submit`` for a ``PluginFrame`` (already typed, as a batch's are): when every
        check of ``_prepare`` passes for the cached runtime and its queue has room, build
        and enqueue the message here; otherwise ``_submit`` runs them all and counts the
        refusal, so statuses and counters are the same either way."""
        cdef _Runtime rt = self._last_rt
        cdef PluginHeader hdr = frame.header
        cdef long code = <long>frame.frame_type  # 0..255: PluginFrame checked it
        cdef unsigned int required = self._required[code]
        cdef PyObject* found = NULL
        cdef Py_ssize_t payload_size = PyBytes_GET_SIZE(frame.payload)
        cdef PluginMessage msg
        if (required and rt is not None and not rt.closed and self._last_id == hdr._cid
                and rt.entry.alive and (rt.entry.mask & required) == required
                and (code != CONTROL_CODE or rt.guard is None) and not rt.gate
                and rt.route is None and hdr._size <= self._max_header and payload_size <= self._max_payload
                and rt.has_room()):
            msg = PluginMessage.__new__(PluginMessage)
            msg.frame_type = frame.frame_type  # the same object as _type_objects[code]
            msg.header = hdr
            msg.payload = frame.payload
            msg.size = hdr._size + payload_size
            self._enqueue(rt, msg)
            return S_OK
        return self._submit(frame.frame_type, hdr, frame.payload, None, &found)

    cdef inline int _submit_message(self, PluginMessage item) except -1:
        """``_submit_frame`` for a ``PluginMessage`` (a decoded batch's): on the fast path
        the message itself is enqueued (it is immutable), with its size recomputed as
        ``_prepare`` computes it."""
        cdef _Runtime rt = self._last_rt
        cdef PluginHeader hdr = item.header
        cdef long code = <long>item.frame_type  # 0..255: PluginMessage checked it
        cdef unsigned int required = self._required[code]
        cdef PyObject* found = NULL
        cdef Py_ssize_t payload_size = PyBytes_GET_SIZE(item.payload)
        if (required and rt is not None and not rt.closed and self._last_id == hdr._cid
                and rt.entry.alive and (rt.entry.mask & required) == required
                and (code != CONTROL_CODE or rt.guard is None) and not rt.gate
                and rt.route is None
                and hdr._size <= self._max_header and payload_size <= self._max_payload
                and rt.has_room()):
            if item.size != hdr._size + payload_size:  # a non-canonical header on the wire
                return self._submit(item.frame_type, hdr, item.payload, None, &found)
            self._enqueue(rt, item)
            return S_OK
        return self._submit(item.frame_type, hdr, item.payload, None, &found)

    @cython.binding(False)  # a plain method descriptor: CPython calls it ~10 ns faster
    @cython.embedsignature.format("clinic")
    def dispatch_nowait(self, frame_type, header, payload=b"", *, key=None):
        """Route one frame without waiting; a full queue is ``WouldBlock``.

        ``key`` (a connection or session id) keeps a session on one version while the
        plugin has a rollout (``set_route``); without one it is only type-checked.
        """
        return _dispatch_nowait_body(self, frame_type, header, payload, key)

    @cython.binding(False)  # a plain method descriptor: CPython calls it ~10 ns faster
    @cython.embedsignature.format("clinic")
    def try_dispatch(self, frame_type, header, payload=b"", *, key=None):
        """``dispatch_nowait`` that returns a ``DispatchStatus`` instead of raising."""
        return _try_dispatch_body(self, frame_type, header, payload, key)

    def try_dispatch_many(self, frames):
        """``try_dispatch`` for each frame in order, in one call; stop at ``WOULD_BLOCK``.

        ``frames`` holds ``PluginFrame`` or ``PluginMessage`` items (a batch decoded by
        ``decode_batch`` goes in as it is, as the session server feeds it).

        Every frame is counted as its own ``try_dispatch`` would count it; a refusal is a
        status, never an exception. A non-frame item is a TypeError before anything runs.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("try_dispatch_many")
        cdef list items = <list>frames if type(frames) is list else list(frames)
        cdef Py_ssize_t dispatched = 0, i, n = len(items)
        cdef object item
        for i in range(n):  # check every item in C first; the shared check on a mismatch
            item = <object>PyList_GET_ITEM(items, i)
            if type(item) is not PluginFrame and type(item) is not PluginMessage:
                items = frame_list(items, PluginFrame, PluginHeader, PluginMessage)
                break
        cdef list statuses = PyList_New(n)  # filled in C, cut short at a WOULD_BLOCK
        cdef object ok = _STATUS[S_OK]
        cdef object outcome
        cdef int status
        for i in range(n):
            item = <object>PyList_GET_ITEM(items, i)
            if type(item) is PluginMessage:
                status = self._submit_message(<PluginMessage>item)
            else:
                status = self._submit_frame(<PluginFrame>item)
            if status == S_OK:
                Py_INCREF(ok)
                PyList_SET_ITEM(statuses, i, ok)
                dispatched += 1
                continue
            outcome = _STATUS[status]
            Py_INCREF(outcome)
            PyList_SET_ITEM(statuses, i, outcome)
            self._p_error = self._p_ft = None
            if status == S_WOULD_BLOCK:
                del statuses[i + 1:]
                return BatchResult(statuses, dispatched, i)
        return BatchResult(statuses, dispatched, n)

    def try_dispatch_framed(self, buf, *, max_size=DEFAULT_MAX_FRAME_SIZE):
        """``try_dispatch_many`` over the length-prefixed ``PluginFrame`` messages of SPEC 8
        in ``buf``, decoding each one; ``used`` says where the rest begins.

        A message whose frame does not decode is ``HEADER_DECODE_ERROR`` (counted like an
        undecodable header) and the batch goes on; a bad length ends it with ``error``
        set; a message cut short at the end of ``buf`` is left for the next call.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("try_dispatch_framed")
        cdef Py_ssize_t limit = (<Py_ssize_t>max_size if type(max_size) is int
                                 and 0 <= max_size <= MAX_MESSAGE_LIMIT
                                 else check_uint("max_size", max_size, MAX_MESSAGE_LIMIT))
        cdef Py_buffer view
        source = buf if type(buf) is bytes else as_byte_view("buf", buf)
        PyObject_GetBuffer(source, &view, PyBUF_SIMPLE)
        try:
            return self._dispatch_framed(<const unsigned char*>view.buf, view.len, limit)
        finally:
            PyBuffer_Release(&view)

    cdef object _dispatch_framed(self, const unsigned char* p, Py_ssize_t end,
                                 Py_ssize_t limit):
        cdef list statuses = []
        cdef Py_ssize_t dispatched = 0, pos = 0, stop, used = 0
        cdef uint64_t size
        cdef PluginFrame frame
        cdef int status
        while end - pos >= 4:
            size = ((<uint64_t>p[pos] << 24) | (<uint64_t>p[pos + 1] << 16)
                    | (<uint64_t>p[pos + 2] << 8) | p[pos + 3])
            if size == 0 or size > <uint64_t>limit:
                return BatchResult(statuses, dispatched, len(statuses), pos,
                                   bad_length(size, limit, pos))
            stop = pos + 4 + <Py_ssize_t>size
            if stop > end:
                break
            frame = _decode_frame_at(p + pos + 4, stop - pos - 4, False, &used)
            if frame is None:
                try:
                    fields = decode_frame_fields(
                        PyBytes_FromStringAndSize(<const char*>p + pos + 4, stop - pos - 4),
                        limit)
                except HeaderDecodeError:
                    self._refused[S_HEADER_DECODE_ERROR] += 1
                    statuses.append(_STATUS[S_HEADER_DECODE_ERROR])
                    pos = stop
                    continue
                ft, id_, flags, data, payload, _used = fields
                frame = _new_frame(ft, id_, flags, data, payload)
            status = self._submit_frame(frame)
            statuses.append(_STATUS[status])
            if status == S_OK:
                dispatched += 1
            else:
                self._p_error = self._p_ft = None
                if status == S_WOULD_BLOCK:
                    return BatchResult(statuses, dispatched, len(statuses) - 1, pos)
            pos = stop
        return BatchResult(statuses, dispatched, len(statuses), pos)

    @cython.binding(False)  # a plain method descriptor: CPython calls it ~10 ns faster
    @cython.embedsignature.format("clinic")
    def dispatch(self, frame_type, header, payload=b"", *, key=None):
        """Route one frame, waiting for queue space (FIFO among waiting senders).

        Returns an awaitable. When the queue has room the frame is enqueued before
        this returns and awaiting the result does not yield to the loop; otherwise
        the awaitable parks until a slot is granted. A refused frame is counted here
        and its ``DispatchError`` raised by awaiting the result, as with a coroutine.
        """
        return _dispatch_body(self, frame_type, header, payload, key)

    async def _wait_for_space(self, _Runtime rt, PluginMessage msg):
        if rt.closed:
            self._refuse_closed(rt)
            raise PluginClosed(rt.id, msg.frame_type, rt.entry.info)
        if not rt.waiters and rt.has_room():
            # Space freed between the call and the first await: no need to park.
            self._enqueue(rt, msg)
            return
        cdef long long epoch = rt.epoch
        waiter = asyncio.get_running_loop().create_future()
        rt.waiters.append(waiter)
        try:
            granted = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                rt.reserved -= 1
                self._grant(rt)
            else:
                try:
                    rt.waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        if granted:
            rt.reserved -= 1
        if rt.closed:
            self._refuse_closed(rt)
            raise PluginClosed(rt.id, msg.frame_type, rt.entry.info)
        if rt.epoch != epoch and rt.gate and self._refused_by_breaker(rt, msg.frame_type):
            # The breaker changed state while this sender waited: it is admitted anew.
            self._refused[S_CIRCUIT_OPEN] += 1
            if granted:
                self._grant(rt)  # the slot goes to the next waiter
            raise self._error(S_CIRCUIT_OPEN)
        self._enqueue(rt, msg)

    async def request(self, frame_type, header, payload=b"", *, timeout=None):
        """Route one frame like ``dispatch`` and return the handler's reply (SPEC 8).

        The handler's return value is the reply (``None``: no reply). A handler that
        raises fails this with ``HandlerError`` (its exception as ``__cause__``; still
        counted in ``errors``). After ``timeout`` seconds ``ReplyTimeout``. Cancelled (or
        timed out) before the frame was enqueued, nothing happened; after, the frame is
        still handled and counted, and its reply dropped.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("request")
        limit = check_timeout(timeout)
        cdef int status
        cdef PyObject* found
        cdef PluginMessage msg = self._prepare(frame_type, header, payload, None, &status,
                                               &found)
        cdef _Runtime rt
        if status != S_OK:
            self._refused[status] += 1
            raise self._error(status)
        rt = <_Runtime>found
        reply = rt.loop.create_future()
        parked = None
        if rt.has_room():
            self._enqueue(rt, msg)
        else:
            parked = self._wait_for_space(rt, msg)
        return await await_reply(parked, rt.replies, msg, reply, limit, rt.entry.info, msg.frame_type)

    async def submit(self, frame_type, header, payload=b"", *, reply_to=None):
        """Route one frame like ``dispatch`` (waiting for space, FIFO) and, once it is
        enqueued, return a future for its reply: ``request`` in two steps.

        A stream adapter awaits this to keep frames in order with backpressure, and keeps
        the futures to answer in order while later frames go on. The future gets what
        ``request`` would return or raise (a reply, ``None``, ``HandlerError``,
        ``RequestDropped``). Cancelled before the frame was enqueued, nothing happened.
        ``reply_to`` (a ``ReplySink``, or a future of yours) takes the reply instead of a
        new future, and is returned: a sink is called by the worker as it answers, one
        loop iteration before a future's callbacks would run.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("submit")
        cdef int status
        cdef PyObject* found
        cdef PluginMessage msg = self._prepare(frame_type, header, payload, None, &status,
                                               &found)
        cdef _Runtime rt
        if status != S_OK:
            self._refused[status] += 1
            raise self._error(status)
        rt = <_Runtime>found
        if rt.has_room():
            self._enqueue(rt, msg)
        else:
            await self._wait_for_space(rt, msg)
        reply = rt.loop.create_future() if reply_to is None else reply_to
        rt.replies[msg] = reply
        return reply

    cdef int _refuse_closed(self, _Runtime rt) except -1:
        self._refused[S_PLUGIN_CLOSED] += 1
        rt.plugin_closed += 1
        return 0

    cdef unsigned long long _errors_total(self) noexcept:
        cdef unsigned long long total = 0
        cdef int code
        for code in range(S_CIRCUIT_OPEN + 1):
            total += self._refused[code]
        return total

    cdef int _grant(self, _Runtime rt) except -1:
        """Give freed slots to the longest-waiting senders, at once."""
        waiters = rt.waiters
        while waiters and rt.has_room():
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                rt.reserved += 1
        return 0

    cdef int _wake_worker(self, _Runtime rt) except -1:
        wakeup = rt.wakeup
        if wakeup is not None:
            rt.wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        return 0

    # -- the worker --------------------------------------------------------------

    async def _work(self, _Runtime rt, started):
        cdef PluginMessage msg
        cdef list batch
        handler = rt.handler
        cdef dict replies = rt.replies  # non-empty only while a request waits
        cdef bint timed = rt.on_overrun is not None  # fixed for this worker: a swap starts another
        if rt.guard is not None:
            # This task's context only: every handler call (and task it spawns) is checked.
            enter_guard(rt.guard)
        if started is not None:  # a swap measures its pause up to here
            started.set_result(time.perf_counter())
        # Outcomes for the breaker are recorded per group of frames (a batch, or up to
        # ``record_every`` single frames), with one clock read per group: ``first`` is the
        # group's first ordinal (0: no group open), ``errors`` the error count before it,
        # ``since`` its start time (None: read the clock when the next group opens).
        cdef long long first = 0, stop = 0, epoch = 0
        cdef unsigned long long errors = 0
        since = None
        try:
            while True:
                if rt.count == 0:
                    if first:
                        self._record(rt, first, errors, since, False)
                        first = 0
                    since = None
                    self._notify_idle(rt, False)
                    if rt.closed:
                        return
                    rt.wakeup = rt.loop.create_future()
                    await rt.wakeup
                    if rt.pausing:
                        return
                    continue
                if handler is None:
                    # The no-op consumer takes the whole queue at once.
                    if rt.breaker is not None:
                        first, errors = <long long>rt.processed + 1, rt.errors
                        if since is None:
                            since = rt.breaker.clock()
                    if replies:
                        batch = rt.take_all()  # same counting, but the requests get None
                        settle_batch(replies, batch, rt.entry.info, None)
                    else:
                        rt.consume_all()
                    if rt.waiters:
                        self._grant(rt)
                    if first:
                        since = self._record(rt, first, errors, since, False)
                        first = 0
                elif rt.batch:
                    batch = rt.take_all()
                    if rt.waiters:
                        self._grant(rt)
                    if rt.breaker is not None:
                        first, errors = <long long>rt.processed - len(batch) + 1, rt.errors
                        if since is None:
                            since = rt.breaker.clock()
                    try:
                        result = self._call_timed(rt, batch) if timed else handler(batch)
                        if result is not None and inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        rt.errors += 1
                        log_handler_error(rt.id, (<PluginMessage>batch[0]).frame_type,
                                          len(batch), exc, rt.entry.info)
                        if replies:
                            fail_batch(replies, batch, rt.entry.info, exc)
                    else:
                        if replies:
                            bad = settle_batch(replies, batch, rt.entry.info, result)
                            if bad is not None:
                                rt.errors += 1
                                log_handler_error(rt.id, (<PluginMessage>batch[0]).frame_type,
                                                  len(batch), bad, rt.entry.info)
                    if first:
                        since = self._record(rt, first, errors, since, True)
                        first = 0
                    if rt.pausing:  # a swap: the next frame goes to the new handler
                        return
                else:
                    msg = rt.pop()
                    rt.processed += 1
                    rt.nbytes += msg.size
                    if rt.waiters:
                        self._grant(rt)
                    if not first and rt.breaker is not None:
                        # Open a group at this frame. It closes at ordinal ``stop`` - after
                        # ``record_every`` frames, or at the last stale frame so no group
                        # mixes stale and fresh outcomes - or when the epoch moves.
                        first, errors, epoch = rt.processed, rt.errors, rt.epoch
                        stop = first + rt.record_every - 1
                        if first <= rt.stale_until < stop:
                            stop = rt.stale_until
                        if since is None:
                            since = rt.breaker.clock()
                    try:
                        result = self._call_timed(rt, msg) if timed else handler(msg)
                        if result is not None and inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        rt.errors += 1
                        log_handler_error(rt.id, msg.frame_type, 1, exc, rt.entry.info)
                        if replies:
                            fail(replies, msg, rt.entry.info, exc)
                    else:
                        if replies:
                            bad = settle(replies, msg, rt.entry.info, result)
                            if bad is not None:
                                rt.errors += 1
                                log_handler_error(rt.id, msg.frame_type, 1, bad,
                                                  rt.entry.info)
                    if first and (<long long>rt.processed >= stop or rt.epoch != epoch):
                        since = self._record(rt, first, errors, since, False)
                        first = 0
                    if rt.pausing:
                        if first:
                            self._record(rt, first, errors, since, False)
                        return
        finally:
            rt.wakeup = None
            self._notify_idle(rt, not rt.pausing)

    cdef object _record(self, _Runtime rt, long long first, unsigned long long errors,
                        object since, bint whole):
        """Give the breaker the outcomes of frames ``first .. processed``: the errors
        counted since ``errors`` are theirs (``whole``: one batch, all failed or none);
        return now, the next group's start."""
        breaker = rt.breaker
        if breaker is None or since is None:
            return None
        cdef long long n = <long long>rt.processed - first + 1
        cdef long long failed = <long long>(rt.errors - errors)
        if whole and failed:  # a batch handler's error fails every frame of the batch
            failed = n
        now = breaker.clock()
        breaker.record(first, n, failed, now - since, now, rt.enqueued())
        rt.sync()
        return now

    cdef object _call_timed(self, _Runtime rt, object arg):
        """``rt.handler(arg)``, reporting a call longer than the limit (even one that raised)."""
        cdef double start = nyx_monotonic()
        cdef double elapsed
        try:
            return rt.handler(arg)
        finally:
            elapsed = nyx_monotonic() - start
            if elapsed > rt.overrun_limit:
                report_overrun(rt.id, rt.on_overrun, arg, elapsed)

    cdef int _notify_idle(self, _Runtime rt, bint force) except -1:
        waiters = rt.idle_waiters
        if waiters and (force or rt.count == 0):
            rt.idle_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return 0

    # -- introspection -----------------------------------------------------------

    @property
    def registry(self):
        """The registry whose permissions this dispatcher checks."""
        return self._registry

    def plugin_stats(self, plugin_id):
        """A snapshot of the plugin's counters, or None if it is not loaded."""
        rt = self._runtimes.get(plugin_id)
        return None if rt is None else (<_Runtime>rt).stats()

    # -- circuit breakers ----------------------------------------------------------

    def set_breaker(self, plugin_id, config, *, clock=None, random=None, version=None):
        """Give a loaded plugin (its ``version``; default the stable one) a circuit breaker
        (CLOSED, empty window), replacing any it had; ``None`` removes it. Frames already
        queued are not judged by it.

        ``clock`` (seconds; default ``time.monotonic``, which asyncio's loop reads too -
        uvloop's ``loop.time`` stands still within a loop iteration, so it cannot time a
        batch) and ``random`` (``[0, 1)``, the open time's jitter) are for tests and
        simulations.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("set_breaker")
        found = self._lane(plugin_id, version)
        if found is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime rt = <_Runtime>found
        if config is None:
            rt.breaker = None
            rt.gate = 0
            rt.epoch += 1
            return
        breaker = CircuitBreaker(config, time.monotonic if clock is None else clock, random)
        breaker.epoch = rt.epoch + 1
        breaker.stale_until = rt.enqueued()
        if rt.breaker is not None:
            breaker.on_change = rt.breaker.on_change  # a new config, the same listener
        rt.breaker = breaker
        rt.record_every = config.record_every
        rt.sync()

    def set_breaker_state(self, plugin_id, state, *, why=None, version=None):
        """An operator's transition of the plugin's breaker: ``CLOSED`` resets it (fresh
        window, open time back to ``open_wait``), ``DISABLED`` admits everything and
        records nothing, ``FORCED_OPEN`` refuses everything, ``METRICS_ONLY`` records
        but never trips. Applies from the next frame; outcomes of frames admitted
        before it are ignored. ``why`` names who forces it open when that is not an
        operator (health checks do): refusals say so instead of blaming an operator.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("set_breaker_state")
        cdef _Runtime rt = self._breaker_runtime(plugin_id, version)
        rt.breaker.set_state(state, rt.enqueued(), why)
        rt.sync()

    def set_breaker_repairing(self, plugin_id, step, *, recovered=False):
        """A recovery step starts (``step`` names it) or ends (None) on the plugin: while
        it runs the breaker stays OPEN ("repairing", in ``breaker_stats``) whatever its
        open time says, and refusals name the step. Ending ``recovered=True`` moves an
        OPEN or FORCED_OPEN breaker to HALF_OPEN, so probe frames decide.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("set_breaker_repairing")
        cdef _Runtime rt = self._breaker_runtime(plugin_id, None)
        rt.breaker.repair(step, rt.enqueued(), recovered)
        rt.sync()

    def watch_breaker(self, plugin_id, callback, *, version=None):
        """Call ``callback(state)`` on every transition of the breaker of the plugin's
        ``version`` (default the stable one; None stops); it is kept when ``set_breaker``
        replaces that lane's breaker. Each lane has its own watcher, so a candidate's
        transitions never reach the stable lane's. It runs inside whatever made the
        transition - a dispatch, the worker - so it must only note the event (set an
        ``asyncio.Event``), never block or raise.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("watch_breaker")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"Expected `callback` to be callable or None, got {type(callback).__name__}"
            )
        cdef _Runtime rt = self._breaker_runtime(plugin_id, version)
        rt.breaker.on_change = callback

    def breaker_stats(self, plugin_id, *, version=None):
        """A snapshot of the plugin's breaker, or None if it has none (or is not loaded).

        Transitions due by the clock (OPEN -> HALF_OPEN, a half-open deadline) are taken
        first, so the state is the one the next frame would meet.
        """
        found = self._lane(plugin_id, version)
        if found is None or (<_Runtime>found).breaker is None:
            return None
        cdef _Runtime rt = <_Runtime>found
        stats = rt.breaker.stats(rt.enqueued())
        rt.sync()
        return stats

    cdef _Runtime _breaker_runtime(self, object plugin_id, object version):
        found = self._lane(plugin_id, version)
        if found is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime rt = <_Runtime>found
        if rt.breaker is None:
            raise BreakerNotSet(plugin_id, rt.entry.info)
        return rt

    # -- versions and routes -------------------------------------------------------

    async def load_version(self, plugin_id, version, handler=None, *, capacity=DEFAULT_CAPACITY,
                           sandbox=None, overrun_limit=None, on_overrun=None):
        """Load another version of a loaded plugin beside it, as its own lane: queue,
        worker, counters and breaker. It takes no frames until ``set_route`` names it.

        The lane ``load_plugin`` made is version ``"base"``; up to five versions in all.
        Options as for ``load_plugin``; the permissions are the plugin id's.
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("load_version")
        version = check_version(version)
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Expected `capacity` to be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"Expected `capacity` >= 1, got {capacity} - for plugin {plugin_id}")
        found = self._runtimes.get(plugin_id)
        if found is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime home = <_Runtime>found
        lanes = self._lanes.setdefault(plugin_id, {home.version: home})
        if version in lanes:
            raise VersionError(plugin_id, version, "Expected a new version name, got a loaded one",
                               "unload it first or pick another name")
        if len(lanes) >= MAX_VERSIONS:
            raise VersionError(plugin_id, version,
                               f"Expected at most {MAX_VERSIONS} loaded versions, got one more",
                               "unload_version() an old one first")
        policy = check_policy("sandbox", sandbox, guard_ok=True)
        limit, report = check_overrun(overrun_limit, on_overrun, plugin_id)
        call, batch = resolve_handler(handler)
        cdef _Runtime rt = _Runtime()
        rt.setup(plugin_id, home.entry, capacity, call, batch, home.loop)
        rt.version = version
        rt.guard = make_guard(
            policy if policy is not None else self._sandbox, plugin_id, home.entry.info
        )
        rt.overrun_limit = limit
        rt.on_overrun = report
        lanes[version] = rt
        self._start_worker(rt, None)

    async def unload_version(self, plugin_id, version, *, drain=True):
        """Stop a version no frames are routed to: drain (or drop) its queue, end its worker."""
        found = self._lane(plugin_id, version)
        if found is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime rt = <_Runtime>found
        cdef _Runtime home = <_Runtime>self._runtimes[plugin_id]
        cdef _Route route = home.route
        if rt is home or (route is not None and route.candidate is rt):
            raise VersionError(plugin_id, version,
                               "Expected a version no frames are routed to, got "
                               + ("the stable one" if rt is home else "the candidate"),
                               "set_route() to other versions first")
        if route is not None and (
                route.shadow is rt or (route.rules and any(lane is rt for _r, lane in route.rules))):
            raise VersionError(plugin_id, version,
                               "Expected a version no frames are routed to, got one "
                               "an A/B rule or the shadow names", "set_route() without it first")
        del self._lanes[plugin_id][version]
        return await self._close_lane(rt, drain)

    async def _close_lane(self, _Runtime rt, drain):
        while rt.swap is not None:
            await asyncio.wait([rt.swap])
        rt.closed = True
        for waiter in rt.waiters:
            if not waiter.done():
                waiter.set_result(False)
        rt.waiters.clear()
        if not drain:
            rt.drop_all()
        self._wake_worker(rt)
        await asyncio.shield(rt.worker)
        if rt.replies:
            abandon(rt.replies, rt.entry.info)
        return rt.stats()

    def set_route(self, plugin_id, *, stable, candidate=None, weight=0.0, salt=None, rules=(),
                  shadow=None):
        """Route the plugin's frames from the next one on: keys whose point is below
        ``weight`` percent go to ``candidate``, the rest to ``stable`` (see ``_routing``).
        ``rules`` (A/B ``MatchRule``s, tried first, in order) send what they match to
        the version each names. ``shadow`` names a version that is offered a copy of
        every frame routed elsewhere (mirroring; only for idempotent plugins): a full
        queue drops the copy, never holds up the frame; its results are its own.

        Raising the weight only moves keys to the candidate; keyless frames go on with
        the route's accumulator when stable and candidate stay. Nothing in flight moves:
        frames already queued drain on their lane. ``candidate=None`` ends the rollout
        (``stable`` takes everything and routing costs one compare again); naming
        another ``stable`` is a promotion or a rollback. ``salt`` picks the cohort
        (default: from the plugin id and candidate name, the same on every host).
        """
        if nyx_thread_id() != self._owner:
            self._refuse_thread("set_route")
        found = self._runtimes.get(plugin_id)
        if found is None:
            raise PluginNotLoaded(plugin_id, None, self._registry.get(plugin_id))
        cdef _Runtime home = <_Runtime>found
        cdef _Runtime new_stable = <_Runtime>self._lane(plugin_id, check_version(stable))
        cdef list pairs = self._rule_lanes(plugin_id, rules)
        mirror = None
        if shadow is not None:
            mirror = self._lane(plugin_id, check_version(shadow))
            if mirror is new_stable:
                raise VersionError(plugin_id, shadow,
                                   "Expected a shadow other than the stable version",
                                   "mirror to a candidate or another loaded version")
        cdef _Route route = None
        if candidate is not None:
            lane = self._lane(plugin_id, check_version(candidate))
            if lane is new_stable:
                raise VersionError(plugin_id, candidate,
                                   "Expected a candidate other than the stable version",
                                   "name two different versions")
            if salt is None:
                salt = route_salt(plugin_id, candidate)
            elif isinstance(salt, bool) or not isinstance(salt, int):
                raise TypeError(f"Expected `salt` to be an int, got {type(salt).__name__}")
            route = _Route(lane, weight, salt, pairs, mirror)
            if new_stable is home and home.route is not None and home.route.candidate is lane:
                route.acc = home.route.acc  # the keyless spread goes on (see _routing)
        else:
            weight_threshold(weight)
            if pairs or mirror is not None:
                route = _Route(None, 0.0, 0, pairs, mirror)
        if new_stable is not home:
            home.route = None
            self._runtimes[plugin_id] = new_stable
            self._last_rt = None
        new_stable.route = route

    cdef list _rule_lanes(self, object plugin_id, object rules):
        cdef list pairs = []
        for rule in rules:
            if not isinstance(rule, MatchRule):
                raise TypeError(f"Expected `rules` of MatchRule, got {type(rule).__name__}")
            pairs.append((rule, self._lane(plugin_id, rule.version)))
        return pairs

    def route_info(self, plugin_id):
        """The plugin's route now (None if it is not loaded); ``routed`` per version."""
        found = self._runtimes.get(plugin_id)
        if found is None:
            return None
        cdef _Runtime home = <_Runtime>found
        lanes = self._lanes.get(plugin_id, {home.version: home})
        cdef _Route route = home.route
        cdef _Runtime candidate = None if route is None else route.candidate
        return RouteInfo(
            plugin_id,
            home.version,
            None if candidate is None else candidate.version,
            0.0 if route is None else route.weight,
            0 if route is None else route.salt,
            {name: (<_Runtime>lane).routed for name, lane in sorted(lanes.items())},
            () if route is None else route.rule_info,
            None if route is None or route.shadow is None else route.shadow.version,
            {name: (<_Runtime>lane).shadowed for name, lane in sorted(lanes.items())},
            {name: (<_Runtime>lane).shadow_dropped for name, lane in sorted(lanes.items())},
        )

    def version_stats(self, plugin_id):
        """Each loaded version's counters, by version name (empty if not loaded)."""
        found = self._runtimes.get(plugin_id)
        if found is None:
            return {}
        lanes = self._lanes.get(plugin_id, {(<_Runtime>found).version: found})
        return {name: (<_Runtime>lane).stats() for name, lane in sorted(lanes.items())}

    cdef object _lane(self, object plugin_id, object version):
        """The stable lane (``version=None``) or the named one; None if not loaded."""
        home = self._runtimes.get(plugin_id)
        if home is None or version is None:
            return home
        lanes = self._lanes.get(plugin_id, {(<_Runtime>home).version: home})
        rt = lanes.get(version)
        if rt is None:
            raise VersionError(plugin_id, version,
                               "Expected a loaded version, got none by that name",
                               f"loaded: {', '.join(sorted(lanes))}")
        return rt

    def dispatch_stats(self):
        """A snapshot of the dispatcher's counters."""
        return DispatchStats(
            plugins_loaded=self._plugins_loaded,
            plugins_unloaded=self._plugins_unloaded,
            frames_dispatched=self._frames_dispatched,
            dispatch_errors=self._errors_total(),
            would_block=self._refused[S_WOULD_BLOCK],
            plugin_closed=self._refused[S_PLUGIN_CLOSED],
            plugin_not_registered=self._refused[S_NOT_REGISTERED],
            plugin_not_loaded=self._refused[S_NOT_LOADED],
            permission_denied=self._refused[S_PERMISSION_DENIED],
            sandbox_violation=self._refused[S_SANDBOX_VIOLATION],
            header_decode_error=self._refused[S_HEADER_DECODE_ERROR],
            frame_too_large=self._refused[S_FRAME_TOO_LARGE],
            unknown_frame_type=self._refused[S_UNKNOWN_FRAME_TYPE],
            circuit_open=self._refused[S_CIRCUIT_OPEN],
        )

    def loaded_plugins(self):
        """Ids of the loaded plugins, ascending."""
        return sorted(self._runtimes)

    def is_loaded(self, plugin_id):
        """True if the plugin is loaded (an unloading plugin is not)."""
        return plugin_id in self._runtimes

    def _pending_replies(self, plugin_id):
        """The requests of ``plugin_id`` waiting for replies (message -> reply target), the
        live dict its worker settles; ``None`` if it is not loaded. For a handler that
        answers requests itself, out of the worker's sight (an isolated plugin's host side):
        what it pops from this dict and settles, the worker leaves alone."""
        cdef _Runtime rt = self._runtimes.get(plugin_id)
        return rt.replies if rt is not None else None

    def __len__(self):
        return len(self._runtimes)

    def __repr__(self):
        return (
            f"<nyxplug.Dispatcher plugins={len(self._runtimes)} "
            f"frames_dispatched={self._frames_dispatched} dispatch_errors={self._errors_total()}>"
        )


# -- the sending methods' bodies (see nyx_install_sender) --------------------------

cdef object _dispatch_nowait_body(object obj, object frame_type, object header, object payload,
                                  object key):
    """Dispatcher.dispatch_nowait's body."""
    cdef Dispatcher self = <Dispatcher>obj
    if nyx_thread_id() != self._owner:
        self._refuse_thread("dispatch_nowait")
    cdef PyObject* found = NULL
    cdef int status = self._submit(frame_type, header, payload, key, &found)
    cdef _Runtime rt
    if status == S_OK:
        return
    if status == S_WOULD_BLOCK:
        rt = <_Runtime>found
        raise WouldBlock(rt.id, frame_type, rt.capacity, rt.entry.info)
    raise self._error(status)


cdef object _try_dispatch_body(object obj, object frame_type, object header, object payload,
                               object key):
    """Dispatcher.try_dispatch's body."""
    cdef Dispatcher self = <Dispatcher>obj
    if nyx_thread_id() != self._owner:
        self._refuse_thread("try_dispatch")
    cdef PyObject* found = NULL
    cdef int status = self._submit(frame_type, header, payload, key, &found)
    if status != S_OK:
        self._p_error = self._p_ft = None
    return _STATUS[status]


cdef object _dispatch_body(object obj, object frame_type, object header, object payload,
                           object key):
    """Dispatcher.dispatch's body."""
    cdef Dispatcher self = <Dispatcher>obj
    if nyx_thread_id() != self._owner:
        self._refuse_thread("dispatch")
    cdef int status
    cdef PyObject* found
    cdef PluginMessage msg = self._prepare(frame_type, header, payload, key, &status, &found)
    cdef _Runtime rt
    if status == S_OK:
        rt = <_Runtime>found
        if rt.has_room():
            self._enqueue(rt, msg)
            return _READY
        return self._wait_for_space(rt, msg)
    self._refused[status] += 1
    return Refused(self._error(status))


# Install the fast argument parser (see nyx_install_sender); which methods have it:
_FAST_SENDERS = (
    nyx_install_sender(Dispatcher.__dict__["dispatch_nowait"], 0, _dispatch_nowait_body,
                       sys.intern("key"), b""),
    nyx_install_sender(Dispatcher.__dict__["try_dispatch"], 1, _try_dispatch_body,
                       sys.intern("key"), b""),
    nyx_install_sender(Dispatcher.__dict__["dispatch"], 2, _dispatch_body, sys.intern("key"),
                       b""),
)
