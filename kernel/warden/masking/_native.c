/*
 * warden.masking._native: the two hot mask kernels over raw Arrow buffers.
 *
 *   hmac_sha256_hex(key, offsets, data, validity, offset, length, offset_width,
 *                   *, portable=False, threads=0) -> (offsets: bytes, data: bytes)
 *       HMAC-SHA256 (RFC 2104) of every non-null value, as 64 lowercase hex digits; the
 *       result is the two buffers of an Arrow `string` array (int32 offsets, a null row
 *       is empty). The key^ipad and key^opad blocks are compressed once per call, so a
 *       value of up to 55 bytes costs two compressions. SHA-256 is computed with the x86
 *       SHA extensions when the CPU has them, else by the portable FIPS 180-4 code
 *       (portable=True forces the latter). threads=0 splits large inputs over the CPUs
 *       this process may run on (at most 4); threads=N asks for exactly N.
 *
 *   email_mask(offsets, data, validity, offset, length, offset_width)
 *       -> (offsets: bytes, data: bytes)
 *       warden's `email` operator: a value matching ^[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+$
 *       (RE2's \s: tab, LF, FF, CR, space) becomes "****@" + its domain; any other value
 *       is redacted: A-Z -> X, a-z -> x, 0-9 -> 9, a UTF-8 lead byte (or a stray byte
 *       >= 0xC0) -> x, continuation bytes dropped, everything else kept. The offsets come
 *       out in the input's width (4: string, 8: large_string).
 *
 *   sha_ni_available() -> bool
 *
 * Inputs are the buffers of one Arrow (large_)string/binary array: `offsets` (int32 or
 * int64, offset_width 4 or 8), `data` (or None), `validity` (a bitmap, or None for no
 * nulls), and the array's own `offset` and `length`. Output offsets start at 0 and the
 * caller reuses the validity (rebased to bit 0 when the array is sliced). The GIL is
 * released while the kernels run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if !defined(_WIN32)
#include <pthread.h>
#include <unistd.h>
#define WN_THREADS 1
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WN_X86 1
#define WN_NI __attribute__((target("sha,sse4.1,ssse3")))
#endif

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4) */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static const uint32_t IV256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static inline uint32_t rotr32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t be32_load(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void be32_store(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void be64_store(uint8_t *p, uint64_t v)
{
    be32_store(p, (uint32_t)(v >> 32));
    be32_store(p + 4, (uint32_t)v);
}

/* Compress `nblocks` 64-byte blocks into the state h[0..7] (A..H). */
static void sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
    uint32_t w[64];
    while (nblocks--) {
        for (int t = 0; t < 16; t++)
            w[t] = be32_load(p + 4 * t);
        for (int t = 16; t < 64; t++) {
            uint32_t x = w[t - 15], y = w[t - 2];
            uint32_t s0 = rotr32(x, 7) ^ rotr32(x, 18) ^ (x >> 3);
            uint32_t s1 = rotr32(y, 17) ^ rotr32(y, 19) ^ (y >> 10);
            w[t] = w[t - 16] + s0 + w[t - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        uint32_t e = h[4], f = h[5], g = h[6], k = h[7];
        for (int t = 0; t < 64; t++) {
            uint32_t big1 = rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25);
            uint32_t ch = (e & f) ^ (~e & g);
            uint32_t t1 = k + big1 + ch + K256[t] + w[t];
            uint32_t big0 = rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22);
            uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = big0 + maj;
            k = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
        h[5] += f;
        h[6] += g;
        h[7] += k;
        p += 64;
    }
}

/* The last (partial) block(s) of a message whose first `prefix` bytes were already
 * compressed: 0x80, zeros, and the bit length of the whole message. Returns 1 or 2. */
static inline int sha256_pad(uint8_t buf[128], const uint8_t *tail, size_t rem, uint64_t total)
{
    int nb = rem <= 55 ? 1 : 2;
    memset(buf, 0, 128);
    if (rem)
        memcpy(buf, tail, rem);
    buf[rem] = 0x80;
    be64_store(buf + 64 * nb - 8, total * 8);
    return nb;
}

static void sha256_portable(const uint8_t *p, size_t len, uint8_t out[32])
{
    uint32_t h[8];
    uint8_t buf[128];
    memcpy(h, IV256, sizeof h);
    size_t full = len / 64;
    if (full)
        sha256_blocks_portable(h, p, full);
    int nb = sha256_pad(buf, p + 64 * full, len - 64 * full, len);
    sha256_blocks_portable(h, buf, (size_t)nb);
    for (int i = 0; i < 8; i++)
        be32_store(out + 4 * i, h[i]);
}

/* ------------------------------------------------------------------ HMAC, portable */

typedef struct {
    uint32_t inner[8]; /* state after the key^ipad block */
    uint32_t outer[8]; /* state after the key^opad block */
} hmac_key;

static void hmac_key_init(hmac_key *hk, const uint8_t *key, size_t klen)
{
    uint8_t k[64], block[64];
    memset(k, 0, sizeof k);
    if (klen > 64)
        sha256_portable(key, klen, k); /* RFC 2104: long keys are hashed first */
    else if (klen)
        memcpy(k, key, klen);
    for (int i = 0; i < 64; i++)
        block[i] = k[i] ^ 0x36;
    memcpy(hk->inner, IV256, sizeof hk->inner);
    sha256_blocks_portable(hk->inner, block, 1);
    for (int i = 0; i < 64; i++)
        block[i] = k[i] ^ 0x5c;
    memcpy(hk->outer, IV256, sizeof hk->outer);
    sha256_blocks_portable(hk->outer, block, 1);
}

static const char HEXDIGITS[] = "0123456789abcdef";

static void hmac_one_portable(const hmac_key *hk, const uint8_t *v, size_t len, char *hex)
{
    uint32_t h[8];
    uint8_t buf[128];
    memcpy(h, hk->inner, sizeof h);
    size_t full = len / 64;
    if (full)
        sha256_blocks_portable(h, v, full);
    int nb = sha256_pad(buf, v + 64 * full, len - 64 * full, (uint64_t)len + 64);
    sha256_blocks_portable(h, buf, (size_t)nb);

    /* outer: H(key^opad || inner digest), one block of 32 digest bytes + padding */
    memset(buf, 0, 64);
    for (int i = 0; i < 8; i++)
        be32_store(buf + 4 * i, h[i]);
    buf[32] = 0x80;
    be64_store(buf + 56, (64 + 32) * 8);
    memcpy(h, hk->outer, sizeof h);
    sha256_blocks_portable(h, buf, 1);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            hex[8 * i + j] = HEXDIGITS[(h[i] >> (28 - 4 * j)) & 15];
}

/* ------------------------------------------------------------------ HMAC, x86 SHA-NI */

#ifdef WN_X86

/* The SHA instructions keep the state as two registers, ABEF and CDGH (A in the top lane
 * of the first); a message block is four registers of big-endian words, W0 in lane 0. */

#define NI_QUAD(g, w)                                                                     \
    do {                                                                                  \
        __m128i kw_ = _mm_add_epi32((w), _mm_loadu_si128((const __m128i *)&K256[4 * (g)])); \
        s1 = _mm_sha256rnds2_epu32(s1, s0, kw_);                                          \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(kw_, 0x0E));                 \
    } while (0)

/* W[4g..4g+3] from the four previous quads a=W[4g-16..], b, c, d=W[4g-4..]. */
#define NI_NEXT(a, b, c, d)                                                                \
    _mm_sha256msg2_epu32(                                                                 \
        _mm_add_epi32(_mm_sha256msg1_epu32((a), (b)), _mm_alignr_epi8((d), (c), 4)), (d))

WN_NI static inline void ni_compress(__m128i *abef, __m128i *cdgh, __m128i m0, __m128i m1,
                                     __m128i m2, __m128i m3)
{
    __m128i s0 = *abef, s1 = *cdgh;
    NI_QUAD(0, m0);
    NI_QUAD(1, m1);
    NI_QUAD(2, m2);
    NI_QUAD(3, m3);
    m0 = NI_NEXT(m0, m1, m2, m3); NI_QUAD(4, m0);
    m1 = NI_NEXT(m1, m2, m3, m0); NI_QUAD(5, m1);
    m2 = NI_NEXT(m2, m3, m0, m1); NI_QUAD(6, m2);
    m3 = NI_NEXT(m3, m0, m1, m2); NI_QUAD(7, m3);
    m0 = NI_NEXT(m0, m1, m2, m3); NI_QUAD(8, m0);
    m1 = NI_NEXT(m1, m2, m3, m0); NI_QUAD(9, m1);
    m2 = NI_NEXT(m2, m3, m0, m1); NI_QUAD(10, m2);
    m3 = NI_NEXT(m3, m0, m1, m2); NI_QUAD(11, m3);
    m0 = NI_NEXT(m0, m1, m2, m3); NI_QUAD(12, m0);
    m1 = NI_NEXT(m1, m2, m3, m0); NI_QUAD(13, m1);
    m2 = NI_NEXT(m2, m3, m0, m1); NI_QUAD(14, m2);
    m3 = NI_NEXT(m3, m0, m1, m2); NI_QUAD(15, m3);
    *abef = _mm_add_epi32(*abef, s0);
    *cdgh = _mm_add_epi32(*cdgh, s1);
}

/* Two independent compressions, interleaved so that each one's rounds fill the other's
 * latency (the SHA round instruction has a latency of several cycles). */
#define NI_QUAD2(g, wa, wb)                                                                \
    do {                                                                                  \
        __m128i k_ = _mm_loadu_si128((const __m128i *)&K256[4 * (g)]);                    \
        __m128i ka_ = _mm_add_epi32((wa), k_), kb_ = _mm_add_epi32((wb), k_);             \
        a1 = _mm_sha256rnds2_epu32(a1, a0, ka_);                                          \
        b1 = _mm_sha256rnds2_epu32(b1, b0, kb_);                                          \
        a0 = _mm_sha256rnds2_epu32(a0, a1, _mm_shuffle_epi32(ka_, 0x0E));                 \
        b0 = _mm_sha256rnds2_epu32(b0, b1, _mm_shuffle_epi32(kb_, 0x0E));                 \
    } while (0)

#define NI_STEP2(g, x0, x1, x2, x3, y0, y1, y2, y3)                                        \
    do {                                                                                  \
        x0 = NI_NEXT(x0, x1, x2, x3);                                                     \
        y0 = NI_NEXT(y0, y1, y2, y3);                                                     \
        NI_QUAD2(g, x0, y0);                                                              \
    } while (0)

WN_NI static inline void ni_compress2(__m128i *sa, __m128i *sb, const __m128i *ma,
                                      const __m128i *mb)
{
    __m128i a0 = sa[0], a1 = sa[1], b0 = sb[0], b1 = sb[1];
    __m128i p0 = ma[0], p1 = ma[1], p2 = ma[2], p3 = ma[3];
    __m128i q0 = mb[0], q1 = mb[1], q2 = mb[2], q3 = mb[3];
    NI_QUAD2(0, p0, q0);
    NI_QUAD2(1, p1, q1);
    NI_QUAD2(2, p2, q2);
    NI_QUAD2(3, p3, q3);
    NI_STEP2(4, p0, p1, p2, p3, q0, q1, q2, q3);
    NI_STEP2(5, p1, p2, p3, p0, q1, q2, q3, q0);
    NI_STEP2(6, p2, p3, p0, p1, q2, q3, q0, q1);
    NI_STEP2(7, p3, p0, p1, p2, q3, q0, q1, q2);
    NI_STEP2(8, p0, p1, p2, p3, q0, q1, q2, q3);
    NI_STEP2(9, p1, p2, p3, p0, q1, q2, q3, q0);
    NI_STEP2(10, p2, p3, p0, p1, q2, q3, q0, q1);
    NI_STEP2(11, p3, p0, p1, p2, q3, q0, q1, q2);
    NI_STEP2(12, p0, p1, p2, p3, q0, q1, q2, q3);
    NI_STEP2(13, p1, p2, p3, p0, q1, q2, q3, q0);
    NI_STEP2(14, p2, p3, p0, p1, q2, q3, q0, q1);
    NI_STEP2(15, p3, p0, p1, p2, q3, q0, q1, q2);
    sa[0] = _mm_add_epi32(sa[0], a0);
    sa[1] = _mm_add_epi32(sa[1], a1);
    sb[0] = _mm_add_epi32(sb[0], b0);
    sb[1] = _mm_add_epi32(sb[1], b1);
}

WN_NI static inline __m128i ni_bswap_mask(void)
{
    return _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
}

/* A 64-byte block as four registers of big-endian words. */
WN_NI static inline void ni_load_block(__m128i m[4], const uint8_t *p)
{
    const __m128i bs = ni_bswap_mask();
    for (int i = 0; i < 4; i++)
        m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bs);
}

/* A..H words -> ABEF, CDGH */
WN_NI static inline void ni_state_in(const uint32_t h[8], __m128i s[2])
{
    __m128i badc = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B);
    s[0] = _mm_alignr_epi8(badc, efgh, 8);
    s[1] = _mm_blend_epi16(efgh, badc, 0xF0);
}

/* ABEF, CDGH -> words A..D and E..H (lane 0 first), i.e. the digest as message words */
WN_NI static inline void ni_state_out(const __m128i s[2], __m128i *abcd, __m128i *efgh)
{
    __m128i t = _mm_shuffle_epi32(s[0], 0x1B);
    __m128i u = _mm_shuffle_epi32(s[1], 0xB1);
    *abcd = _mm_blend_epi16(t, u, 0xF0);
    *efgh = _mm_alignr_epi8(u, t, 8);
}

/* The outer block: the inner digest words, 0x80 and the length of 96 bytes. */
WN_NI static inline void ni_outer_block(const __m128i inner[2], __m128i m[4])
{
    ni_state_out(inner, &m[0], &m[1]);
    m[2] = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    m[3] = _mm_set_epi32(96 * 8, 0, 0, 0);
}

WN_NI static inline void ni_hex(const __m128i s[2], char *hex)
{
    const __m128i bs = ni_bswap_mask();
    const __m128i digits = _mm_setr_epi8('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a',
                                         'b', 'c', 'd', 'e', 'f');
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i w[2];
    ni_state_out(s, &w[0], &w[1]);
    for (int i = 0; i < 2; i++) {
        __m128i bytes = _mm_shuffle_epi8(w[i], bs);
        __m128i hi = _mm_shuffle_epi8(digits, _mm_and_si128(_mm_srli_epi16(bytes, 4), low));
        __m128i lo = _mm_shuffle_epi8(digits, _mm_and_si128(bytes, low));
        _mm_storeu_si128((__m128i *)(hex + 32 * i), _mm_unpacklo_epi8(hi, lo));
        _mm_storeu_si128((__m128i *)(hex + 32 * i + 16), _mm_unpackhi_epi8(hi, lo));
    }
}

typedef struct {
    __m128i inner[2];
    __m128i outer[2];
} ni_key;

WN_NI static void ni_key_init(ni_key *nk, const hmac_key *hk)
{
    ni_state_in(hk->inner, nk->inner);
    ni_state_in(hk->outer, nk->outer);
}

/* The inner hash of one value, from the ipad midstate. */
WN_NI static inline void ni_inner(const ni_key *nk, const uint8_t *v, size_t len, __m128i s[2])
{
    __m128i m[4];
    uint8_t buf[128];
    s[0] = nk->inner[0];
    s[1] = nk->inner[1];
    size_t full = len / 64;
    for (size_t b = 0; b < full; b++) {
        ni_load_block(m, v + 64 * b);
        ni_compress(&s[0], &s[1], m[0], m[1], m[2], m[3]);
    }
    int nb = sha256_pad(buf, v + 64 * full, len - 64 * full, (uint64_t)len + 64);
    for (int b = 0; b < nb; b++) {
        ni_load_block(m, buf + 64 * b);
        ni_compress(&s[0], &s[1], m[0], m[1], m[2], m[3]);
    }
}

WN_NI static void hmac_one_ni(const ni_key *nk, const uint8_t *v, size_t len, char *hex)
{
    __m128i s[2], m[4];
    ni_inner(nk, v, len, s);
    ni_outer_block(s, m);
    s[0] = nk->outer[0];
    s[1] = nk->outer[1];
    ni_compress(&s[0], &s[1], m[0], m[1], m[2], m[3]);
    ni_hex(s, hex);
}

/* Two short values (<= 55 bytes each: one padded block) at once. */
WN_NI static void hmac_two_ni(const ni_key *nk, const uint8_t *va, size_t la, char *ha,
                              const uint8_t *vb, size_t lb, char *hb)
{
    uint8_t bufa[128], bufb[128];
    __m128i sa[2], sb[2], ma[4], mb[4];
    sha256_pad(bufa, va, la, (uint64_t)la + 64);
    sha256_pad(bufb, vb, lb, (uint64_t)lb + 64);
    ni_load_block(ma, bufa);
    ni_load_block(mb, bufb);
    sa[0] = sb[0] = nk->inner[0];
    sa[1] = sb[1] = nk->inner[1];
    ni_compress2(sa, sb, ma, mb);
    ni_outer_block(sa, ma);
    ni_outer_block(sb, mb);
    sa[0] = sb[0] = nk->outer[0];
    sa[1] = sb[1] = nk->outer[1];
    ni_compress2(sa, sb, ma, mb);
    ni_hex(sa, ha);
    ni_hex(sb, hb);
}

static int cpu_has_sha_ni(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
                 __builtin_cpu_supports("ssse3");
    }
    return cached;
}
#else
static int cpu_has_sha_ni(void) { return 0; }
#endif /* WN_X86 */

/* ------------------------------------------------------------------ Arrow buffers */

typedef struct {
    const uint8_t *data;
    Py_ssize_t data_len;
    const void *offsets;
    int width; /* 4 or 8 */
    const uint8_t *validity; /* NULL: no nulls */
    Py_ssize_t base;        /* the array's offset */
    Py_ssize_t n;
} arrow_in;

static inline int64_t in_off(const arrow_in *a, Py_ssize_t i)
{
    Py_ssize_t j = a->base + i;
    return a->width == 4 ? (int64_t)((const int32_t *)a->offsets)[j]
                         : ((const int64_t *)a->offsets)[j];
}

static inline int in_valid(const arrow_in *a, Py_ssize_t i)
{
    if (a->validity == NULL)
        return 1;
    Py_ssize_t j = a->base + i;
    return (a->validity[j >> 3] >> (j & 7)) & 1;
}

/* Buffers the parser filled in, released by in_release. */
typedef struct {
    Py_buffer offsets, data, validity;
    int have_data, have_validity;
} in_views;

static void in_release(in_views *v)
{
    PyBuffer_Release(&v->offsets);
    if (v->have_data)
        PyBuffer_Release(&v->data);
    if (v->have_validity)
        PyBuffer_Release(&v->validity);
}

/* Get the buffers and check that every index the kernels will touch is inside them (the
 * offsets themselves are checked row by row, with the GIL released). */
static int in_open(arrow_in *a, in_views *v, PyObject *offsets, PyObject *data,
                   PyObject *validity, Py_ssize_t base, Py_ssize_t n, int width)
{
    memset(v, 0, sizeof *v);
    if (width != 4 && width != 8) {
        PyErr_SetString(PyExc_ValueError, "offset_width must be 4 or 8");
        return -1;
    }
    if (base < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "offset and length must be >= 0");
        return -1;
    }
    if (PyObject_GetBuffer(offsets, &v->offsets, PyBUF_SIMPLE) < 0)
        return -1;
    if (data != Py_None) {
        if (PyObject_GetBuffer(data, &v->data, PyBUF_SIMPLE) < 0) {
            in_release(v);
            return -1;
        }
        v->have_data = 1;
    }
    if (validity != Py_None) {
        if (PyObject_GetBuffer(validity, &v->validity, PyBUF_SIMPLE) < 0) {
            in_release(v);
            return -1;
        }
        v->have_validity = 1;
    }
    if (n > (PY_SSIZE_T_MAX / 8) - base - 1 ||
        v->offsets.len < (base + n + 1) * (Py_ssize_t)width ||
        (v->have_validity && v->validity.len < (base + n + 7) / 8)) {
        in_release(v);
        PyErr_SetString(PyExc_ValueError, "buffers are shorter than offset + length");
        return -1;
    }
    a->offsets = v->offsets.buf;
    a->width = width;
    a->data = v->have_data ? (const uint8_t *)v->data.buf : (const uint8_t *)"";
    a->data_len = v->have_data ? v->data.len : 0;
    a->validity = v->have_validity ? (const uint8_t *)v->validity.buf : NULL;
    a->base = base;
    a->n = n;
    return 0;
}

/* ------------------------------------------------------------------ hmac_sha256_hex */

typedef struct {
    const arrow_in *in;
    const int32_t *out_offsets;
    char *out;
    const hmac_key *hk;
#ifdef WN_X86
    const ni_key *nk;
#endif
    int use_ni;
    Py_ssize_t n;
    Py_ssize_t next; /* the first row no thread has taken yet */
} hmac_job;

#ifdef WN_X86
WN_NI static void hmac_rows_ni(const hmac_job *job, Py_ssize_t i0, Py_ssize_t i1)
{
    const arrow_in *in = job->in;
    const ni_key *nk = job->nk;
    /* A short value waits here for a second one, to be hashed as a pair. */
    const uint8_t *pend = NULL;
    size_t pend_len = 0;
    char *pend_out = NULL;
    for (Py_ssize_t i = i0; i < i1; i++) {
        if (!in_valid(in, i))
            continue;
        int64_t s = in_off(in, i), e = in_off(in, i + 1);
        const uint8_t *v = in->data + s;
        size_t len = (size_t)(e - s);
        char *out = job->out + job->out_offsets[i];
        if (len > 55) {
            hmac_one_ni(nk, v, len, out);
        } else if (pend == NULL) {
            pend = v;
            pend_len = len;
            pend_out = out;
        } else {
            hmac_two_ni(nk, pend, pend_len, pend_out, v, len, out);
            pend = NULL;
        }
    }
    if (pend != NULL)
        hmac_one_ni(nk, pend, pend_len, pend_out);
}
#endif

static void hmac_rows(const hmac_job *job, Py_ssize_t i0, Py_ssize_t i1)
{
#ifdef WN_X86
    if (job->use_ni) {
        hmac_rows_ni(job, i0, i1);
        return;
    }
#endif
    const arrow_in *in = job->in;
    for (Py_ssize_t i = i0; i < i1; i++) {
        if (!in_valid(in, i))
            continue;
        int64_t s = in_off(in, i), e = in_off(in, i + 1);
        hmac_one_portable(job->hk, in->data + s, (size_t)(e - s), job->out + job->out_offsets[i]);
    }
}

#define WN_MAX_THREADS 16
#define WN_AUTO_THREADS_MAX 4
#define WN_ROWS_PER_THREAD 16384
#define WN_BATCH 4096 /* rows a thread takes at a time */

#ifdef WN_THREADS
/* Each thread takes the next batch of rows until none is left, so a thread on a busy core
 * does less of the work instead of holding up the others. */
static void hmac_work(hmac_job *job)
{
    for (;;) {
        Py_ssize_t i0 = __atomic_fetch_add(&job->next, WN_BATCH, __ATOMIC_RELAXED);
        if (i0 >= job->n)
            return;
        hmac_rows(job, i0, job->n - i0 > WN_BATCH ? i0 + WN_BATCH : job->n);
    }
}

static void *hmac_thread(void *arg)
{
    hmac_work((hmac_job *)arg);
    return NULL;
}
#endif

static int usable_cpus(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0)
            return c;
    }
#endif
#ifdef WN_THREADS
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
#else
    return 1;
#endif
}

/* Hash every row over `threads` threads, this one included (it alone, if no other thread
 * can be started). */
static void hmac_run(hmac_job *job, int threads)
{
#ifdef WN_THREADS
    if (threads > 1) {
        pthread_t tids[WN_MAX_THREADS];
        int started[WN_MAX_THREADS] = {0};
        job->next = 0;
        for (int t = 1; t < threads; t++)
            started[t] = pthread_create(&tids[t], NULL, hmac_thread, job) == 0;
        hmac_work(job);
        for (int t = 1; t < threads; t++)
            if (started[t])
                pthread_join(tids[t], NULL);
        return;
    }
#else
    (void)threads;
#endif
    hmac_rows(job, 0, job->n);
}

static PyObject *py_hmac_sha256_hex(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "", "", "", "", "", "", "portable", "threads", NULL};
    Py_buffer key;
    PyObject *offsets, *data, *validity;
    Py_ssize_t base, n;
    int width, portable = 0, threads = 0;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*OOOnni|$pi", kwlist, &key, &offsets,
                                     &data, &validity, &base, &n, &width, &portable, &threads))
        return NULL;
    if (key.len == 0) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "hash needs a non-empty key");
        return NULL;
    }
    if (threads < 0) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "threads must be >= 0");
        return NULL;
    }
    arrow_in in;
    in_views views;
    if (in_open(&in, &views, offsets, data, validity, base, n, width) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    hmac_key hk;
    hmac_key_init(&hk, (const uint8_t *)key.buf, (size_t)key.len);
    PyBuffer_Release(&key);

    PyObject *out_offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
    if (out_offsets == NULL) {
        in_release(&views);
        return NULL;
    }
    int32_t *oo = (int32_t *)PyBytes_AS_STRING(out_offsets);
    /* Output offsets (64 bytes per non-null row), and every input offset checked. */
    int bad = 0, overflow = 0;
    int64_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    oo[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = in_off(&in, i), e = in_off(&in, i + 1);
        if (s < 0 || e < s || e > in.data_len) {
            bad = 1;
            break;
        }
        if (in_valid(&in, i))
            total += 64;
        if (total > INT32_MAX) {
            overflow = 1;
            break;
        }
        oo[i + 1] = (int32_t)total;
    }
    Py_END_ALLOW_THREADS
    if (bad || overflow) {
        Py_DECREF(out_offsets);
        in_release(&views);
        PyErr_SetString(bad ? PyExc_ValueError : PyExc_OverflowError,
                        bad ? "offsets point outside the data buffer"
                            : "more than 2 GiB of digests: hash the array in slices");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        Py_DECREF(out_offsets);
        in_release(&views);
        return NULL;
    }
    hmac_job job;
    memset(&job, 0, sizeof job);
    job.in = &in;
    job.out_offsets = oo;
    job.out = PyBytes_AS_STRING(out);
    job.hk = &hk;
    job.use_ni = !portable && cpu_has_sha_ni();
    job.n = n;
#ifdef WN_X86
    ni_key nk;
    if (job.use_ni)
        ni_key_init(&nk, &hk);
    job.nk = &nk;
#endif
    if (threads == 0) {
        int cpus = usable_cpus();
        threads = cpus < WN_AUTO_THREADS_MAX ? cpus : WN_AUTO_THREADS_MAX;
        Py_ssize_t by_rows = n / WN_ROWS_PER_THREAD;
        if (by_rows < threads)
            threads = by_rows < 1 ? 1 : (int)by_rows;
    }
    if (threads > WN_MAX_THREADS)
        threads = WN_MAX_THREADS;
    if (threads > n)
        threads = n < 1 ? 1 : (int)n;
    Py_BEGIN_ALLOW_THREADS
    hmac_run(&job, threads);
    Py_END_ALLOW_THREADS
    in_release(&views);
    PyObject *result = PyTuple_Pack(2, out_offsets, out);
    Py_DECREF(out_offsets);
    Py_DECREF(out);
    return result;
}

/* ------------------------------------------------------------------ email_mask */

enum { C_AT = 1, C_SPACE = 2, C_DOT = 4 };

static uint8_t email_class[256];
static uint8_t redact_byte[256];
static uint8_t redact_keep[256]; /* 0 for UTF-8 continuation bytes: dropped */

static void email_tables_init(void)
{
    for (int c = 0; c < 256; c++) {
        uint8_t r = (uint8_t)c;
        if (c >= 'a' && c <= 'z')
            r = 'x';
        else if (c >= 'A' && c <= 'Z')
            r = 'X';
        else if (c >= '0' && c <= '9')
            r = '9';
        else if (c >= 0xC0)
            r = 'x';
        redact_byte[c] = r;
        redact_keep[c] = (c & 0xC0) != 0x80;
        email_class[c] = 0;
    }
    email_class['@'] = C_AT;
    email_class['.'] = C_DOT;
    email_class[' '] = email_class['\t'] = email_class['\n'] = C_SPACE;
    email_class['\f'] = email_class['\r'] = C_SPACE;
}

/* The index of the '@' if v is an address, else -1. */
static inline Py_ssize_t email_at(const uint8_t *v, size_t len)
{
    size_t i = 0;
    while (i < len && !(email_class[v[i]] & (C_AT | C_SPACE)))
        i++;
    if (i == 0 || i == len || v[i] != '@')
        return -1;
    size_t at = i;
    int after_dot = 1, dots = 0; /* a label may not start the domain empty */
    for (i = at + 1; i < len; i++) {
        uint8_t c = email_class[v[i]];
        if (c == 0) {
            after_dot = 0;
        } else if (c == C_DOT) {
            if (after_dot)
                return -1;
            after_dot = 1;
            dots++;
        } else {
            return -1; /* a second '@' or a space */
        }
    }
    if (after_dot || dots == 0)
        return -1;
    return (Py_ssize_t)at;
}

static inline size_t redact_into(const uint8_t *v, size_t len, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = v[i];
        out[o] = redact_byte[c];
        o += redact_keep[c];
    }
    return o;
}

/* One value: "****@domain" or its redaction written at out; returns the output length. */
static inline size_t email_one_scalar(const uint8_t *v, size_t len, uint8_t *out)
{
    Py_ssize_t at = email_at(v, len);
    if (at < 0)
        return redact_into(v, len, out);
    memcpy(out, "****@", 5);
    memcpy(out + 5, v + at + 1, len - (size_t)at - 1);
    return len + 4 - (size_t)at;
}

#ifdef WN_X86
/* Redaction sixteen bytes at a time while they are ASCII; from the first non-ASCII byte on,
 * byte by byte (continuation bytes are dropped). May write 64 bytes past out + len. */
static inline size_t redact_sse2(const uint8_t *v, size_t len, uint8_t *out)
{
    const __m128i a1 = _mm_set1_epi8('a' - 1), z1 = _mm_set1_epi8('z' + 1);
    const __m128i A1 = _mm_set1_epi8('A' - 1), Z1 = _mm_set1_epi8('Z' + 1);
    const __m128i d1 = _mm_set1_epi8('0' - 1), d9 = _mm_set1_epi8('9' + 1);
    const __m128i xs = _mm_set1_epi8('x'), Xs = _mm_set1_epi8('X'), ns = _mm_set1_epi8('9');
    size_t k = 0;
    for (; k < len; k += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(v + k));
        if (_mm_movemask_epi8(x) != 0)
            break; /* a byte >= 0x80 in this piece */
        __m128i lo = _mm_and_si128(_mm_cmpgt_epi8(x, a1), _mm_cmplt_epi8(x, z1));
        __m128i up = _mm_and_si128(_mm_cmpgt_epi8(x, A1), _mm_cmplt_epi8(x, Z1));
        __m128i dg = _mm_and_si128(_mm_cmpgt_epi8(x, d1), _mm_cmplt_epi8(x, d9));
        __m128i any = _mm_or_si128(_mm_or_si128(lo, up), dg);
        __m128i repl = _mm_or_si128(_mm_or_si128(_mm_and_si128(lo, xs), _mm_and_si128(up, Xs)),
                                    _mm_and_si128(dg, ns));
        _mm_storeu_si128((__m128i *)(out + k), _mm_or_si128(_mm_andnot_si128(any, x), repl));
    }
    if (k >= len)
        return len;
    return k + redact_into(v + k, len - k, out + k);
}
#endif

#ifdef WN_X86
/* SSE2 (every x86-64 has it) for values of up to 64 bytes: one bit per byte for '@', '.'
 * and the bytes <= 0x20 (RE2's spaces are among them; such a rare value takes the exact
 * scalar test), then the address test on the bitmasks. The caller guarantees
 * EMAIL_SIMD_READ readable bytes at v and EMAIL_SLACK writable bytes past an output's end. */
#define EMAIL_SIMD_MAX 64
#define EMAIL_SIMD_READ 96

static inline size_t email_one_sse2(const uint8_t *v, size_t len, uint8_t *out)
{
    const __m128i at_c = _mm_set1_epi8('@'), dot_c = _mm_set1_epi8('.');
    const __m128i ctl_c = _mm_set1_epi8(0x20);
    uint64_t at = 0, low = 0, dot = 0;
    for (unsigned k = 0; k < 4; k++) { /* always 64 bytes: no branch on the length */
        __m128i x = _mm_loadu_si128((const __m128i *)(v + 16 * k));
        at |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, at_c)) << (16 * k);
        dot |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(x, dot_c)) << (16 * k);
        low |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(x, ctl_c), x))
               << (16 * k);
    }
    uint64_t in_value = len >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << len) - 1;
    at &= in_value;
    dot &= in_value;
    if (low & in_value)
        return email_one_scalar(v, len, out);
    /* one '@', not first; the domain after it: non-empty labels (no leading, trailing or
     * doubled dot) and at least one dot */
    if (at != 0 && (at & (at - 1)) == 0 && !(at & 1)) {
        unsigned p = (unsigned)__builtin_ctzll(at);
        uint64_t domain_dots = p >= 62 ? 0 : dot & ~(((uint64_t)2 << p) - 1);
        if (domain_dots != 0 && !((dot >> (p + 1)) & 1) && !((dot >> (len - 1)) & 1) &&
            (domain_dots & (domain_dots >> 1)) == 0) {
            size_t dlen = len - p - 1;
            memcpy(out, "****@", 5);
            _mm_storeu_si128((__m128i *)(out + 5), _mm_loadu_si128((const __m128i *)(v + p + 1)));
            _mm_storeu_si128((__m128i *)(out + 21),
                             _mm_loadu_si128((const __m128i *)(v + p + 17)));
            for (size_t k = 32; k < dlen; k += 16)
                _mm_storeu_si128((__m128i *)(out + 5 + k),
                                 _mm_loadu_si128((const __m128i *)(v + p + 1 + k)));
            return 5 + dlen;
        }
    }
    return redact_sse2(v, len, out);
}
#endif

#define EMAIL_SLACK 80 /* bytes the SSE2 path may write past an output's end */

static PyObject *py_email_mask(PyObject *self, PyObject *args)
{
    PyObject *offsets, *data, *validity;
    Py_ssize_t base, n;
    int width;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnni", &offsets, &data, &validity, &base, &n, &width))
        return NULL;
    arrow_in in;
    in_views views;
    if (in_open(&in, &views, offsets, data, validity, base, n, width) < 0)
        return NULL;
    /* An output is at most 3 bytes longer than its input ("a@b.c" -> "****@b.c"). */
    int64_t first = n ? in_off(&in, 0) : 0, last = n ? in_off(&in, n) : 0;
    if (first < 0 || last < first || last > in.data_len) {
        in_release(&views);
        PyErr_SetString(PyExc_ValueError, "offsets point outside the data buffer");
        return NULL;
    }
    int64_t bound = (last - first) + 3 * (int64_t)n + EMAIL_SLACK;
    PyObject *out_offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * width);
    PyObject *out = out_offsets ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound) : NULL;
    if (out == NULL) {
        Py_XDECREF(out_offsets);
        in_release(&views);
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    char *oo = PyBytes_AS_STRING(out_offsets);
    int bad = 0;
    int64_t pos = 0;
    Py_BEGIN_ALLOW_THREADS
    if (width == 4)
        ((int32_t *)oo)[0] = 0;
    else
        ((int64_t *)oo)[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = in_off(&in, i), e = in_off(&in, i + 1);
        /* rows stay inside [first, last], so the output stays inside its bound */
        if (s < first || e < s || e > last) {
            bad = 1;
            break;
        }
        if (in_valid(&in, i)) {
            const uint8_t *v = in.data + s;
            size_t len = (size_t)(e - s);
#ifdef WN_X86
            if (len <= EMAIL_SIMD_MAX && s + EMAIL_SIMD_READ <= in.data_len)
                pos += (int64_t)email_one_sse2(v, len, o + pos);
            else
#endif
                pos += (int64_t)email_one_scalar(v, len, o + pos);
        }
        if (width == 4)
            ((int32_t *)oo)[i + 1] = (int32_t)pos;
        else
            ((int64_t *)oo)[i + 1] = pos;
        if (width == 4 && pos > INT32_MAX) {
            bad = 2;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    in_release(&views);
    if (bad) {
        Py_DECREF(out_offsets);
        Py_DECREF(out);
        PyErr_SetString(bad == 1 ? PyExc_ValueError : PyExc_OverflowError,
                        bad == 1 ? "offsets are not monotonic"
                                 : "masked values exceed 2 GiB: use large_string");
        return NULL;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)pos) < 0) {
        Py_DECREF(out_offsets);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, out_offsets, out);
    Py_DECREF(out_offsets);
    Py_DECREF(out);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyObject *py_sha_ni_available(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(cpu_has_sha_ni());
}

static PyMethodDef native_methods[] = {
    {"hmac_sha256_hex", (PyCFunction)(void (*)(void))py_hmac_sha256_hex,
     METH_VARARGS | METH_KEYWORDS,
     "hmac_sha256_hex(key, offsets, data, validity, offset, length, offset_width, *, "
     "portable=False, threads=0) -> (offsets, data): HMAC-SHA256 hex of every value."},
    {"email_mask", py_email_mask, METH_VARARGS,
     "email_mask(offsets, data, validity, offset, length, offset_width) -> (offsets, data): "
     "warden's email operator."},
    {"sha_ni_available", py_sha_ni_available, METH_NOARGS,
     "Whether hmac_sha256_hex uses the CPU's SHA instructions."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "warden.masking._native",
    "Native kernels for warden's hash and email masks over Arrow buffers.", -1,
    native_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    email_tables_init();
    (void)cpu_has_sha_ni();
    return PyModule_Create(&native_module);
}
