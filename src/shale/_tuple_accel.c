/*
 * shale._tuple_accel: the optional compiled fast path of shale.tuple.
 *
 * pack(t, prefix) and unpack(data, prefix_len) produce exactly what the pure-Python
 * functions in shale/tuple.py produce, for the common types only. Whenever they meet
 * anything else (a rare type code, a subclass, a big integer, truncated or malformed
 * bytes, invalid UTF-8, an argument of the wrong kind, even a failed allocation) they
 * return NotImplemented instead of raising, and the Python wrapper runs the pure function
 * on the same arguments. Every error message therefore lives in one place, tuple.py, and
 * this file only has to be right about the inputs it accepts.
 *
 * Handled here: None, bytes, str, int in -(2**64 - 2) .. 2**64 - 2 (and, when decoding,
 * Java's 1c ff x 8), float (0x21), bool, uuid.UUID (once _init has been given its slots),
 * nested tuples and lists, all of their exact types only. Left to Python: SingleFloat
 * (0x20), Versionstamp (0x33), big integers (0x0b, 0x1d), subclasses, nesting deeper than
 * MAX_DEPTH, and every unknown code.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Deeper nesting goes to the pure code, which decodes with an explicit stack and raises
 * its own RecursionError when encoding; a bound here keeps the C stack small. */
#define MAX_DEPTH 64
#define INLINE_BYTES 256
#define INLINE_ITEMS 16
#define SIGN64 ((uint64_t)1 << 63)

typedef struct {
    /* uuid.UUID and what UUID.__init__ does, done without it (see
     * _choose_uuid_decoder in tuple.py); all NULL until _init, and then UUIDs fall back. */
    PyObject *uuid_type;
    PyObject *uuid_int;      /* the member descriptor UUID.__dict__["int"] */
    PyObject *uuid_is_safe;  /* the member descriptor UUID.__dict__["is_safe"] */
    PyObject *safe_unknown;  /* uuid.SafeUUID.unknown */
    PyObject *sixty_four;    /* the int 64, the shift between a UUID's two halves */
    PyObject *empty_tuple;
} accel_state;

static inline accel_state *
get_state(PyObject *module)
{
    return (accel_state *)PyModule_GetState(module);
}

static PyObject *
fallback(void)
{
    /* Whatever went wrong, the pure code will say it precisely (or succeed). */
    PyErr_Clear();
    Py_INCREF(Py_NotImplemented);
    return Py_NotImplemented;
}

static inline uint64_t
read_be(const unsigned char *p, int n)
{
    uint64_t value = 0;
    for (int i = 0; i < n; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

static inline int
byte_length(uint64_t value)
{
    int n = 0;
    while (value) {
        n++;
        value >>= 8;
    }
    return n;
}

/* ------------------------------------------------------------------------ encoding */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char inline_data[INLINE_BYTES];
} outbuf;

static int
reserve(outbuf *out, Py_ssize_t extra)
{
    if (out->cap - out->len >= extra) {
        return 0;
    }
    if (extra > PY_SSIZE_T_MAX - out->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = out->len + extra;
    Py_ssize_t cap = out->cap;
    while (cap < need) {
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    }
    char *grown;
    if (out->data == out->inline_data) {
        grown = PyMem_Malloc((size_t)cap);
        if (grown != NULL) {
            memcpy(grown, out->data, (size_t)out->len);
        }
    }
    else {
        grown = PyMem_Realloc(out->data, (size_t)cap);
    }
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = grown;
    out->cap = cap;
    return 0;
}

static inline void
put_byte(outbuf *out, unsigned char byte)
{
    out->data[out->len++] = (char)byte;
}

static inline void
put_be(outbuf *out, uint64_t value, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        put_byte(out, (unsigned char)(value >> (8 * i)));
    }
}

/* code, the bytes with each 00 written as 00 ff, then the 00 terminator. */
static int
put_escaped(outbuf *out, unsigned char code, const char *src, Py_ssize_t n)
{
    Py_ssize_t zeros = 0;
    const char *p = src;
    const char *stop = src + n;
    while (p < stop && (p = memchr(p, 0, (size_t)(stop - p))) != NULL) {
        zeros++;
        p++;
    }
    if (n > PY_SSIZE_T_MAX - 2 - zeros || reserve(out, n + zeros + 2) < 0) {
        return -1;
    }
    put_byte(out, code);
    if (zeros == 0) {
        memcpy(out->data + out->len, src, (size_t)n);
        out->len += n;
    }
    else {
        p = src;
        while (p < stop) {
            const char *zero = memchr(p, 0, (size_t)(stop - p));
            Py_ssize_t chunk = (zero == NULL ? stop : zero) - p;
            memcpy(out->data + out->len, p, (size_t)chunk);
            out->len += chunk;
            if (zero == NULL) {
                break;
            }
            put_byte(out, 0x00);
            put_byte(out, 0xFF);
            p = zero + 1;
        }
    }
    put_byte(out, 0x00);
    return 0;
}

static int
put_positive(outbuf *out, uint64_t value)
{
    int n = byte_length(value);
    if (reserve(out, 1 + n) < 0) {
        return -1;
    }
    put_byte(out, (unsigned char)(0x14 + n));
    put_be(out, value, n);
    return 0;
}

/* -magnitude: code 0x14 - n and the n bytes of value + 2**(8n) - 1, the one's complement. */
static int
put_negative(outbuf *out, uint64_t magnitude)
{
    int n = byte_length(magnitude);
    if (reserve(out, 1 + n) < 0) {
        return -1;
    }
    put_byte(out, (unsigned char)(0x14 - n));
    put_be(out, ~magnitude, n);
    return 0;
}

static int
put_int(outbuf *out, PyObject *item)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow == 0) {
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (value > 0) {
            return put_positive(out, (uint64_t)value);
        }
        if (value == 0) {
            if (reserve(out, 1) < 0) {
                return -1;
            }
            put_byte(out, 0x14);
            return 0;
        }
        return put_negative(out, (uint64_t)(-(value + 1)) + 1);
    }
    /* Beyond a long long: magnitudes up to 2**64 - 2 still take the 8-byte codes; from
     * 2**64 - 1 on, Python's rule switches to 0x1d / 0x0b, left to the pure code. */
    uint64_t magnitude;
    if (overflow > 0) {
        magnitude = PyLong_AsUnsignedLongLong(item);
    }
    else {
        PyObject *negated = PyNumber_Negative(item);
        if (negated == NULL) {
            return -1;
        }
        magnitude = PyLong_AsUnsignedLongLong(negated);
        Py_DECREF(negated);
    }
    if (magnitude == (uint64_t)-1) {
        return -1; /* an error, or exactly 2**64 - 1 */
    }
    return overflow > 0 ? put_positive(out, magnitude) : put_negative(out, magnitude);
}

static int
put_double(outbuf *out, double value)
{
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    /* Negative floats flip every bit, others only the sign bit: bytes sort like values. */
    bits = (bits & SIGN64) ? ~bits : (bits | SIGN64);
    if (reserve(out, 9) < 0) {
        return -1;
    }
    put_byte(out, 0x21);
    put_be(out, bits, 8);
    return 0;
}

static int
put_uuid(accel_state *state, outbuf *out, PyObject *item)
{
    PyObject *number = Py_TYPE(state->uuid_int)->tp_descr_get(
        state->uuid_int, item, state->uuid_type);
    if (number == NULL) {
        return -1;
    }
    if (!PyLong_Check(number)) {
        Py_DECREF(number);
        return -1;
    }
    /* Public API only (the private byte-array helpers changed signature in 3.13): the low
     * 64 bits by mask, the high ones by a shift that must leave a non-negative uint64,
     * so a negative or too large int falls back and fails in UUID.bytes as usual. */
    uint64_t low = PyLong_AsUnsignedLongLongMask(number);
    if (low == (uint64_t)-1 && PyErr_Occurred()) {
        Py_DECREF(number);
        return -1;
    }
    PyObject *shifted = PyNumber_Rshift(number, state->sixty_four);
    Py_DECREF(number);
    if (shifted == NULL) {
        return -1;
    }
    uint64_t high = PyLong_AsUnsignedLongLong(shifted);
    Py_DECREF(shifted);
    if (high == (uint64_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (reserve(out, 17) < 0) {
        return -1;
    }
    put_byte(out, 0x30);
    put_be(out, high, 8);
    put_be(out, low, 8);
    return 0;
}

static int put_items(accel_state *state, outbuf *out, PyObject *seq, int depth);

static int
put_item(accel_state *state, outbuf *out, PyObject *item, int depth)
{
    PyTypeObject *type = Py_TYPE(item);
    if (type == &PyUnicode_Type) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(item) < 0) { /* a no-op, and deprecated, from 3.12 on */
            return -1;
        }
#endif
        if (PyUnicode_IS_ASCII(item)) {
            return put_escaped(out, 0x02, (const char *)PyUnicode_DATA(item),
                               PyUnicode_GET_LENGTH(item));
        }
        /* A temporary bytes rather than PyUnicode_AsUTF8AndSize, which would keep a
         * UTF-8 copy inside every non-ASCII str ever packed. Lone surrogates fail here. */
        PyObject *encoded = PyUnicode_AsUTF8String(item);
        if (encoded == NULL) {
            return -1;
        }
        int result = put_escaped(out, 0x02, PyBytes_AS_STRING(encoded),
                                 PyBytes_GET_SIZE(encoded));
        Py_DECREF(encoded);
        return result;
    }
    if (type == &PyLong_Type) {
        return put_int(out, item);
    }
    if (type == &PyBytes_Type) {
        return put_escaped(out, 0x01, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item));
    }
    if (item == Py_None) {
        if (reserve(out, 2) < 0) {
            return -1;
        }
        put_byte(out, 0x00);
        if (depth > 0) {
            put_byte(out, 0xFF); /* inside a nested tuple a bare 00 would end it */
        }
        return 0;
    }
    if (type == &PyFloat_Type) {
        return put_double(out, PyFloat_AS_DOUBLE(item));
    }
    if (type == &PyBool_Type) {
        if (reserve(out, 1) < 0) {
            return -1;
        }
        put_byte(out, item == Py_True ? 0x27 : 0x26);
        return 0;
    }
    if (type == &PyTuple_Type || type == &PyList_Type) {
        if (depth >= MAX_DEPTH || reserve(out, 1) < 0) {
            return -1;
        }
        put_byte(out, 0x05);
        if (put_items(state, out, item, depth + 1) < 0 || reserve(out, 1) < 0) {
            return -1;
        }
        put_byte(out, 0x00);
        return 0;
    }
    if (state->uuid_type != NULL && (PyObject *)type == state->uuid_type) {
        return put_uuid(state, out, item);
    }
    return -1;
}

static int
put_items(accel_state *state, outbuf *out, PyObject *seq, int depth)
{
    int is_list = PyList_CheckExact(seq);
    /* The size is read again on every turn and each item held while it is encoded: an
     * allocation may run the garbage collector, and a finalizer may mutate a list. */
    for (Py_ssize_t i = 0; i < (is_list ? PyList_GET_SIZE(seq) : PyTuple_GET_SIZE(seq)); i++) {
        PyObject *item = is_list ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i);
        Py_INCREF(item);
        int result = put_item(state, out, item, depth);
        Py_DECREF(item);
        if (result < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
accel_pack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack() takes exactly 2 arguments (t, prefix)");
        return NULL;
    }
    PyObject *t = args[0];
    PyObject *prefix = args[1];
    if (!(PyTuple_CheckExact(t) || PyList_CheckExact(t)) || !PyBytes_CheckExact(prefix)) {
        return fallback();
    }
    outbuf out;
    out.data = out.inline_data;
    out.len = 0;
    out.cap = INLINE_BYTES;
    PyObject *result = NULL;
    Py_ssize_t prefix_len = PyBytes_GET_SIZE(prefix);
    if (reserve(&out, prefix_len) == 0) {
        memcpy(out.data, PyBytes_AS_STRING(prefix), (size_t)prefix_len);
        out.len = prefix_len;
        if (put_items(get_state(module), &out, t, 0) == 0) {
            result = PyBytes_FromStringAndSize(out.data, out.len);
        }
    }
    if (out.data != out.inline_data) {
        PyMem_Free(out.data);
    }
    return result != NULL ? result : fallback();
}

/* ------------------------------------------------------------------------ decoding */

typedef struct {
    PyObject **items;
    Py_ssize_t len;
    Py_ssize_t cap;
    PyObject *inline_items[INLINE_ITEMS];
} itemvec;

static void
items_clear(itemvec *vec)
{
    for (Py_ssize_t i = 0; i < vec->len; i++) {
        Py_DECREF(vec->items[i]);
    }
    if (vec->items != vec->inline_items) {
        PyMem_Free(vec->items);
    }
}

/* Steals value, even on failure. */
static int
items_push(itemvec *vec, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    if (vec->len == vec->cap) {
        if (vec->cap > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(PyObject *)) {
            Py_DECREF(value);
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t cap = vec->cap * 2;
        PyObject **grown;
        if (vec->items == vec->inline_items) {
            grown = PyMem_Malloc((size_t)cap * sizeof(PyObject *));
            if (grown != NULL) {
                memcpy(grown, vec->items, (size_t)vec->len * sizeof(PyObject *));
            }
        }
        else {
            grown = PyMem_Realloc(vec->items, (size_t)cap * sizeof(PyObject *));
        }
        if (grown == NULL) {
            Py_DECREF(value);
            PyErr_NoMemory();
            return -1;
        }
        vec->items = grown;
        vec->cap = cap;
    }
    vec->items[vec->len++] = value;
    return 0;
}

static PyObject *
items_to_tuple(accel_state *state, itemvec *vec)
{
    if (vec->len == 0) {
        items_clear(vec);
        Py_INCREF(state->empty_tuple);
        return state->empty_tuple;
    }
    PyObject *tuple = PyTuple_New(vec->len);
    if (tuple == NULL) {
        items_clear(vec);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < vec->len; i++) {
        PyTuple_SET_ITEM(tuple, i, vec->items[i]);
    }
    vec->len = 0;
    items_clear(vec);
    return tuple;
}

/* The bytes or str at data[pos] (its type code), ending at the first 00 not followed by ff;
 * *pos moves past the terminator. */
static PyObject *
take_escaped(const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end, int is_str)
{
    Py_ssize_t start = *pos + 1;
    Py_ssize_t scan = start;
    Py_ssize_t stop;
    Py_ssize_t escapes = 0;
    for (;;) {
        const unsigned char *zero = memchr(data + scan, 0, (size_t)(end - scan));
        if (zero == NULL) {
            return NULL; /* unterminated */
        }
        stop = zero - data;
        if (stop + 1 < end && data[stop + 1] == 0xFF) {
            escapes++;
            scan = stop + 2;
            continue;
        }
        break;
    }
    *pos = stop + 1;
    Py_ssize_t raw = stop - start;
    if (escapes == 0) {
        if (is_str) {
            return PyUnicode_DecodeUTF8((const char *)data + start, raw, NULL);
        }
        return PyBytes_FromStringAndSize((const char *)data + start, raw);
    }
    Py_ssize_t size = raw - escapes;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, size);
    if (bytes == NULL) {
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(bytes);
    Py_ssize_t written = 0;
    for (Py_ssize_t i = start; i < stop; i++) {
        dst[written++] = (char)data[i];
        if (data[i] == 0) {
            i++; /* the ff of the escape: within the string, as every 00 before stop has one */
        }
    }
    if (written != size) { /* cannot happen; kept so a mistake falls back, not corrupts */
        Py_DECREF(bytes);
        return NULL;
    }
    if (!is_str) {
        return bytes;
    }
    PyObject *text = PyUnicode_DecodeUTF8(dst, size, NULL);
    Py_DECREF(bytes);
    return text;
}

static PyObject *
take_uuid(accel_state *state, const unsigned char *p)
{
    uint64_t high = read_be(p, 8);
    uint64_t low = read_be(p + 8, 8);
    PyObject *number;
    if (high == 0) {
        number = PyLong_FromUnsignedLongLong(low);
    }
    else {
        PyObject *top = PyLong_FromUnsignedLongLong(high);
        if (top == NULL) {
            return NULL;
        }
        PyObject *shifted = PyNumber_Lshift(top, state->sixty_four);
        Py_DECREF(top);
        if (shifted == NULL) {
            return NULL;
        }
        PyObject *bottom = PyLong_FromUnsignedLongLong(low);
        if (bottom == NULL) {
            Py_DECREF(shifted);
            return NULL;
        }
        number = PyNumber_Or(shifted, bottom);
        Py_DECREF(shifted);
        Py_DECREF(bottom);
    }
    if (number == NULL) {
        return NULL;
    }
    /* object.__new__(UUID), then the two slots UUID.__init__ fills. */
    PyObject *made = PyBaseObject_Type.tp_new(
        (PyTypeObject *)state->uuid_type, state->empty_tuple, NULL);
    if (made == NULL) {
        Py_DECREF(number);
        return NULL;
    }
    int failed = Py_TYPE(state->uuid_int)->tp_descr_set(state->uuid_int, made, number) < 0 ||
                 Py_TYPE(state->uuid_is_safe)->tp_descr_set(
                     state->uuid_is_safe, made, state->safe_unknown) < 0;
    Py_DECREF(number);
    if (failed) {
        Py_DECREF(made);
        return NULL;
    }
    return made;
}

/* The elements from data[*pos]: to the end at depth 0, else to the nested tuple's 00. */
static PyObject *
take_tuple(accel_state *state, const unsigned char *data, Py_ssize_t *pos, Py_ssize_t end,
           int depth)
{
    itemvec vec;
    vec.items = vec.inline_items;
    vec.len = 0;
    vec.cap = INLINE_ITEMS;
    Py_ssize_t at = *pos;
    for (;;) {
        if (at >= end) {
            if (depth > 0) {
                goto fail; /* unterminated nested tuple */
            }
            break;
        }
        unsigned char code = data[at];
        PyObject *value;
        if (code == 0x02 || code == 0x01) {
            value = take_escaped(data, &at, end, code == 0x02);
        }
        else if (code >= 0x0C && code <= 0x1C) {
            int n = code >= 0x14 ? code - 0x14 : 0x14 - code;
            if (n > end - at - 1) {
                goto fail; /* truncated */
            }
            uint64_t raw = read_be(data + at + 1, n);
            at += 1 + n;
            if (code >= 0x14) {
                value = PyLong_FromUnsignedLongLong(raw); /* 1c ff x 8 is Java's 2**64 - 1 */
            }
            else {
                /* value = raw - (2**(8n) - 1) = -(~raw within n bytes) */
                uint64_t magnitude = n == 8 ? ~raw : (~raw & (((uint64_t)1 << (8 * n)) - 1));
                if (magnitude <= (uint64_t)INT64_MAX) {
                    value = PyLong_FromLongLong(-(long long)magnitude);
                }
                else {
                    PyObject *positive = PyLong_FromUnsignedLongLong(magnitude);
                    if (positive == NULL) {
                        goto fail;
                    }
                    value = PyNumber_Negative(positive);
                    Py_DECREF(positive);
                }
            }
        }
        else if (code == 0x00) {
            if (depth > 0) {
                if (at + 1 < end && data[at + 1] == 0xFF) {
                    at += 2;
                }
                else {
                    at += 1;
                    break; /* the nested tuple's terminator */
                }
            }
            else {
                at += 1;
            }
            Py_INCREF(Py_None);
            value = Py_None;
        }
        else if (code == 0x05) {
            if (depth >= MAX_DEPTH) {
                goto fail;
            }
            at += 1;
            value = take_tuple(state, data, &at, end, depth + 1);
        }
        else if (code == 0x21) {
            if (end - at < 9) {
                goto fail;
            }
            uint64_t bits = read_be(data + at + 1, 8);
            bits = (bits & SIGN64) ? (bits ^ SIGN64) : ~bits;
            double number;
            memcpy(&number, &bits, sizeof number);
            value = PyFloat_FromDouble(number);
            at += 9;
        }
        else if (code == 0x26 || code == 0x27) {
            value = code == 0x27 ? Py_True : Py_False;
            Py_INCREF(value);
            at += 1;
        }
        else if (code == 0x30 && state->uuid_type != NULL) {
            if (end - at < 17) {
                goto fail;
            }
            value = take_uuid(state, data + at + 1);
            at += 17;
        }
        else {
            goto fail; /* a rare or unknown code: the pure code decodes it or names it */
        }
        if (items_push(&vec, value) < 0) {
            goto fail;
        }
    }
    *pos = at;
    return items_to_tuple(state, &vec);
fail:
    items_clear(&vec);
    return NULL;
}

static PyObject *
accel_unpack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "unpack() takes exactly 2 arguments (data, prefix_len)");
        return NULL;
    }
    PyObject *data = args[0];
    if (!PyBytes_CheckExact(data) || !PyLong_CheckExact(args[1])) {
        return fallback();
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyBytes_GET_SIZE(data);
    if (pos < 0 || pos > end) {
        return fallback();
    }
    PyObject *result = take_tuple(get_state(module), (const unsigned char *)PyBytes_AS_STRING(data),
                                  &pos, end, 0);
    return result != NULL ? result : fallback();
}

/* ------------------------------------------------------------------------ module */

static PyObject *
accel_init(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_init() takes 4 arguments (uuid_type, int_slot, is_safe_slot, unknown)");
        return NULL;
    }
    if (!PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_init(): uuid_type must be a type");
        return NULL;
    }
    for (int i = 1; i <= 2; i++) {
        PyTypeObject *slot = Py_TYPE(args[i]);
        if (slot->tp_descr_get == NULL || slot->tp_descr_set == NULL) {
            PyErr_SetString(PyExc_TypeError, "_init(): the UUID slots must be data descriptors");
            return NULL;
        }
    }
    accel_state *state = get_state(module);
    Py_INCREF(args[0]);
    Py_XSETREF(state->uuid_type, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(state->uuid_int, args[1]);
    Py_INCREF(args[2]);
    Py_XSETREF(state->uuid_is_safe, args[2]);
    Py_INCREF(args[3]);
    Py_XSETREF(state->safe_unknown, args[3]);
    Py_RETURN_NONE;
}

static PyMethodDef accel_methods[] = {
    {"pack", (PyCFunction)(void (*)(void))accel_pack, METH_FASTCALL,
     "pack(t, prefix) -> bytes, or NotImplemented: then use the pure shale.tuple.pack."},
    {"unpack", (PyCFunction)(void (*)(void))accel_unpack, METH_FASTCALL,
     "unpack(data, prefix_len) -> tuple, or NotImplemented: then use the pure "
     "shale.tuple.unpack."},
    {"_init", (PyCFunction)(void (*)(void))accel_init, METH_FASTCALL,
     "_init(uuid_type, int_slot, is_safe_slot, unknown): enable UUIDs."},
    {NULL, NULL, 0, NULL},
};

static int
accel_exec(PyObject *module)
{
    accel_state *state = get_state(module);
    state->sixty_four = PyLong_FromLong(64);
    if (state->sixty_four == NULL) {
        return -1;
    }
    state->empty_tuple = PyTuple_New(0);
    if (state->empty_tuple == NULL) {
        return -1;
    }
    return 0;
}

static int
accel_traverse(PyObject *module, visitproc visit, void *arg)
{
    accel_state *state = get_state(module);
    Py_VISIT(state->uuid_type);
    Py_VISIT(state->uuid_int);
    Py_VISIT(state->uuid_is_safe);
    Py_VISIT(state->safe_unknown);
    return 0;
}

static int
accel_clear(PyObject *module)
{
    accel_state *state = get_state(module);
    Py_CLEAR(state->uuid_type);
    Py_CLEAR(state->uuid_int);
    Py_CLEAR(state->uuid_is_safe);
    Py_CLEAR(state->safe_unknown);
    Py_CLEAR(state->sixty_four);
    Py_CLEAR(state->empty_tuple);
    return 0;
}

static void
accel_free(void *module)
{
    accel_clear((PyObject *)module);
}

static PyModuleDef_Slot accel_slots[] = {
    {Py_mod_exec, accel_exec},
    {0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shale._tuple_accel",
    .m_doc = "Compiled fast path of shale.tuple; returns NotImplemented where the pure code "
             "must take over.",
    .m_size = sizeof(accel_state),
    .m_methods = accel_methods,
    .m_slots = accel_slots,
    .m_traverse = accel_traverse,
    .m_clear = accel_clear,
    .m_free = accel_free,
};

PyMODINIT_FUNC
PyInit__tuple_accel(void)
{
    return PyModuleDef_Init(&accel_module);
}
