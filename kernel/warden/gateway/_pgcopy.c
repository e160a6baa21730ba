/*
 * warden.gateway._pgcopy: PostgreSQL's binary COPY decoded straight into Arrow buffers.
 *
 * One libpq connection per CopyConnection. The gateway uses it for plain reads whose
 * columns all have one of the types below; anything else goes through ADBC, which
 * this module matches exactly (types, field metadata and values, including the
 * wrap-around of infinite dates and timestamps), so the two paths are interchangeable.
 *
 *   CopyConnection(conninfo)
 *     .execute(sql)            run statements, results discarded (session set-up)
 *     .describe(sql)           BEGIN, then Parse + Describe of one statement (nothing
 *                              runs): [(name, type oid, type modifier), ...]. The
 *                              transaction ends when the COPY does (or the caller
 *                              runs ROLLBACK): the parse's locks keep the types.
 *     .start(sql)              COPY (sql) TO STDOUT (FORMAT BINARY)
 *     .read(kinds, max_rows, max_bytes)
 *                              the next batch: (rows, [(validity | None, nulls,
 *                              offsets | None, values), ...]), or None at the end.
 *                              Buffers are zero-copy Arrow buffers (buffer protocol).
 *     .cancel()                ask the server to cancel the running statement (any thread)
 *     .close()                 (an incomplete COPY is ended by closing the connection)
 *     .ok                      the connection is usable
 *
 * Errors raise PgError(message) with .sqlstate: the server's full error text ("ERROR:
 * ..." with its DETAIL lines), or libpq's for a lost connection. The GIL is released
 * while libpq waits and while rows are decoded.
 *
 * Kinds (one per column): 0 bool, 1 int16, 2 int32, 3 int64, 4 float32, 5 float64,
 * 6 variable-length bytes (text, varchar, bpchar, name, bytea: int32 offsets), 7 date
 * (days since 1970), 8 timestamp (microseconds since 1970), 9 numeric (as text, spelled
 * like PostgreSQL's numeric_out except NaN and infinities: nan, inf, -inf, as ADBC does).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIND_BOOL 0
#define KIND_INT16 1
#define KIND_INT32 2
#define KIND_INT64 3
#define KIND_FLOAT32 4
#define KIND_FLOAT64 5
#define KIND_BYTES 6
#define KIND_DATE 7
#define KIND_TIMESTAMP 8
#define KIND_NUMERIC 9
#define KIND_COUNT 10

/* PostgreSQL's epoch (2000-01-01) in Unix days and microseconds. */
#define PG_EPOCH_DAYS 10957
#define PG_EPOCH_US INT64_C(946684800000000)

static const int kFixedWidth[KIND_COUNT] = {1, 2, 4, 8, 4, 8, -1, 4, 8, -1};

/* Kinds whose values are variable-length (int32 offsets + bytes). */
static inline int kind_is_var(int kind) { return kind == KIND_BYTES || kind == KIND_NUMERIC; }
static const char kSignature[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};

static PyObject *PgError;

/* ------------------------------------------------------------------ owned buffers */

/* A malloc'd block handed to Python: exposes the buffer protocol, frees on dealloc. */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
} Block;

static void Block_dealloc(Block *self) {
    free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Block_getbuffer(Block *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data ? self->data : (char *)"", self->size, 1, flags);
}

static PyBufferProcs Block_as_buffer = {(getbufferproc)Block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "warden.gateway._pgcopy.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)Block_dealloc,
    .tp_as_buffer = &Block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A buffer decoded from COPY (read-only, zero-copy into Arrow).",
};

/* Hand `*data` (size bytes) to a new Block; `*data` is NULL afterwards either way. */
static PyObject *block_take(char **data, Py_ssize_t size) {
    Block *b = PyObject_New(Block, &BlockType);
    if (b == NULL) {
        free(*data);
        *data = NULL;
        return NULL;
    }
    b->data = *data;
    b->size = size;
    *data = NULL;
    return (PyObject *)b;
}

/* ------------------------------------------------------------------ column builders */

typedef struct {
    char *buf;
    size_t len, cap;
} Bytes;

static int bytes_reserve(Bytes *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = realloc(b->buf, cap);
    if (p == NULL)
        return -1;
    b->buf = p;
    b->cap = cap;
    return 0;
}

static inline int bytes_append(Bytes *b, const void *data, size_t n) {
    if (bytes_reserve(b, n) < 0)
        return -1;
    memcpy(b->buf + b->len, data, n);
    b->len += n;
    return 0;
}

/* Bit `row` of an Arrow bitmap (validity, booleans): a zeroed byte starts every 8 rows. */
static inline int bit_append(Bytes *b, int64_t row, int set) {
    if ((row & 7) == 0) {
        if (bytes_reserve(b, 1) < 0)
            return -1;
        b->buf[b->len++] = 0;
    }
    if (set)
        b->buf[b->len - 1] |= (char)(1u << (row & 7));
    return 0;
}

typedef struct {
    int kind;
    Bytes validity; /* one bit per row, 1 = present */
    Bytes offsets;  /* KIND_BYTES: int32 per row + 1 */
    Bytes values;
    int64_t nulls;
} Column;

static void column_free(Column *c) {
    free(c->validity.buf);
    free(c->offsets.buf);
    free(c->values.buf);
    memset(c, 0, sizeof(*c));
}

/* ------------------------------------------------------------------ the connection */

typedef struct {
    PyObject_HEAD
    PGconn *conn;
    PGcancel *cancel;
    pthread_mutex_t cancel_lock; /* cancel() may run in another thread than close() */
    int busy;                    /* a method is running (maybe without the GIL) */
    int close_pending;           /* close() came while busy: the running method closes */
    int failed;                  /* a read failed: the stream's state is unknown */
    int copying;                 /* COPY OUT started and not yet ended */
    int header_done;             /* the stream's signature and header were read */
    int ended;                   /* the trailer (-1 field count) was seen */
} CopyConnection;

/* Raise PgError from a result (or the connection when res is NULL). */
static PyObject *raise_pg(CopyConnection *self, const PGresult *res) {
    const char *message = res ? PQresultErrorMessage(res) : NULL;
    if (message == NULL || message[0] == '\0')
        message = self->conn ? PQerrorMessage(self->conn) : "the connection is closed";
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    PyObject *text = PyUnicode_DecodeUTF8(message, (Py_ssize_t)strlen(message), "replace");
    if (text == NULL)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(PgError, text);
    Py_DECREF(text);
    if (exc == NULL)
        return NULL;
    PyObject *sqlstate = state ? PyUnicode_FromString(state) : Py_NewRef(Py_None);
    if (sqlstate == NULL || PyObject_SetAttrString(exc, "sqlstate", sqlstate) < 0) {
        Py_XDECREF(sqlstate);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(sqlstate);
    PyErr_SetObject(PgError, exc);
    Py_DECREF(exc);
    return NULL;
}

static int check_open(CopyConnection *self) {
    if (self->conn == NULL) {
        PyErr_SetString(PgError, "the connection is closed");
        return -1;
    }
    return 0;
}

static void close_conn(CopyConnection *self);

/* Every method that uses the connection runs between enter() and leave(), with the
   GIL held at both: a second caller is refused, and a close() that comes meanwhile
   (from another thread: a reader that outlived its consumer) is left to leave(), so
   libpq's connection is never freed under a running call. */
static int enter(CopyConnection *self) {
    if (check_open(self) < 0)
        return -1;
    if (self->busy) {
        PyErr_SetString(PgError, "the connection is in use by another thread");
        return -1;
    }
    if (self->failed) {
        PyErr_SetString(PgError, "an earlier read on this connection failed; close it");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static PyObject *leave(CopyConnection *self, PyObject *result) {
    self->busy = 0;
    if (self->close_pending) {
        self->close_pending = 0;
        close_conn(self);
    }
    return result;
}

/* The UTF-8 text of a statement for an idle connection, or NULL with an exception
   (not a str, a NUL inside: libpq would read less than the caller analysed). */
static const char *sql_text(CopyConnection *self, PyObject *arg) {
    if (self->copying) {
        PyErr_SetString(PgError, "a COPY is in progress on this connection");
        return NULL;
    }
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the SQL text must be a str");
        return NULL;
    }
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &size);
    if (text != NULL && strlen(text) != (size_t)size) {
        PyErr_SetString(PyExc_ValueError, "the SQL text holds a NUL character");
        return NULL;
    }
    return text;
}

static int CopyConnection_init(CopyConnection *self, PyObject *args, PyObject *kwds) {
    const char *conninfo;
    static char *kwlist[] = {"conninfo", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s", kwlist, &conninfo))
        return -1;
    if (self->conn != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already initialised");
        return -1;
    }
    /* Text arrives in the client encoding: UTF-8 from the start (a SET would be undone
       by the RESET ALL of the session set-up). */
    const char *const keys[] = {"dbname", "client_encoding", NULL};
    const char *const values[] = {conninfo, "UTF8", NULL};
    PGconn *conn;
    Py_BEGIN_ALLOW_THREADS
    conn = PQconnectdbParams(keys, values, 1);
    Py_END_ALLOW_THREADS
    self->conn = conn;
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        raise_pg(self, NULL);
        if (conn != NULL)
            PQfinish(conn);
        self->conn = NULL;
        return -1;
    }
    self->cancel = PQgetCancel(conn);
    return 0;
}

static PyObject *CopyConnection_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    CopyConnection *self = (CopyConnection *)type->tp_alloc(type, 0);
    if (self != NULL)
        pthread_mutex_init(&self->cancel_lock, NULL);
    return (PyObject *)self;
}

/* With the GIL held: detach the connection first (nobody can reach it after this),
   then free it without the GIL. */
static void close_conn(CopyConnection *self) {
    PGconn *conn = self->conn;
    self->conn = NULL;
    self->copying = 0;
    PGcancel *cancel;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->cancel_lock); /* a cancel() in flight finishes first */
    cancel = self->cancel;
    self->cancel = NULL;
    pthread_mutex_unlock(&self->cancel_lock);
    if (cancel != NULL)
        PQfreeCancel(cancel);
    if (conn != NULL)
        PQfinish(conn);
    Py_END_ALLOW_THREADS
}

static void CopyConnection_dealloc(CopyConnection *self) {
    close_conn(self);
    pthread_mutex_destroy(&self->cancel_lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Collect every pending result; the first failure (if any) is returned, the rest cleared. */
static PGresult *drain_results(PGconn *conn) {
    PGresult *failure = NULL, *res;
    while ((res = PQgetResult(conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (failure == NULL && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY)
            failure = res;
        else
            PQclear(res);
    }
    return failure;
}

/* Run one utility statement (BEGIN, COMMIT, ROLLBACK) without the GIL; the failed
   result, or NULL when it succeeded. A NULL result from libpq comes back as a
   PGRES_FATAL_ERROR result of the connection's message. */
static PGresult *run_utility(PGconn *conn, const char *sql) {
    PGresult *res = PQexec(conn, sql);
    if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        return NULL;
    }
    return res != NULL ? res : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

/* After a failure inside the statement's transaction: roll it back, so the
   connection is idle again (if that fails too, `ok` says so and it is closed). */
static void rollback_quietly(PGconn *conn) {
    if (PQtransactionStatus(conn) != PQTRANS_IDLE && PQtransactionStatus(conn) != PQTRANS_UNKNOWN)
        PQclear(run_utility(conn, "ROLLBACK"));
}

static PyObject *execute_impl(CopyConnection *self, PyObject *arg) {
    const char *sql = sql_text(self, arg);
    if (sql == NULL)
        return NULL;
    int sent;
    PGresult *failure = NULL;
    Py_BEGIN_ALLOW_THREADS
    sent = PQsendQuery(self->conn, sql);
    if (sent)
        failure = drain_results(self->conn);
    Py_END_ALLOW_THREADS
    if (!sent)
        return raise_pg(self, NULL);
    if (failure != NULL) {
        raise_pg(self, failure);
        PQclear(failure);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *describe_impl(CopyConnection *self, PyObject *arg) {
    const char *sql = sql_text(self, arg);
    if (sql == NULL)
        return NULL;
    /* The description and the COPY run in one transaction: the locks the parse takes
       hold until the COPY has ended, so no ALTER ... TYPE can change a column's type
       between the two (the decoder would read the new bytes as the old type). The
       transaction ends with the COPY (read()), or the caller ends it. */
    PGresult *failed, *prepared = NULL, *described = NULL;
    Py_BEGIN_ALLOW_THREADS
    failed = run_utility(self->conn, "BEGIN");
    if (failed == NULL) {
        prepared = PQprepare(self->conn, "", sql, 0, NULL);
        if (prepared != NULL && PQresultStatus(prepared) == PGRES_COMMAND_OK)
            described = PQdescribePrepared(self->conn, "");
    }
    Py_END_ALLOW_THREADS
    if (failed != NULL) {
        raise_pg(self, failed);
        PQclear(failed);
        return NULL;
    }
    if (prepared == NULL || PQresultStatus(prepared) != PGRES_COMMAND_OK) {
        raise_pg(self, prepared);
        PQclear(prepared);
        Py_BEGIN_ALLOW_THREADS
        rollback_quietly(self->conn);
        Py_END_ALLOW_THREADS
        return NULL;
    }
    PQclear(prepared);
    if (described == NULL || PQresultStatus(described) != PGRES_COMMAND_OK) {
        raise_pg(self, described);
        PQclear(described);
        Py_BEGIN_ALLOW_THREADS
        rollback_quietly(self->conn);
        Py_END_ALLOW_THREADS
        return NULL;
    }
    int n = PQnfields(described);
    PyObject *out = PyList_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        const char *name = PQfname(described, i);
        PyObject *item = Py_BuildValue("(s#Ii)", name, (Py_ssize_t)strlen(name), (unsigned int)PQftype(described, i), PQfmod(described, i));
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, item);
    }
    PQclear(described);
    return out;
}

static PyObject *start_impl(CopyConnection *self, PyObject *arg) {
    if (sql_text(self, arg) == NULL)
        return NULL;
    PyObject *command = PyUnicode_FromFormat("COPY (%U\n) TO STDOUT (FORMAT BINARY)", arg);
    if (command == NULL)
        return NULL;
    const char *sql = PyUnicode_AsUTF8(command);
    if (sql == NULL) {
        Py_DECREF(command);
        return NULL;
    }
    PGresult *res;
    Py_BEGIN_ALLOW_THREADS
    res = PQexec(self->conn, sql);
    Py_END_ALLOW_THREADS
    Py_DECREF(command);
    if (res == NULL || PQresultStatus(res) != PGRES_COPY_OUT) {
        raise_pg(self, res);
        PQclear(res);
        Py_BEGIN_ALLOW_THREADS
        if (res != NULL)
            PQclear(drain_results(self->conn));
        rollback_quietly(self->conn);
        Py_END_ALLOW_THREADS
        return NULL;
    }
    PQclear(res);
    self->copying = 1;
    self->header_done = 0;
    self->ended = 0;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ decoding */

static inline uint16_t be16(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (uint16_t)((u[0] << 8) | u[1]);
}
static inline uint32_t be32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | (uint32_t)u[3];
}
static inline uint64_t be64(const char *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

typedef struct {
    const char *error; /* a static message when decoding failed */
    int server_error;  /* 1: the server ended the COPY with an error (result in `failure`) */
    PGresult *failure;
    int lost;          /* 1: libpq reported an error (-2): connection text */
} ReadStatus;

/* Four decimal digits of a base-10000 digit; the first group of the integer part
   without leading zeros (numeric_out's get_str_from_var). */
static inline char *put_group(char *cp, int dig, int first) {
    int putit = !first, d1;
    d1 = dig / 1000;
    dig -= d1 * 1000;
    putit |= (d1 > 0);
    if (putit)
        *cp++ = (char)(d1 + '0');
    d1 = dig / 100;
    dig -= d1 * 100;
    putit |= (d1 > 0);
    if (putit)
        *cp++ = (char)(d1 + '0');
    d1 = dig / 10;
    dig -= d1 * 10;
    putit |= (d1 > 0);
    if (putit)
        *cp++ = (char)(d1 + '0');
    *cp++ = (char)(dig + '0');
    return cp;
}

/* A binary numeric (ndigits, weight, sign, dscale, base-10000 digits) as text. */
static int append_numeric(Column *c, const char *p, int32_t len, const char **error) {
    if (len < 8) {
        *error = "a numeric field is shorter than its header";
        return -1;
    }
    int ndigits = (int16_t)be16(p), weight = (int16_t)be16(p + 2), dscale = (int16_t)be16(p + 6);
    uint16_t sign = be16(p + 4);
    const char *digits = p + 8;
    if (ndigits < 0 || dscale < 0 || len != 8 + 2 * ndigits) {
        *error = "a numeric field does not have the length its header gives";
        return -1;
    }
    for (int i = 0; i < ndigits; i++) {
        if (be16(digits + 2 * i) > 9999) {
            *error = "a numeric digit is out of range";
            return -1;
        }
    }
    const char *special = sign == 0xC000 ? "nan" : sign == 0xD000 ? "inf" : sign == 0xF000 ? "-inf" : NULL;
    if (special == NULL && sign != 0x0000 && sign != 0x4000) {
        *error = "a numeric field has an unknown sign";
        return -1;
    }
    /* Enough for the sign, the integer part, the point and the fraction (whose last
       group may be written whole before the cut). */
    size_t most = 6 + (weight >= 0 ? ((size_t)weight + 1) * 4 : 1) + (size_t)dscale + 4;
    if (bytes_reserve(&c->values, most) < 0) {
        *error = "out of memory";
        return -1;
    }
    char *out = c->values.buf + c->values.len, *cp = out;
    if (special != NULL) {
        size_t n = strlen(special);
        memcpy(cp, special, n);
        cp += n;
    } else {
        if (sign == 0x4000)
            *cp++ = '-';
        int d;
        if (weight < 0) {
            d = weight + 1;
            *cp++ = '0';
        } else {
            for (d = 0; d <= weight; d++)
                cp = put_group(cp, d < ndigits ? be16(digits + 2 * d) : 0, d == 0);
        }
        if (dscale > 0) {
            *cp++ = '.';
            char *end = cp + dscale;
            for (int i = 0; i < dscale; d++, i += 4)
                cp = put_group(cp, (d >= 0 && d < ndigits) ? be16(digits + 2 * d) : 0, 0);
            cp = end;
        }
    }
    size_t total = c->values.len + (size_t)(cp - out);
    if (total > (size_t)INT32_MAX) {
        *error = "a COPY batch holds more than 2 GiB of text";
        return -1;
    }
    c->values.len = total;
    int32_t off = (int32_t)total;
    if (bytes_append(&c->offsets, &off, 4) < 0) {
        *error = "out of memory";
        return -1;
    }
    return 0;
}

/* The COPY's own result, then the COMMIT of the transaction describe() opened; the
   first failure (the caller closes the connection), or NULL. */
static PGresult *end_copy(PGconn *conn) {
    PGresult *failure = drain_results(conn);
    if (failure != NULL)
        return failure;
    if (PQtransactionStatus(conn) == PQTRANS_INTRANS)
        return run_utility(conn, "COMMIT");
    return NULL;
}

/* Decode one tuple starting at *p (field count already read as nf). */
static int decode_tuple(const char **pp, const char *end, int ncols, Column *cols, int64_t row, const char **error) {
    const char *p = *pp;
    for (int i = 0; i < ncols; i++) {
        Column *c = &cols[i];
        if (end - p < 4) {
            *error = "a COPY row ended inside a field length";
            return -1;
        }
        int32_t len = (int32_t)be32(p);
        p += 4;
        if (len < -1 || (len >= 0 && end - p < len)) {
            *error = "a COPY field is longer than its row";
            return -1;
        }
        if (bit_append(&c->validity, row, len != -1) < 0)
            goto oom;
        int width = kFixedWidth[c->kind];
        if (len == -1) {
            c->nulls++;
            if (c->kind == KIND_BOOL) {
                if (bit_append(&c->values, row, 0) < 0)
                    goto oom;
            } else if (width > 0) {
                static const char zeros[8] = {0};
                if (bytes_append(&c->values, zeros, (size_t)width) < 0) goto oom;
            } else {
                int32_t off = (int32_t)c->values.len;
                if (bytes_append(&c->offsets, &off, 4) < 0) goto oom;
            }
            continue;
        }
        if (width > 0 && len != width) {
            *error = "a COPY field does not have its type's width";
            return -1;
        }
        switch (c->kind) {
        case KIND_BOOL:
            if (bit_append(&c->values, row, p[0] != 0) < 0)
                goto oom;
            break;
        case KIND_INT16: {
            uint16_t v = be16(p);
            if (bytes_append(&c->values, &v, 2) < 0) goto oom;
            break;
        }
        case KIND_INT32:
        case KIND_FLOAT32:
        case KIND_DATE: {
            uint32_t v = be32(p);
            if (c->kind == KIND_DATE)
                v += (uint32_t)PG_EPOCH_DAYS; /* wraps, as ADBC's does */
            if (bytes_append(&c->values, &v, 4) < 0) goto oom;
            break;
        }
        case KIND_INT64:
        case KIND_FLOAT64:
        case KIND_TIMESTAMP: {
            uint64_t v = be64(p);
            if (c->kind == KIND_TIMESTAMP)
                v += (uint64_t)PG_EPOCH_US; /* wraps, as ADBC's does */
            if (bytes_append(&c->values, &v, 8) < 0) goto oom;
            break;
        }
        case KIND_BYTES: {
            if (c->values.len + (size_t)len > (size_t)INT32_MAX) {
                *error = "a COPY batch holds more than 2 GiB of text";
                return -1;
            }
            int32_t off = (int32_t)(c->values.len + (size_t)len);
            if (bytes_append(&c->values, p, (size_t)len) < 0 || bytes_append(&c->offsets, &off, 4) < 0) goto oom;
            break;
        }
        case KIND_NUMERIC:
            if (append_numeric(c, p, len, error) < 0)
                return -1;
            break;
        default:
            *error = "an unknown column kind";
            return -1;
        }
        p += len;
    }
    *pp = p;
    return 0;
oom:
    *error = "out of memory";
    return -1;
}

/* Read rows until max_rows / max_bytes or the end; runs without the GIL. */
static int64_t read_rows(CopyConnection *self, int ncols, Column *cols, int64_t max_rows, int64_t max_bytes, ReadStatus *st) {
    int64_t rows = 0, bytes = 0;
    while (!self->ended && rows < max_rows && bytes < max_bytes) {
        char *msg = NULL;
        int n = PQgetCopyData(self->conn, &msg, 0);
        if (n == -1) {
            /* End of the COPY: its final result says whether it succeeded. */
            self->copying = 0;
            PGresult *failure = end_copy(self->conn);
            if (failure != NULL) {
                st->server_error = 1;
                st->failure = failure;
                return -1;
            }
            if (!self->ended) {
                st->error = "the COPY stream ended without its trailer";
                return -1;
            }
            break;
        }
        if (n < 0) {
            st->lost = 1;
            return -1;
        }
        const char *p = msg, *end = msg + n;
        if (!self->header_done) {
            if (end - p < 19 || memcmp(p, kSignature, 11) != 0) {
                PQfreemem(msg);
                st->error = "the COPY stream does not start with the binary signature";
                return -1;
            }
            /* Flags: bit 16 (OIDs) or any of bits 0-15 means a layout this decoder
               does not read; bits 17-31 are to be ignored. */
            if (be32(p + 11) & UINT32_C(0x0001FFFF)) {
                PQfreemem(msg);
                st->error = "the COPY header has flags this decoder does not read";
                return -1;
            }
            uint32_t ext = be32(p + 15);
            p += 19;
            if ((uint32_t)(end - p) < ext) {
                PQfreemem(msg);
                st->error = "the COPY header extension is longer than its message";
                return -1;
            }
            p += ext;
            self->header_done = 1;
        }
        while (p < end) {
            if (self->ended || end - p < 2) {
                PQfreemem(msg);
                st->error = "unexpected bytes in the COPY stream";
                return -1;
            }
            int16_t nf = (int16_t)be16(p);
            p += 2;
            if (nf == -1) {
                self->ended = 1;
                continue;
            }
            if (nf != ncols) {
                PQfreemem(msg);
                st->error = "a COPY row does not have the described number of columns";
                return -1;
            }
            if (decode_tuple(&p, end, ncols, cols, rows, &st->error) < 0) {
                PQfreemem(msg);
                return -1;
            }
            rows++;
        }
        bytes += n;
        PQfreemem(msg);
    }
    if (self->ended && self->copying) {
        /* The trailer came: read the end of the COPY now, so the connection is ready. */
        char *msg = NULL;
        int n;
        while ((n = PQgetCopyData(self->conn, &msg, 0)) > 0) {
            PQfreemem(msg);
            st->error = "unexpected bytes after the COPY trailer";
        }
        self->copying = 0;
        if (n == -2) {
            st->lost = 1;
            return -1;
        }
        PGresult *failure = end_copy(self->conn);
        if (failure != NULL) {
            st->server_error = 1;
            st->failure = failure;
            return -1;
        }
        if (st->error)
            return -1;
    }
    return rows;
}

static PyObject *column_result(Column *c, int64_t rows) {
    PyObject *validity = NULL, *offsets = NULL, *values = NULL;
    if (c->nulls > 0) {
        validity = block_take(&c->validity.buf, (Py_ssize_t)c->validity.len);
        if (validity == NULL)
            return NULL;
    } else {
        validity = Py_NewRef(Py_None);
    }
    if (kind_is_var(c->kind)) {
        offsets = block_take(&c->offsets.buf, (Py_ssize_t)c->offsets.len);
        if (offsets == NULL)
            goto fail;
    } else {
        offsets = Py_NewRef(Py_None);
    }
    values = block_take(&c->values.buf, (Py_ssize_t)c->values.len);
    if (values == NULL)
        goto fail;
    PyObject *out = Py_BuildValue("(NLNN)", validity, (long long)c->nulls, offsets, values);
    (void)rows;
    return out;
fail:
    Py_XDECREF(validity);
    Py_XDECREF(offsets);
    return NULL;
}

static PyObject *CopyConnection_execute(CopyConnection *self, PyObject *arg) {
    return enter(self) < 0 ? NULL : leave(self, execute_impl(self, arg));
}

static PyObject *CopyConnection_describe(CopyConnection *self, PyObject *arg) {
    return enter(self) < 0 ? NULL : leave(self, describe_impl(self, arg));
}

static PyObject *CopyConnection_start(CopyConnection *self, PyObject *arg) {
    return enter(self) < 0 ? NULL : leave(self, start_impl(self, arg));
}

static PyObject *read_impl(CopyConnection *self, PyObject *args);

static PyObject *CopyConnection_read(CopyConnection *self, PyObject *args) {
    if (enter(self) < 0)
        return NULL;
    PyObject *out = read_impl(self, args);
    if (out == NULL)
        self->failed = 1; /* never read on after an error (a row could be skipped) */
    return leave(self, out);
}

static PyObject *read_impl(CopyConnection *self, PyObject *args) {
    PyObject *kinds;
    long long max_rows, max_bytes;
    if (!PyArg_ParseTuple(args, "O!LL", &PyTuple_Type, &kinds, &max_rows, &max_bytes))
        return NULL;
    if (!self->copying)
        Py_RETURN_NONE;
    Py_ssize_t ncols = PyTuple_GET_SIZE(kinds);
    if (ncols <= 0 || ncols > 1664) {
        PyErr_SetString(PyExc_ValueError, "kinds: one per column (1 to 1664)");
        return NULL;
    }
    if (max_rows <= 0 || max_bytes <= 0) {
        PyErr_SetString(PyExc_ValueError, "max_rows and max_bytes must be positive");
        return NULL;
    }
    Column *cols = calloc((size_t)ncols, sizeof(Column));
    if (cols == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < ncols; i++) {
        long k = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i));
        if (k < 0 || k >= KIND_COUNT) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "unknown column kind");
            free(cols);
            return NULL;
        }
        cols[i].kind = (int)k;
    }
    ReadStatus st = {0};
    int64_t rows;
    Py_BEGIN_ALLOW_THREADS
    rows = read_rows(self, (int)ncols, cols, max_rows, max_bytes, &st);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (rows < 0) {
        if (st.server_error) {
            raise_pg(self, st.failure);
            PQclear(st.failure);
        } else if (st.lost) {
            self->copying = 0;
            raise_pg(self, NULL);
        } else {
            PyErr_SetString(PgError, st.error ? st.error : "the COPY stream could not be read");
        }
        goto done;
    }
    if (rows == 0 && !self->copying)
        goto none;
    /* Offsets start with 0; prepend it now (the builders append end offsets only). */
    PyObject *columns = PyList_New(ncols);
    if (columns == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        Column *c = &cols[i];
        if (kind_is_var(c->kind)) {
            if (bytes_reserve(&c->offsets, 4) < 0) {
                Py_DECREF(columns);
                PyErr_NoMemory();
                goto done;
            }
            memmove(c->offsets.buf + 4, c->offsets.buf, c->offsets.len);
            memset(c->offsets.buf, 0, 4);
            c->offsets.len += 4;
        }
        PyObject *col = column_result(c, rows);
        if (col == NULL) {
            Py_DECREF(columns);
            goto done;
        }
        PyList_SET_ITEM(columns, i, col);
    }
    result = Py_BuildValue("(LN)", (long long)rows, columns);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < ncols; i++)
        column_free(&cols[i]);
    free(cols);
    return result;
}

static PyObject *CopyConnection_cancel(CopyConnection *self, PyObject *Py_UNUSED(ignored)) {
    int ok = 0;
    char errbuf[256];
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->cancel_lock);
    if (self->cancel != NULL)
        ok = PQcancel(self->cancel, errbuf, (int)sizeof(errbuf));
    pthread_mutex_unlock(&self->cancel_lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *CopyConnection_cancel(CopyConnection *self, PyObject *Py_UNUSED(ignored));

static PyObject *CopyConnection_close(CopyConnection *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) {
        /* Another thread is inside a call (maybe waiting for rows): it closes the
           connection when it returns; cancel the statement so that is soon. */
        self->close_pending = 1;
        PyObject *ok = CopyConnection_cancel(self, NULL);
        Py_XDECREF(ok);
        if (ok == NULL)
            PyErr_Clear();
        Py_RETURN_NONE;
    }
    close_conn(self);
    Py_RETURN_NONE;
}

static PyObject *CopyConnection_get_ok(CopyConnection *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->conn != NULL && !self->busy && !self->failed && !self->copying && PQstatus(self->conn) == CONNECTION_OK &&
                           PQtransactionStatus(self->conn) == PQTRANS_IDLE);
}

static PyMethodDef CopyConnection_methods[] = {
    {"execute", (PyCFunction)CopyConnection_execute, METH_O, "Run statements; their results are discarded."},
    {"describe", (PyCFunction)CopyConnection_describe, METH_O, "[(name, type oid, typmod)] of one statement's result."},
    {"start", (PyCFunction)CopyConnection_start, METH_O, "COPY (sql) TO STDOUT (FORMAT BINARY)."},
    {"read", (PyCFunction)CopyConnection_read, METH_VARARGS, "read(kinds, max_rows, max_bytes): the next batch or None."},
    {"cancel", (PyCFunction)CopyConnection_cancel, METH_NOARGS, "Ask the server to cancel the running statement."},
    {"close", (PyCFunction)CopyConnection_close, METH_NOARGS, "Close the connection."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CopyConnection_getset[] = {
    {"ok", (getter)CopyConnection_get_ok, NULL, "The connection is open, idle and outside a transaction.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CopyConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "warden.gateway._pgcopy.CopyConnection",
    .tp_basicsize = sizeof(CopyConnection),
    .tp_dealloc = (destructor)CopyConnection_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One libpq connection that reads binary COPY into Arrow buffers.",
    .tp_methods = CopyConnection_methods,
    .tp_getset = CopyConnection_getset,
    .tp_init = (initproc)CopyConnection_init,
    .tp_new = CopyConnection_new,
};

static struct PyModuleDef pgcopy_module = {
    PyModuleDef_HEAD_INIT, "warden.gateway._pgcopy",
    "PostgreSQL binary COPY decoded into Arrow buffers (see the C source's header).", -1, NULL,
};

PyMODINIT_FUNC PyInit__pgcopy(void) {
    if (PyType_Ready(&BlockType) < 0 || PyType_Ready(&CopyConnectionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&pgcopy_module);
    if (m == NULL)
        return NULL;
    PgError = PyErr_NewException("warden.gateway._pgcopy.PgError", NULL, NULL);
    if (PgError == NULL || PyModule_AddObjectRef(m, "PgError", PgError) < 0 ||
        PyModule_AddObjectRef(m, "CopyConnection", (PyObject *)&CopyConnectionType) < 0 ||
        PyModule_AddIntConstant(m, "LIBPQ_VERSION", PQlibVersion()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
