/*
 * recon's native Kafka scan loop: consume assigned partitions with librdkafka and append every
 * message straight into columnar buffers (Arrow layouts), so that no Python object is created per
 * message. Python (engine/connectors/kafka/native.py) wraps the buffers as Arrow arrays without a copy;
 * the values in the producers' shape are split into their fields here too (recon_event_shape, at
 * the end), the others are parsed one by one in Python.
 *
 * Why by hand: confluent-kafka's Python API hands out one Message object per message and costs
 * ≈3 µs of Python per message for the fields a scan needs; no maintained Python Kafka client returns
 * columnar batches. The loop is small and uses only librdkafka's stable public C API.
 *
 * It links against the librdkafka that confluent-kafka already ships (or the system one), so the
 * client library, its version and its configuration properties are the same on both paths. The few
 * declarations needed are copied from librdkafka's public rdkafka.h (BSD-2-Clause, stable ABI since
 * 1.x), so building needs no librdkafka headers.
 *
 * Threading: ctypes releases the GIL for every call; one scan is used by one thread at a time.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

/* ---- from rdkafka.h (public API) ---- */
typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_conf_s rd_kafka_conf_t;
typedef struct rd_kafka_queue_s rd_kafka_queue_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
typedef struct rd_kafka_headers_s rd_kafka_headers_t;
typedef struct rd_kafka_topic_partition_list_s rd_kafka_topic_partition_list_t;
typedef struct rd_kafka_topic_partition_s rd_kafka_topic_partition_t;
typedef int rd_kafka_resp_err_t;
typedef int rd_kafka_conf_res_t;
typedef int rd_kafka_timestamp_type_t;
typedef int rd_kafka_type_t;

typedef struct rd_kafka_message_s {
    rd_kafka_resp_err_t err;
    rd_kafka_topic_t *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *_private;
} rd_kafka_message_t;

#define RD_KAFKA_CONSUMER 1
#define RD_KAFKA_CONF_OK 0
#define RD_KAFKA_RESP_ERR__PARTITION_EOF (-191)
#define RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC (-188)
#define RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION (-190)
#define RD_KAFKA_RESP_ERR__FATAL (-150)
#define RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART 3
#define RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED 29
#define RD_KAFKA_RESP_ERR__AUTHENTICATION (-169)
#define RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED 58

rd_kafka_conf_t *rd_kafka_conf_new(void);
void rd_kafka_conf_destroy(rd_kafka_conf_t *conf);
rd_kafka_conf_res_t rd_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errstr,
                                      size_t errstr_size);
rd_kafka_t *rd_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *errstr, size_t errstr_size);
void rd_kafka_destroy(rd_kafka_t *rk);
rd_kafka_resp_err_t rd_kafka_poll_set_consumer(rd_kafka_t *rk);
rd_kafka_queue_t *rd_kafka_queue_get_consumer(rd_kafka_t *rk);
void rd_kafka_queue_destroy(rd_kafka_queue_t *rkqu);
rd_kafka_topic_partition_list_t *rd_kafka_topic_partition_list_new(int size);
void rd_kafka_topic_partition_list_destroy(rd_kafka_topic_partition_list_t *rkparlist);
rd_kafka_topic_partition_t *rd_kafka_topic_partition_list_add(rd_kafka_topic_partition_list_t *rktparlist,
                                                              const char *topic, int32_t partition);
rd_kafka_resp_err_t rd_kafka_topic_partition_list_set_offset(rd_kafka_topic_partition_list_t *rktparlist,
                                                             const char *topic, int32_t partition, int64_t offset);
rd_kafka_resp_err_t rd_kafka_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *partitions);
ssize_t rd_kafka_consume_batch_queue(rd_kafka_queue_t *rkqu, int timeout_ms, rd_kafka_message_t **rkmessages,
                                     size_t rkmessages_size);
void rd_kafka_message_destroy(rd_kafka_message_t *rkmessage);
int64_t rd_kafka_message_timestamp(const rd_kafka_message_t *rkmessage, rd_kafka_timestamp_type_t *tstype);
rd_kafka_resp_err_t rd_kafka_message_headers(const rd_kafka_message_t *rkmessage, rd_kafka_headers_t **hdrsp);
rd_kafka_resp_err_t rd_kafka_header_get_last(const rd_kafka_headers_t *hdrs, const char *name, const void **valuep,
                                             size_t *sizep);
const char *rd_kafka_err2str(rd_kafka_resp_err_t err);
rd_kafka_resp_err_t rd_kafka_fatal_error(rd_kafka_t *rk, char *errstr, size_t errstr_size);
rd_kafka_resp_err_t rd_kafka_consumer_close(rd_kafka_t *rk);
void rd_kafka_conf_set_error_cb(rd_kafka_conf_t *conf,
                                void (*error_cb)(rd_kafka_t *rk, int err, const char *reason, void *opaque));
void rd_kafka_conf_set_opaque(rd_kafka_conf_t *conf, void *opaque);
/* ---- end of rdkafka.h ---- */

#define BATCH 4096
#define NHDR 3

/* A nullable binary column in Arrow's large_binary layout: validity bitmap, n+1 int64 offsets, data. */
typedef struct {
    uint8_t *valid;
    int64_t *offs;
    uint8_t *data;
    int64_t len, cap, nulls;
} bincol_t;

/* One chunk of messages. ``value`` holds every non-null value followed by '\n' (so the data buffer
 * is an NDJSON block as it is); its offsets include that separator. */
typedef struct {
    int64_t n, cap;
    int32_t *partition;
    int64_t *offset;
    int64_t *ts;
    int8_t *tstype;
    bincol_t cols[5]; /* key, org header, producer-id header, sequence header, value */
    int64_t value_newlines; /* values with a '\n' inside: the block is then not one line per value */
    int64_t value_empty;    /* zero-length values: an empty line in the block */
} chunk_t;

enum { C_KEY = 0, C_ORG = 1, C_PROD = 2, C_SEQ = 3, C_VALUE = 4 };

typedef struct {
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int nparts;
    int32_t *parts;
    int64_t *stop_at; /* last offset to read (inclusive) or -1: to EOF */
    int64_t *eof;     /* offset of the partition's EOF event, -1 until one arrives */
    uint8_t *pending;
    int32_t *index_of; /* partition number -> position in parts, -1 when not assigned */
    int32_t max_part;
    int npending;
    int assigned_stops;
    char *hdr[NHDR];
    char err[512];
    int err_kind; /* 0 none, 1 topic or partition unknown, 2 fatal, 3 out of memory, 4 authorization,
                     5 authentication */
    rd_kafka_message_t *batch[BATCH];
} scan_t;

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int grow(void **p, int64_t count, size_t size) {
    void *q = realloc(*p, (size_t)count * size);
    if (!q) return -1;
    *p = q;
    return 0;
}

static int bincol_reserve_rows(bincol_t *c, int64_t rows) {
    int64_t bytes = (rows + 7) / 8;
    uint8_t *v = realloc(c->valid, (size_t)bytes);
    if (!v) return -1;
    c->valid = v;
    return grow((void **)&c->offs, rows + 1, sizeof(int64_t));
}

static int bincol_append(bincol_t *c, int64_t row, const void *p, size_t len, int valid, int newline) {
    if (row % 8 == 0) c->valid[row / 8] = 0;
    if (valid) {
        size_t need = len + (newline ? 1 : 0);
        if (c->len + (int64_t)need > c->cap) {
            int64_t cap = c->cap ? c->cap : 1 << 16;
            while (cap < c->len + (int64_t)need) cap *= 2;
            if (grow((void **)&c->data, cap, 1)) return -1;
            c->cap = cap;
        }
        if (len) memcpy(c->data + c->len, p, len);
        c->len += (int64_t)len;
        if (newline) c->data[c->len++] = '\n';
        c->valid[row / 8] |= (uint8_t)(1u << (row % 8));
    } else {
        c->nulls++;
    }
    c->offs[row + 1] = c->len;
    return 0;
}

chunk_t *recon_chunk_new(void) {
    chunk_t *c = calloc(1, sizeof(chunk_t));
    if (!c) return NULL;
    for (int i = 0; i < 5; i++) {
        c->cols[i].offs = calloc(1, sizeof(int64_t));
        if (!c->cols[i].offs) return NULL;
    }
    return c;
}

void recon_chunk_free(chunk_t *c) {
    if (!c) return;
    free(c->partition);
    free(c->offset);
    free(c->ts);
    free(c->tstype);
    for (int i = 0; i < 5; i++) {
        free(c->cols[i].valid);
        free(c->cols[i].offs);
        free(c->cols[i].data);
    }
    free(c);
}

static int chunk_reserve(chunk_t *c, int64_t rows) {
    if (rows <= c->cap) return 0;
    int64_t cap = c->cap ? c->cap * 2 : 8192;
    while (cap < rows) cap *= 2;
    if (grow((void **)&c->partition, cap, sizeof(int32_t)) || grow((void **)&c->offset, cap, sizeof(int64_t)) ||
        grow((void **)&c->ts, cap, sizeof(int64_t)) || grow((void **)&c->tstype, cap, sizeof(int8_t)))
        return -1;
    for (int i = 0; i < 5; i++)
        if (bincol_reserve_rows(&c->cols[i], cap)) return -1;
    c->cap = cap;
    return 0;
}

/* Buffers of a chunk, for wrapping as Arrow arrays: which = 0 partition, 1 offset, 2 timestamp,
 * 3 timestamp type, 4+k column k's data / 9+k its offsets / 14+k its validity bitmap. */
void *recon_chunk_buffer(chunk_t *c, int which, int64_t *size) {
    int64_t n = c->n;
    if (which == 0) { *size = n * 4; return c->partition; }
    if (which == 1) { *size = n * 8; return c->offset; }
    if (which == 2) { *size = n * 8; return c->ts; }
    if (which == 3) { *size = n; return c->tstype; }
    if (which >= 4 && which < 9) { *size = c->cols[which - 4].len; return c->cols[which - 4].data; }
    if (which >= 9 && which < 14) { *size = (n + 1) * 8; return c->cols[which - 9].offs; }
    if (which >= 14 && which < 19) { *size = (n + 7) / 8; return c->cols[which - 14].valid; }
    *size = 0;
    return NULL;
}

/* Like recon_chunk_buffer, but the caller takes the buffer over (frees it with recon_buffer_free)
 * and the chunk forgets it: a column that outlives its chunk then keeps only its own memory alive,
 * not the chunk's values. */
void *recon_chunk_take(chunk_t *c, int which, int64_t *size) {
    void *p = recon_chunk_buffer(c, which, size);
    if (which == 0) c->partition = NULL;
    else if (which == 1) c->offset = NULL;
    else if (which == 2) c->ts = NULL;
    else if (which == 3) c->tstype = NULL;
    else if (which >= 4 && which < 9) c->cols[which - 4].data = NULL;
    else if (which >= 9 && which < 14) c->cols[which - 9].offs = NULL;
    else if (which >= 14 && which < 19) c->cols[which - 14].valid = NULL;
    return p;
}

void recon_buffer_free(void *p) { free(p); }

/* Counters: 0 rows, 1 value newlines, 2 empty values, 3+k nulls of column k. */
int64_t recon_chunk_count(chunk_t *c, int which) {
    if (which == 0) return c->n;
    if (which == 1) return c->value_newlines;
    if (which == 2) return c->value_empty;
    if (which >= 3 && which < 8) return c->cols[which - 3].nulls;
    return -1;
}

static void scan_free(scan_t *s) {
    if (!s) return;
    if (s->q) rd_kafka_queue_destroy(s->q);
    if (s->rk) rd_kafka_destroy(s->rk);
    free(s->parts);
    free(s->stop_at);
    free(s->eof);
    free(s->pending);
    free(s->index_of);
    for (int i = 0; i < NHDR; i++) free(s->hdr[i]);
    free(s);
}

/* Classify an error code; 0 for errors librdkafka recovers from by itself (a broker reconnecting,
 * a request timing out): for those the caller's deadline decides. */
static int error_kind(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
        return 1;
    case RD_KAFKA_RESP_ERR__FATAL:
        return 2;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        return 4;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        return 5;
    default:
        return 0;
    }
}

static void set_error(scan_t *s, rd_kafka_resp_err_t err, const char *reason) {
    if (s->err_kind) return; /* the first error is the one reported */
    int kind = error_kind(err);
    if (!kind) return;
    s->err_kind = kind;
    if (kind == 2) {
        if (!rd_kafka_fatal_error(s->rk, s->err, sizeof s->err)) snprintf(s->err, sizeof s->err, "fatal error");
    } else {
        snprintf(s->err, sizeof s->err, "%s", reason ? reason : rd_kafka_err2str(err));
    }
}

/* Errors that are not tied to a message (a partition that does not exist, failed authentication)
 * arrive here, on the thread that consumes, instead of being logged. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)rk;
    set_error((scan_t *)opaque, err, reason);
}

/* The largest partition id accepted (engine.connectors.kafka.client.MAX_PARTITION_ID): index_of holds
 * max_part + 1 entries, so an id near INT32_MAX from a hostile metadata answer would overflow it. */
#define RECON_MAX_PARTITION_ID ((1 << 20) - 1)

/* Create a consumer from the given properties and assign the partitions at their start offsets
 * (-2 = beginning). stops[i] >= 0 ends partition i at that offset instead of at EOF. On failure
 * returns NULL and writes the reason to errbuf; *bad_key is the index of a rejected property. */
scan_t *recon_scan_open(int nconf, const char **keys, const char **vals, const char *topic, int nparts,
                        const int32_t *parts, const int64_t *starts, const int64_t *stops, const char **headers,
                        char *errbuf, int errlen, int *bad_key) {
    *bad_key = -1;
    scan_t *s = calloc(1, sizeof(scan_t));
    if (!s) { snprintf(errbuf, errlen, "out of memory"); return NULL; }
    s->nparts = nparts;
    s->parts = malloc(sizeof(int32_t) * (nparts ? nparts : 1));
    s->stop_at = malloc(sizeof(int64_t) * (nparts ? nparts : 1));
    s->eof = malloc(sizeof(int64_t) * (nparts ? nparts : 1));
    s->pending = malloc(nparts ? nparts : 1);
    for (int i = 0; i < NHDR; i++) s->hdr[i] = strdup(headers[i]);
    if (!s->parts || !s->stop_at || !s->eof || !s->pending || !s->hdr[0] || !s->hdr[1] || !s->hdr[2]) {
        snprintf(errbuf, errlen, "out of memory");
        scan_free(s);
        return NULL;
    }
    for (int i = 0; i < nparts; i++) {
        s->parts[i] = parts[i];
        s->stop_at[i] = stops[i];
        s->eof[i] = -1;
        s->pending[i] = 1;
        if (stops[i] >= 0) s->assigned_stops = 1;
    }
    s->npending = nparts;
    for (int i = 0; i < nparts; i++)
        if (parts[i] < 0 || parts[i] > RECON_MAX_PARTITION_ID) { /* sizes index_of below: never trust it */
            snprintf(errbuf, errlen, "partition id %d is outside 0..%d", (int)parts[i], RECON_MAX_PARTITION_ID);
            scan_free(s);
            return NULL;
        }
    s->max_part = -1;
    for (int i = 0; i < nparts; i++)
        if (parts[i] > s->max_part) s->max_part = parts[i];
    s->index_of = malloc(sizeof(int32_t) * (size_t)(s->max_part + 1 > 0 ? s->max_part + 1 : 1));
    if (!s->index_of) {
        snprintf(errbuf, errlen, "out of memory");
        scan_free(s);
        return NULL;
    }
    for (int32_t p = 0; p <= s->max_part; p++) s->index_of[p] = -1;
    for (int i = 0; i < nparts; i++)
        if (parts[i] >= 0) s->index_of[parts[i]] = i;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (int i = 0; i < nconf; i++) {
        if (rd_kafka_conf_set(conf, keys[i], vals[i], errbuf, (size_t)errlen) != RD_KAFKA_CONF_OK) {
            *bad_key = i;
            rd_kafka_conf_destroy(conf);
            scan_free(s);
            return NULL;
        }
    }
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, s);
    s->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errbuf, (size_t)errlen);
    if (!s->rk) { /* conf is not taken on failure */
        rd_kafka_conf_destroy(conf);
        scan_free(s);
        return NULL;
    }
    rd_kafka_poll_set_consumer(s->rk);
    s->q = rd_kafka_queue_get_consumer(s->rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);
    for (int i = 0; i < nparts; i++) {
        rd_kafka_topic_partition_list_add(l, topic, parts[i]);
        rd_kafka_topic_partition_list_set_offset(l, topic, parts[i], starts[i]);
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(errbuf, errlen, "assign failed: %s", rd_kafka_err2str(e));
        scan_free(s);
        return NULL;
    }
    return s;
}

static int part_index(const scan_t *s, int32_t p) {
    return (p >= 0 && p <= s->max_part) ? s->index_of[p] : -1;
}

/* Append one data message; returns -1 when out of memory. */
static int take(scan_t *s, chunk_t *c, const rd_kafka_message_t *m) {
    int64_t r = c->n;
    if (chunk_reserve(c, r + 1)) return -1;
    c->partition[r] = m->partition;
    c->offset[r] = m->offset;
    rd_kafka_timestamp_type_t tt = 0;
    c->ts[r] = rd_kafka_message_timestamp(m, &tt);
    c->tstype[r] = (int8_t)tt;
    if (bincol_append(&c->cols[C_KEY], r, m->key, m->key_len, m->key != NULL, 0)) return -1;
    rd_kafka_headers_t *h = NULL;
    int has_h = rd_kafka_message_headers(m, &h) == 0 && h != NULL;
    for (int k = 0; k < NHDR; k++) {
        const void *v = NULL;
        size_t vl = 0;
        int found = has_h && rd_kafka_header_get_last(h, s->hdr[k], &v, &vl) == 0 && v != NULL;
        if (bincol_append(&c->cols[C_ORG + k], r, v, vl, found, 0)) return -1;
    }
    if (m->payload != NULL) {
        if (m->len == 0) c->value_empty++;
        else if (memchr(m->payload, '\n', m->len)) c->value_newlines++;
    }
    if (bincol_append(&c->cols[C_VALUE], r, m->payload, m->len, m->payload != NULL, 1)) return -1;
    c->n = r + 1;
    return 0;
}

/* Handle one message or event; returns -1 on an error that ends the scan. */
static int handle(scan_t *s, chunk_t *c, const rd_kafka_message_t *m) {
    if (m->err == 0) {
        int i = part_index(s, m->partition);
        if (i < 0) return 0;
        if (s->stop_at[i] >= 0) {
            if (m->offset > s->stop_at[i]) return 0; /* past the range: not part of the window */
            if (m->offset >= s->stop_at[i] && s->pending[i]) { s->pending[i] = 0; s->npending--; }
        }
        if (take(s, c, m)) {
            s->err_kind = 3;
            snprintf(s->err, sizeof s->err, "out of memory while reading partition %d", m->partition);
            return -1;
        }
        return 0;
    }
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        int i = part_index(s, m->partition);
        if (i >= 0) {
            s->eof[i] = m->offset;
            if (s->pending[i]) { s->pending[i] = 0; s->npending--; }
        }
        return 0;
    }
    set_error(s, m->err, NULL);
    return s->err_kind ? -1 : 0; /* others are transient (a broker reconnecting, …): librdkafka retries */
}

/* Consume into chunks[i] (one per assigned partition, in the order given to recon_scan_open, so that
 * each chunk is in offset order) until they hold max_rows messages or max_bytes of values together,
 * every partition is finished, or nothing arrived for idle_ms. Returns the messages added, or -1
 * (see recon_scan_error). */
int64_t recon_scan_fill(scan_t *s, chunk_t **chunks, int64_t max_rows, int64_t max_bytes, int idle_ms) {
    int64_t rows = 0, bytes = 0;
    int64_t last = now_ms();
    while (s->npending > 0 && rows < max_rows && bytes < max_bytes) {
        int64_t room = max_rows - rows;
        size_t want = room < BATCH ? (size_t)room : BATCH;
        ssize_t got = rd_kafka_consume_batch_queue(s->q, 10, s->batch, want);
        if (s->err_kind) { /* from the error callback, served during the call */
            for (ssize_t i = 0; i < got; i++) rd_kafka_message_destroy(s->batch[i]);
            return -1;
        }
        if (got < 0) {
            s->err_kind = 2;
            snprintf(s->err, sizeof s->err, "consume failed");
            return -1;
        }
        if (got == 0) {
            if (now_ms() - last >= idle_ms) break;
            continue;
        }
        last = now_ms();
        int failed = 0;
        for (ssize_t i = 0; i < got; i++) {
            rd_kafka_message_t *m = s->batch[i];
            if (!failed) {
                int k = part_index(s, m->partition);
                chunk_t *c = chunks[k < 0 ? 0 : k];
                int64_t n0 = c->n, b0 = c->cols[C_VALUE].len;
                if (handle(s, c, m)) failed = 1;
                rows += c->n - n0;
                bytes += c->cols[C_VALUE].len - b0;
            }
            rd_kafka_message_destroy(m);
        }
        if (failed) return -1;
    }
    return rows;
}

int recon_scan_pending(scan_t *s) { return s->npending; }

/* Offset of partition i's EOF event (its end), or -1 when none arrived. */
int64_t recon_scan_eof(scan_t *s, int i) { return (i >= 0 && i < s->nparts) ? s->eof[i] : -1; }

const char *recon_scan_error(scan_t *s, int *kind) {
    *kind = s->err_kind;
    return s->err;
}

void recon_scan_close(scan_t *s) {
    if (!s) return;
    if (s->rk) {
        if (s->assigned_stops) rd_kafka_assign(s->rk, NULL);
        rd_kafka_consumer_close(s->rk);
    }
    scan_free(s);
}

/* ---- event values in the producers' shape ----
 *
 * A value is in the producers' shape when it is a JSON object with exactly the five given members
 * in that order, each value a string of printable ASCII without '"' or '\\' (so that its JSON text
 * is its value: no escape to decode), JSON whitespace allowed around every token. Every strict
 * JSON parser gives such a value the same five strings, so the scan takes them from here; every
 * other value is parsed one by one in Python (engine.core.events.parse_json), which decides what
 * it is. Recognising costs one pass over the bytes, about a tenth of a JSON parse.
 *
 * recon_event_shape: for rows [0, n) of a large_binary column (n+1 offsets into data), sets ok[i]
 * and the five (start, length) pairs of a row in shape; adds each field's bytes to sizes[k];
 * returns the number of rows in shape. recon_event_gather then copies field k of those rows into
 * a large_string column (n+1 offsets, data of sizes[k] bytes; other rows empty).
 */
static const uint8_t *skip_ws(const uint8_t *p, const uint8_t *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* plain[b]: byte b may stand in a string in shape (printable ASCII but '"' and '\\') */
static uint8_t plain[256];
static int plain_ready;

static void plain_init(void) {
    for (int b = 0; b < 256; b++) plain[b] = b >= 0x20 && b < 0x7f && b != '"' && b != '\\';
    plain_ready = 1;
}

int64_t recon_event_shape(int64_t n, const int64_t *offs, const uint8_t *data, const char *const *names, uint8_t *ok,
                          int64_t *start, int64_t *len, int64_t *sizes) {
    size_t nl[5];
    int64_t good = 0;
    if (!plain_ready) plain_init(); /* idempotent: a race only writes the same bytes twice */
    for (int k = 0; k < 5; k++) {
        nl[k] = strlen(names[k]);
        sizes[k] = 0;
    }
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = data + offs[i], *e = data + offs[i + 1];
        int k = 0, fine = 0;
        ok[i] = 0;
        p = skip_ws(p, e);
        if (p < e && *p == '{') {
            p++;
            for (k = 0; k < 5; k++) {
                p = skip_ws(p, e);
                if (k) {
                    if (p >= e || *p != ',') break;
                    p = skip_ws(p + 1, e);
                }
                if (e - p < (ptrdiff_t)nl[k] + 2 || p[0] != '"' || memcmp(p + 1, names[k], nl[k]) != 0 ||
                    p[1 + nl[k]] != '"')
                    break;
                p = skip_ws(p + 2 + nl[k], e);
                if (p >= e || *p != ':') break;
                p = skip_ws(p + 1, e);
                if (p >= e || *p != '"') break;
                const uint8_t *s = ++p;
                while (p < e && plain[*p]) p++;
                if (p >= e || *p != '"') break;
                start[i * 5 + k] = s - data;
                len[i * 5 + k] = p - s;
                p++;
            }
            if (k == 5) {
                p = skip_ws(p, e);
                if (p < e && *p == '}') fine = skip_ws(p + 1, e) == e;
            }
        }
        if (fine) {
            ok[i] = 1;
            good++;
            for (k = 0; k < 5; k++) sizes[k] += len[i * 5 + k];
        }
    }
    return good;
}

void recon_event_gather(int64_t n, const uint8_t *data, const uint8_t *ok, const int64_t *start, const int64_t *len,
                        int k, int64_t *out_offs, uint8_t *out) {
    int64_t pos = 0;
    out_offs[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ok[i]) {
            int64_t l = len[i * 5 + k];
            memcpy(out + pos, data + start[i * 5 + k], (size_t)l);
            pos += l;
        }
        out_offs[i + 1] = pos;
    }
}
