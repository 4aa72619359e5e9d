/* Native CPU kernel of the ACiM engine: a binary GEMM by popcount fused with the ADC
 * epilogue, so the bit-plane MACs never leave the core's caches. The interface is one
 * struct, `asim_run` (engine.h), mirrored on the Python side by asim/engine/native.py.
 *
 * asim_run_call computes Y = X @ W for the rows of one call over all tiles:
 *   1. pack: bit b of every activation code, 64 reduction rows per 64-bit word;
 *   2. counts: the column MAC of every (weight bit, activation bit) pair of a tile is the
 *      popcount of (activation word AND weight word), summed over the tile's words (int32);
 *   3. epilogue: per (weight bit, cycle) the integer cycle count m is converted as the
 *      plan says (engine.h ASIM_CYC_*): a noise-free ADC runs the spec's float32 chain of
 *      §4.1/§8.1 (the torch backend tabulates the same chain for every count), a noisy
 *      conversion draws its code from the exact code table with one 32-bit uniform of the
 *      counter-based stream (sampling.h), a voted one draws K codes and keeps the mode. The float32 shift-and-add follows the spec's order (tile,
 *      then weight bit, then cycle, descending), as the torch backend does.
 * Every float step is a single IEEE float32 operation: build with -ffp-contract=off and
 * without -ffast-math. Threads (OpenMP, or pthreads without it) split the rows for packing,
 * then take (row block, output range) items; no result depends on the thread count or on how rows are chunked:
 * every random draw is a pure function of (call key, sample, position, output, draw index).
 *
 * With AVX-512 (F, BW, DQ, VPOPCNTDQ) the pack and count loops use intrinsics; with AVX2 (and
 * no AVX-512) each drawn conversion is one fused pass of hash, code and value; otherwise
 * portable C gives the same bits.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine.h"
#include "sampling.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define ACIM_AVX512 1
#else
#define ACIM_AVX512 0
#endif
/* With AVX2 (AVX-512 CPUs have it too), a drawn conversion is one fused 8-lane pass
 * (draw_add8). */
#if defined(__AVX2__)
#include <immintrin.h>
#define ACIM_AVX2 1
#else
#define ACIM_AVX2 0
#endif

#define MB ASIM_MB
#define IB ASIM_IB
#define OB 4         /* outputs per epilogue block: OB*MB independent accumulation chains */
#define NL (OB * MB) /* lanes of one epilogue block: lane ob*MB + t is (row t, output ob) */
#define VT 64 /* codes per value table: ADCs of up to 6 bits look their values up */

int32_t asim_simd(void) { return ACIM_AVX512; }
int64_t asim_run_size(void) { return (int64_t)sizeof(asim_run); }
int64_t asim_bucket_size(void) { return (int64_t)sizeof(asim_bucket_table); }

/* The codes q[t] of NL conversions of counts mc[t] with uniforms u[t]: one lookup in the
 * bucket table and one compare (the rare lanes whose bucket holds several thresholds scan
 * them), or, without a bucket table, asim_sample_code. */
static inline void draw_codes(const asim_bucket_table *bt, const asim_code_table *tab,
                              const int32_t *mc, const uint32_t *u, int32_t *q) {
    if (bt == NULL || bt->entry == NULL) {
        for (int t = 0; t < NL; ++t) q[t] = asim_sample_code(tab, mc[t], u[t]);
        return;
    }
    const uint32_t *entry = (const uint32_t *)bt->entry;
    const int32_t bits = bt->bits, sh = 32 - bt->bits, m0 = bt->m_min;
    const uint32_t lowmask = (1u << sh) - 1u, codemask = (1u << ASIM_BUCKET_CODE_BITS) - 1u;
    int32_t at[NL];
    uint16_t several[NL / 16]; /* per group of 16 lanes: the lanes with d = 0 */
    uint32_t any = 0;
#if ACIM_AVX512
    const __m512i vm0 = _mm512_set1_epi32(m0), vlow = _mm512_set1_epi32((int32_t)lowmask);
    const __m512i vcode = _mm512_set1_epi32((int32_t)codemask), one = _mm512_set1_epi32(1);
    const __m128i vbits = _mm_cvtsi32_si128(bits), vsh = _mm_cvtsi32_si128(sh);
    for (int t = 0; t < NL; t += 16) {
        const __m512i vu = _mm512_loadu_si512(u + t);
        const __m512i ix = _mm512_add_epi32(
            _mm512_sll_epi32(_mm512_sub_epi32(_mm512_loadu_si512(mc + t), vm0), vbits),
            _mm512_srl_epi32(vu, vsh));
        _mm512_storeu_si512(at + t, ix);
        const __m512i e = _mm512_i32gather_epi32(ix, (const void *)entry, 4);
        const __m512i d = _mm512_srli_epi32(e, ASIM_BUCKET_CODE_BITS);
        const __mmask16 up = _mm512_cmpge_epu32_mask(_mm512_and_si512(vu, vlow), d);
        const __m512i c = _mm512_and_si512(e, vcode);
        _mm512_storeu_si512(q + t, _mm512_mask_add_epi32(c, up, c, one));
        several[t / 16] = _mm512_cmpeq_epi32_mask(d, _mm512_setzero_si512());
        any |= several[t / 16];
    }
#else
    for (int g = 0; g < NL / 16; ++g) { /* the mask in a register, not through memory */
        uint32_t sv = 0;
        for (int l = 0; l < 16; ++l) {
            const int t = 16 * g + l;
            at[t] = ((mc[t] - m0) << bits) + (int32_t)(u[t] >> sh);
            const uint32_t e = entry[at[t]], d = e >> ASIM_BUCKET_CODE_BITS;
            q[t] = (int32_t)(e & codemask) + ((u[t] & lowmask) >= d);
            sv |= (uint32_t)(d == 0) << l;
        }
        several[g] = (uint16_t)sv;
        any |= sv;
    }
#endif
    if (any) { /* d = 0 (c + 1 so far): count the bucket's thresholds instead */
        const int32_t *scan = (const int32_t *)bt->scan;
        const uint32_t *thr = (const uint32_t *)bt->thr;
        for (int g = 0; g < NL / 16; ++g)
            for (uint32_t lanes = several[g]; lanes; lanes &= lanes - 1) {
            const int t = 16 * g + __builtin_ctz(lanes);
            const uint32_t e = entry[at[t]];
            const int32_t s = scan[at[t]];
            const int32_t n = (int32_t)((uint32_t)s >> ASIM_BUCKET_SCAN_SHIFT);
            const uint32_t *th = thr + (s & ((1 << ASIM_BUCKET_SCAN_SHIFT) - 1));
            int32_t k = (int32_t)(e & codemask);
            for (int32_t j = 0; j < n; ++j) k += u[t] >= th[j];
            q[t] = k;
            }
    }
}

#if ACIM_AVX2
/* x * m mod 2^64 in each 64-bit lane, m given as its 32-bit halves (m_lo, m_hi) in every
 * lane: lo*lo + ((hi*lo + lo*hi) << 32), three 32x32 -> 64-bit multiplies. */
static inline __m256i mul64(__m256i x, __m256i m_lo, __m256i m_hi) {
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), m_lo),
                                           _mm256_mul_epu32(x, m_hi));
    return _mm256_add_epi64(_mm256_mul_epu32(x, m_lo), _mm256_slli_epi64(cross, 32));
}

/* The first two rounds of asim_mix64 on four 64-bit lanes. */
static inline __m256i mix64_head(__m256i x) {
    const __m256i l1 = _mm256_set1_epi64x((int64_t)(ASIM_MIX_M1 & 0xffffffffULL));
    const __m256i h1 = _mm256_set1_epi64x((int64_t)(ASIM_MIX_M1 >> 32));
    const __m256i l2 = _mm256_set1_epi64x((int64_t)(ASIM_MIX_M2 & 0xffffffffULL));
    const __m256i h2 = _mm256_set1_epi64x((int64_t)(ASIM_MIX_M2 >> 32));
    x = mul64(_mm256_xor_si256(x, _mm256_srli_epi64(x, ASIM_MIX_S1)), l1, h1);
    return mul64(_mm256_xor_si256(x, _mm256_srli_epi64(x, ASIM_MIX_S2)), l2, h2);
}

/* asim_draw_u32(ek[t], draw) of 8 lanes t (gd = draw * ASIM_DRAW_GAMMA in every lane). The
 * last round's upper half is hi ^ (hi >> S3), hi the upper half before it: x >> S3 moves
 * only bits at or above 32 + S3 into the upper half. */
static inline __m256i draw8(const uint64_t *ek, __m256i gd) {
    const __m256i a = mix64_head(_mm256_add_epi64(_mm256_loadu_si256((const __m256i *)ek), gd));
    const __m256i b =
        mix64_head(_mm256_add_epi64(_mm256_loadu_si256((const __m256i *)(ek + 4)), gd));
    /* upper halves: lanes 0 1 4 5 | 2 3 6 7, then in order */
    const __m256i hi = _mm256_permute4x64_epi64(
        _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b),
                                              _MM_SHUFFLE(3, 1, 3, 1))),
        _MM_SHUFFLE(3, 1, 2, 0));
    return _mm256_xor_si256(hi, _mm256_srli_epi32(hi, ASIM_MIX_S3));
}

/* draw_codes for 8 lanes (bt->entry set): the codes of counts mc[0..7] with uniforms vu. */
static inline __m256i codes8(const asim_bucket_table *bt, const int32_t *mc, __m256i vu) {
    const uint32_t *entry = (const uint32_t *)bt->entry;
    const int32_t sh = 32 - bt->bits;
    const __m256i ix = _mm256_add_epi32(
        _mm256_sll_epi32(_mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)mc),
                                          _mm256_set1_epi32(bt->m_min)),
                         _mm_cvtsi32_si128(bt->bits)),
        _mm256_srl_epi32(vu, _mm_cvtsi32_si128(sh)));
    const __m256i e = _mm256_i32gather_epi32((const int *)entry, ix, 4);
    const __m256i d = _mm256_srli_epi32(e, ASIM_BUCKET_CODE_BITS);
    /* d and the low bits are below 2^24: a signed compare; c + (low >= d) = c + 1 - (d > low) */
    const __m256i low = _mm256_and_si256(vu, _mm256_set1_epi32((int32_t)((1u << sh) - 1u)));
    __m256i q = _mm256_add_epi32(
        _mm256_and_si256(e, _mm256_set1_epi32((1 << ASIM_BUCKET_CODE_BITS) - 1)),
        _mm256_add_epi32(_mm256_set1_epi32(1), _mm256_cmpgt_epi32(d, low)));
    const int several =
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, _mm256_setzero_si256())));
    if (several) { /* d = 0: count the bucket's thresholds (as draw_codes does) */
        int32_t qq[8], at[8];
        uint32_t uu[8];
        _mm256_storeu_si256((__m256i *)qq, q);
        _mm256_storeu_si256((__m256i *)at, ix);
        _mm256_storeu_si256((__m256i *)uu, vu);
        const int32_t *scan = (const int32_t *)bt->scan;
        const uint32_t *thr = (const uint32_t *)bt->thr;
        for (int lanes = several; lanes; lanes &= lanes - 1) {
            const int t = __builtin_ctz((unsigned)lanes);
            const int32_t sc = scan[at[t]];
            const int32_t n = (int32_t)((uint32_t)sc >> ASIM_BUCKET_SCAN_SHIFT);
            const uint32_t *th = thr + (sc & ((1 << ASIM_BUCKET_SCAN_SHIFT) - 1));
            int32_t c = (int32_t)(entry[at[t]] & ((1u << ASIM_BUCKET_CODE_BITS) - 1u));
            for (int32_t j = 0; j < n; ++j) c += uu[t] >= th[j];
            qq[t] = c;
        }
        q = _mm256_loadu_si256((const __m256i *)qq);
    }
    return q;
}

/* One drawn conversion of `lanes` lanes (NL, or MB: one output block) in one pass per 8
 * lanes: the uniforms (draws draw .. draw + K - 1 of each element), their codes, for K > 1
 * the vote (asim_vote: the most frequent code, ties to the smallest), the code's value
 * (tv[q], or fl(fl(q/A)*F), with rec fl(fl(q*invA)*F)) and y + k * value: the same
 * operations as drawn_codes and add_values, lane by lane. */
static void draw_add8(const asim_bucket_table *bt, const int32_t *mc, const uint64_t *ek,
                      uint64_t draw, int32_t K, const float *tv, float k, float A, float F,
                      int rec, float *y, int lanes) {
    const __m256 vk = _mm256_set1_ps(k), vA = _mm256_set1_ps(A), vF = _mm256_set1_ps(F);
    const __m256 vinvA = _mm256_set1_ps(1.0f / A);
    const __m256i gd = _mm256_set1_epi64x((int64_t)(draw * ASIM_DRAW_GAMMA));
    const __m256i gstep = _mm256_set1_epi64x((int64_t)ASIM_DRAW_GAMMA);
    for (int t = 0; t < lanes; t += 8) {
        __m256i q = codes8(bt, mc + t, draw8(ek + t, gd));
        if (K > 1) {
            __m256i qs[ASIM_MAXVOTES];
            __m256i g = gd;
            qs[0] = q;
            for (int32_t s = 1; s < K; ++s) {
                g = _mm256_add_epi64(g, gstep);
                qs[s] = codes8(bt, mc + t, draw8(ek + t, g));
            }
            __m256i best = qs[0], bestn = _mm256_setzero_si256(); /* minus the counts */
            for (int32_t i = 0; i < K; ++i) {
                __m256i n = _mm256_setzero_si256();
                for (int32_t j = 0; j < K; ++j) n = _mm256_add_epi32(n, _mm256_cmpeq_epi32(qs[j], qs[i]));
                const __m256i take = _mm256_or_si256(
                    _mm256_cmpgt_epi32(bestn, n),
                    _mm256_and_si256(_mm256_cmpeq_epi32(n, bestn), _mm256_cmpgt_epi32(best, qs[i])));
                best = _mm256_blendv_epi8(best, qs[i], take);
                bestn = _mm256_blendv_epi8(bestn, n, take);
            }
            q = best;
        }
        __m256 v;
        if (tv) v = _mm256_i32gather_ps(tv, q, 4);
        else if (rec) v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), vinvA), vF);
        else v = _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(q), vA), vF);
        _mm256_storeu_ps(y + t, _mm256_add_ps(_mm256_loadu_ps(y + t), _mm256_mul_ps(vk, v)));
    }
}
#endif

/* Test entry: the codes of n conversions as the kernel draws them (bucket table when
 * bt->entry is set, else asim_sample_code), so tests can compare them with the torch sampler. */
void asim_draw_codes(const asim_bucket_table *bt, const asim_code_table *tab, const int32_t *m,
                     const uint32_t *u, int32_t *q, int64_t n) {
    int32_t mm[NL], qq[NL];
    uint32_t uu[NL];
    for (int64_t s = 0; s < n; s += NL) {
        for (int t = 0; t < NL; ++t) {
            mm[t] = s + t < n ? m[s + t] : m[0];
            uu[t] = s + t < n ? u[s + t] : u[0];
        }
#if ACIM_AVX2
        if (bt && bt->entry) {
            for (int t = 0; t < NL; t += 8)
                _mm256_storeu_si256((__m256i *)(qq + t),
                                    codes8(bt, mm + t, _mm256_loadu_si256((const __m256i *)(uu + t))));
        } else
#endif
            draw_codes(bt, tab, mm, uu, qq);
        for (int t = 0; t < NL && s + t < n; ++t) q[s + t] = qq[t];
    }
}

/* The multi-level count mc[t] of one (weight bit, cycle) pair: the bit-plane counts of the
 * cycle's activation bits, weighted by their position in the cycle (spec §5). `base` is the
 * weight bit's first row of cnt (i * x). */
static inline void cycle_counts(int32_t (*cnt)[NL], int32_t base, const int32_t *bits,
                                int32_t nb, int32_t *mc) {
    const int32_t *c0 = cnt[base + bits[0]];
    for (int t = 0; t < NL; ++t) mc[t] = c0[t];
    for (int32_t b = 1; b < nb; ++b) {
        const int32_t *cb = cnt[base + bits[b]];
        for (int t = 0; t < NL; ++t) mc[t] += cb[t] << b;
    }
}

/* The codes q[t] of NL drawn conversions of counts mc[t] (portable path): K = 1 draws one
 * code per lane (draw number `draw`), K > 1 draws K (draw .. draw + K - 1) and keeps their
 * mode (spec §8.2). */
static inline void drawn_codes(const asim_bucket_table *bt, const asim_code_table *tab,
                               const int32_t *mc, const uint64_t *ek, uint64_t draw, int32_t K,
                               int32_t *q) {
    uint32_t u[NL];
    if (K == 1) {
        for (int t = 0; t < NL; ++t) u[t] = asim_draw_u32(ek[t], draw);
        draw_codes(bt, tab, mc, u, q);
        return;
    }
    int32_t qs[ASIM_MAXVOTES][NL], codes[ASIM_MAXVOTES];
    for (int32_t s = 0; s < K; ++s) {
        for (int t = 0; t < NL; ++t) u[t] = asim_draw_u32(ek[t], draw + (uint64_t)s);
        draw_codes(bt, tab, mc, u, qs[s]);
    }
    for (int t = 0; t < NL; ++t) {
        for (int32_t s = 0; s < K; ++s) codes[s] = qs[s][t];
        q[t] = asim_vote(codes, K);
    }
}

/* y[t] + k * the value of code q[t] for t < lanes: tv[q] with a value table, else
 * fl(fl(q/A)*F) (rec: fl(fl(q*invA)*F)); the portable twin of draw_add8's accumulation. */
static inline void add_values(const int32_t *q, const float *tv, float k, float A, float F,
                              int rec, float *y, int lanes) {
    const float invA = 1.0f / A;
    if (tv) {
        for (int t = 0; t < lanes; ++t) y[t] = y[t] + k * tv[q[t]];
    } else if (rec) {
        for (int t = 0; t < lanes; ++t) y[t] = y[t] + k * (((float)q[t] * invA) * F);
    } else {
        for (int t = 0; t < lanes; ++t) y[t] = y[t] + k * (((float)q[t] / A) * F);
    }
}

/* ---------------------------------------------------------------------------------------
 * Bit packing. Codes are integer-valued: kind 0 float32, 1 int32, 2 one byte (int8 or
 * uint8; int8 only for nbits <= 8). Bit b of the two's-complement code of codes[m*ld + r],
 * r in [r0, r1), goes to bit (r - r0) % 64 of word out[b*sb + wd*sw + m*sm],
 * wd = (r - r0) / 64.
 */

static inline void pack_word(const void *codes, int32_t kind, int64_t at, int64_t cnt,
                             int32_t nbits, uint64_t *words) {
    for (int32_t b = 0; b < nbits; ++b) words[b] = 0;
#if ACIM_AVX512
    if (kind == ASIM_KIND_I8) {
        const __mmask64 lm = cnt >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << cnt) - 1);
        const __m512i v = _mm512_maskz_loadu_epi8(lm, (const uint8_t *)codes + at);
        for (int32_t b = 0; b < nbits; ++b)
            words[b] = _mm512_test_epi8_mask(v, _mm512_set1_epi8((char)(1u << b)));
        return;
    }
    for (int64_t g = 0; g < 4 && 16 * g < cnt; ++g) {
        const int64_t c = cnt - 16 * g;
        const __mmask16 lm = c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << c) - 1);
        __m512i v;
        if (kind == ASIM_KIND_F32)
            v = _mm512_cvttps_epi32(_mm512_maskz_loadu_ps(lm, (const float *)codes + at + 16 * g));
        else
            v = _mm512_maskz_loadu_epi32(lm, (const int32_t *)codes + at + 16 * g);
        for (int32_t b = 0; b < nbits; ++b)
            words[b] |= (uint64_t)_mm512_test_epi32_mask(v, _mm512_set1_epi32((int32_t)(1u << b)))
                        << (16 * g);
    }
#else
    for (int64_t r = 0; r < cnt; ++r) {
        uint32_t u;
        if (kind == ASIM_KIND_F32) u = (uint32_t)(int32_t)((const float *)codes)[at + r];
        else if (kind == ASIM_KIND_I32) u = (uint32_t)((const int32_t *)codes)[at + r];
        else u = (uint32_t)((const uint8_t *)codes)[at + r];
        for (int32_t b = 0; b < nbits; ++b) words[b] |= (uint64_t)((u >> b) & 1u) << r;
    }
#endif
}

/* Rows m0..m1 of codes[m*ld + r], or, with row_off non-NULL, of the codes at element
 * row_off[m] + col_off[r] (a conv's patches, read in place). */
static void pack_rows(const void *codes, int32_t kind, int64_t ld, const int64_t *row_off,
                      const int64_t *col_off, int64_t m0, int64_t m1, int64_t r0, int64_t r1,
                      int32_t nbits, uint64_t *out, int64_t sb, int64_t sw, int64_t sm) {
    const int64_t nw = (r1 - r0 + 63) / 64;
    uint64_t words[ASIM_MAXBITS];
    union { uint8_t b[64]; uint32_t u[64]; } tmp;
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t wd = 0; wd < nw; ++wd) {
            const int64_t ra = r0 + 64 * wd;
            const int64_t cnt = r1 - ra < 64 ? r1 - ra : 64;
            if (row_off) { /* gather the word's codes, then pack them as a contiguous run */
                const int64_t *co = col_off + ra;
                if (kind == ASIM_KIND_I8) {
                    const uint8_t *src = (const uint8_t *)codes + row_off[m];
                    for (int64_t k = 0; k < cnt; ++k) tmp.b[k] = src[co[k]];
                } else {
                    const uint32_t *src = (const uint32_t *)codes + row_off[m];
                    for (int64_t k = 0; k < cnt; ++k) tmp.u[k] = src[co[k]];
                }
                pack_word(&tmp, kind, 0, cnt, nbits, words);
            } else {
                pack_word(codes, kind, m * ld + ra, cnt, nbits, words);
            }
            for (int32_t b = 0; b < nbits; ++b) out[b * sb + wd * sw + m * sm] = words[b];
        }
}

void acim_pack(const void *codes, int32_t kind, int64_t ld, int64_t m0, int64_t m1, int64_t r0,
               int64_t r1, int32_t nbits, uint64_t *out, int64_t sb, int64_t sw, int64_t sm) {
    pack_rows(codes, kind, ld, NULL, NULL, m0, m1, r0, r1, nbits, out, sb, sw, sm);
}

/* ---------------------------------------------------------------------------------------
 * Counts of one tile for one output column o and MB rows from mb:
 * cnt[i*x + j][t] = popcount over the tile of (activation bit j of row mb+t) AND (weight
 * bit i of column o). xp: the tile's activation planes [x][nw][Mpad]; wo: column o's weight
 * planes [wpad][nw].
 */
static void tile_counts(const uint64_t *xp, const uint64_t *wo, int64_t nw, int64_t Mpad,
                        int64_t mb, int32_t wpad, int32_t x, int32_t (*cnt)[NL]) {
#if ACIM_AVX512
    for (int32_t ib = 0; ib < wpad; ib += IB) {
        for (int32_t j = 0; j < x; ++j) {
            __m512i acc[IB][MB / 8];
            for (int ii = 0; ii < IB; ++ii)
                for (int k = 0; k < MB / 8; ++k) acc[ii][k] = _mm512_setzero_si512();
            const uint64_t *xj = xp + (int64_t)j * nw * Mpad + mb;
            for (int64_t wd = 0; wd < nw; ++wd) {
                __m512i xv[MB / 8];
                for (int k = 0; k < MB / 8; ++k)
                    xv[k] = _mm512_loadu_si512((const void *)(xj + wd * Mpad + 8 * k));
                for (int ii = 0; ii < IB; ++ii) {
                    const __m512i wv = _mm512_set1_epi64((long long)wo[(ib + ii) * nw + wd]);
                    for (int k = 0; k < MB / 8; ++k)
                        acc[ii][k] = _mm512_add_epi64(
                            acc[ii][k], _mm512_popcnt_epi64(_mm512_and_si512(xv[k], wv)));
                }
            }
            for (int ii = 0; ii < IB; ++ii)
                for (int k = 0; k < MB / 8; ++k)
                    _mm256_storeu_si256((__m256i *)&cnt[(ib + ii) * x + j][8 * k],
                                        _mm512_cvtepi64_epi32(acc[ii][k]));
        }
    }
#else
    for (int32_t i = 0; i < wpad; ++i)
        for (int32_t j = 0; j < x; ++j) {
            int64_t acc[MB];
            for (int t = 0; t < MB; ++t) acc[t] = 0;
            const uint64_t *xj = xp + (int64_t)j * nw * Mpad + mb;
            for (int64_t wd = 0; wd < nw; ++wd) {
                const uint64_t wv = wo[i * nw + wd];
                for (int t = 0; t < MB; ++t) acc[t] += __builtin_popcountll(xj[wd * Mpad + t] & wv);
            }
            for (int t = 0; t < MB; ++t) cnt[i * x + j][t] = (int32_t)acc[t];
        }
#endif
}

/* What the threads of one call share. */
typedef struct {
    const asim_run *R;
    int64_t Mpad;
    uint64_t *xpk;        /* per tile: [x][nw_t][Mpad] */
    const int64_t *xoff;  /* word offset of each tile in xpk */
    int noisy;            /* any conversion draws a code */
    float *vtab;          /* [ncyc][VT] value fl(fl(q/A)*F) of code q, or NULL (A >= VT) */
    int table_only;       /* every conversion: ADC through vtab (cyc_qmul != 0) or exact */
    int uniform;          /* every cycle has the same full scale: one value table */
    int exact_products;   /* table_only, and every k * v is exact (k a power of two, no
                             overflow or subnormal): y + k * v may be one fused op */
    int int_codes;        /* table_only, and R->cyc_code gives each ADC cycle's code in
                             integer arithmetic instead of convert, multiply and round */
    int32_t nthreads;
    int64_t noc, ochunk, nitems;
    int64_t next;         /* work counter (atomic) */
} ctx_t;

#if ACIM_AVX512
/* The value table's entry of each of 16 codes q (0..63): the 64 entries are held in
 * t[0..3] (codes 0-15, 16-31, 32-47, 48-63). Two independent permutes and a blend (measured
 * faster than chaining two masked permutes, or skipping the second when every q < 32). */
static inline __m512 code_value16(__m512i q, const __m512 *t) {
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(q, _mm512_set1_epi32(32)),
                                _mm512_permutex2var_ps(t[0], q, t[1]),
                                _mm512_permutex2var_ps(t[2], q, t[3]));
}

/* The value of code rne(m * qmul) for 16 float counts m. */
static inline __m512 adc_value16(__m512 m, __m512 vq, const __m512 *t) {
    return code_value16(_mm512_cvt_roundps_epi32(_mm512_mul_ps(m, vq),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                        t);
}

static inline void load_table(const float *tv, __m512 *t) {
    for (int k = 0; k < 4; ++k) t[k] = _mm512_loadu_ps(tv + 16 * k);
}
#endif

/* The cycle sequence of one tile on its counts, accumulated into y[NL] (spec order; the
 * lanes are independent chains, so the adds of OB outputs overlap instead of waiting).
 * A noise-free ADC evaluates the spec's float32 chain (§4.1 steps 2-5, §8.1): the same
 * single operations, in the same order, with which the Python side tabulates
 * value_by_count for the torch backend, so both give the same bits; with cyc_qmul[c] != 0
 * the code is rne(m * fl(A/F)), which the Python side verified for every count. A drawn
 * code k converts to fl(fl(k/A) * F) (value_by_code). */
static void tile_epilogue(const ctx_t *X, int32_t tile, int32_t (*cnt)[NL], const uint64_t *ek,
                          float *y) {
    const asim_run *R = X->R;
    const int32_t x = R->x, ncyc = R->ncyc, K = R->votes;
    const int32_t *nbits = (const int32_t *)R->cyc_nbits, *allbits = (const int32_t *)R->cyc_bits;
    const float *coef = (const float *)R->coef;
    const uint8_t *mode = (const uint8_t *)R->mode;
    const float *fs = (const float *)R->cyc_fs, *qmuls = (const float *)R->cyc_qmul;
    const uint8_t *lates = (const uint8_t *)R->cyc_late;
    const asim_code_table *tables = (const asim_code_table *)R->tables;
    const asim_bucket_table *buckets = (const asim_bucket_table *)R->buckets;
    const float A = R->adc_levels, invA = 1.0f / A, alpha = R->alpha;
    const int rec = R->reciprocal;
    int32_t mc[NL];
    for (int32_t i = R->w - 1; i >= 0; --i) {
        for (int32_t c = ncyc - 1; c >= 0; --c) {
            const int32_t nb = nbits[c];
            const int32_t *bits = allbits + (int64_t)c * ASIM_MAXBITS;
            const float k = coef[i * ncyc + c];
            const float F = fs[c], invF = 1.0f / F;
            cycle_counts(cnt, i * x, bits, nb, mc);
            const int md = mode[i * ncyc + c];
            if (md == ASIM_CYC_EXACT) {
                for (int t = 0; t < NL; ++t) y[t] = y[t] + k * (float)mc[t];
            } else if (md == ASIM_CYC_ADC) {
                const float qmul = qmuls[c];
                const int late = lates[c];
                if (qmul != 0.0f && X->vtab) { /* value of code q: one table lookup */
                    const float *tv = X->vtab + (int64_t)c * VT;
#if ACIM_AVX512
                    __m512 tab[4];
                    load_table(tv, tab);
                    const __m512 vq = _mm512_set1_ps(qmul), vk = _mm512_set1_ps(k);
                    for (int t = 0; t < NL; t += 16) {
                        const __m512 v = adc_value16(
                            _mm512_cvtepi32_ps(_mm512_loadu_si512(mc + t)), vq, tab);
                        _mm512_storeu_ps(y + t,
                                         _mm512_add_ps(_mm512_loadu_ps(y + t), _mm512_mul_ps(vk, v)));
                    }
#else
                    for (int t = 0; t < NL; ++t) {
                        const int32_t q = (int32_t)nearbyintf((float)mc[t] * qmul);
                        y[t] = y[t] + k * tv[q];
                    }
#endif
                } else if (qmul != 0.0f) {
                    for (int t = 0; t < NL; ++t) {
                        const float q = nearbyintf((float)mc[t] * qmul);
                        y[t] = y[t] + k * ((q / A) * F);
                    }
                } else { /* clamps as max/min: the operands are never NaN or -0 */
                    for (int t = 0; t < NL; ++t) {
                        float m = (float)mc[t];
                        if (alpha != 0.0f && !late) m = m / (m * alpha + 1.0f);
                        float a = rec ? m * invF : m / F;
                        a = a > 0.0f ? a : 0.0f;
                        a = a < 1.0f ? a : 1.0f;
                        if (alpha != 0.0f && late) a = a / (a * alpha + 1.0f);
                        const float q = nearbyintf(a * A);
                        y[t] = y[t] + k * ((rec ? q * invA : q / A) * F);
                    }
                }
            } else {
                const asim_code_table *tab = tables + c;
                const asim_bucket_table *bt = buckets ? buckets + c : NULL;
                const uint64_t draw = ((uint64_t)(tile * R->w + i) * (uint64_t)ncyc + (uint64_t)c) *
                                      (uint64_t)K;
#if ACIM_AVX2
                if (bt && bt->entry) {
                    draw_add8(bt, mc, ek, draw, md == ASIM_CYC_NOISY ? 1 : K,
                              X->vtab ? X->vtab + (int64_t)c * VT : NULL, k, A, F, rec, y, NL);
                    continue;
                }
#endif
                int32_t q[NL];
                drawn_codes(bt, tab, mc, ek, draw, md == ASIM_CYC_NOISY ? 1 : K, q);
                add_values(q, X->vtab ? X->vtab + (int64_t)c * VT : NULL, k, A, F, rec, y, NL);
            }
        }
    }
}

/* tile_epilogue when the plan hands over its value tables (R->vcnt: a non-uniform ADC, spec
 * §4.6, or a chip's fixed column pattern, §4.7). A conversion's index is its count m, or
 * with a pattern its column's fine index n = min(max(m*G + D, 0) >> ASIM_GAIN_BITS, top_c)
 * (G, D of column (tile, weight bit i, output o)); a noise-free ADC reads vcnt[c][index], a
 * noisy one draws its code at row index (+ the column's noise block) of the cycle's table
 * and reads vcode[c][code] (without vcode, uniform levels: fl(fl(code/A)*F_c), as
 * tile_epilogue). With per-ADC full scales (§4.8, R->pat_vclass) a column reads
 * the values of its class, vcode[class][c], a noise-free one at its code fcode[c][index]; a
 * column is one output, so the table is chosen per output block ob. Integer arithmetic and
 * lookups, accumulated in the spec's order with the same float32 operations as the torch
 * backend. o0 is the block's first output. */
static void tile_epilogue_lookup(const ctx_t *X, int32_t tile, int64_t o0, int32_t (*cnt)[NL],
                                 const uint64_t *ek, float *y) {
    const asim_run *R = X->R;
    const int32_t x = R->x, ncyc = R->ncyc, K = R->votes, w = R->w;
    const int32_t *nbits = (const int32_t *)R->cyc_nbits, *allbits = (const int32_t *)R->cyc_bits;
    const float *coef = (const float *)R->coef;
    const uint8_t *mode = (const uint8_t *)R->mode;
    const float *vcnt = (const float *)R->vcnt, *vcode = (const float *)R->vcode;
    const int64_t *vcnt_off = (const int64_t *)R->vcnt_off;
    const int64_t *pg = (const int64_t *)R->pat_gain, *pd = (const int64_t *)R->pat_offset;
    const int32_t *pb = (const int32_t *)R->pat_block, *ptop = (const int32_t *)R->pat_top;
    const int32_t *pv = (const int32_t *)R->pat_vclass, *fcode = (const int32_t *)R->fcode;
    const float *tvo[OB]; /* with pv: the value of each code in output block ob's column */
    const asim_code_table *tables = (const asim_code_table *)R->tables;
    const asim_bucket_table *buckets = (const asim_bucket_table *)R->buckets;
    const int64_t ncode = (int64_t)R->adc_levels + 1;
    const float A = R->adc_levels, *fs = (const float *)R->cyc_fs;
    const int rec = R->reciprocal;
    int32_t mc[NL], idx[NL], row[NL];
    for (int32_t i = w - 1; i >= 0; --i) {
        for (int32_t c = ncyc - 1; c >= 0; --c) {
            const int32_t nb = nbits[c];
            const int32_t *bits = allbits + (int64_t)c * ASIM_MAXBITS;
            const float k = coef[i * ncyc + c];
            cycle_counts(cnt, i * x, bits, nb, mc);
            const int md = mode[i * ncyc + c];
            if (md == ASIM_CYC_EXACT) {
                for (int t = 0; t < NL; ++t) y[t] = y[t] + k * (float)mc[t];
                continue;
            }
            if (pg) {
                const int64_t top = ptop[c];
                for (int ob = 0; ob < OB; ++ob) {
                    const int64_t o = o0 + ob;
                    int64_t G = 0, D = 0, base = 0, cls = 0;
                    if (o < R->O) {
                        const int64_t at = ((int64_t)tile * w + i) * R->O + o;
                        G = pg[at];
                        D = pd[(((int64_t)tile * ncyc + c) * w + i) * R->O + o];
                        base = (int64_t)pb[at] * (top + 1);
                        if (pv) cls = pv[at];
                    }
                    if (pv) tvo[ob] = vcode + (cls * ncyc + c) * ncode;
                    if (R->pat_narrow) { /* the same integers in 32-bit lanes (vectorized) */
                        const int32_t G32 = (int32_t)G, D32 = (int32_t)D, top32 = (int32_t)top;
                        const int32_t base32 = (int32_t)base;
                        for (int t = ob * MB; t < (ob + 1) * MB; ++t) {
                            int32_t n = mc[t] * G32 + D32;
                            n = n > 0 ? n >> ASIM_GAIN_BITS : 0;
                            n = n < top32 ? n : top32;
                            idx[t] = n;
                            row[t] = n + base32;
                        }
                        continue;
                    }
                    for (int t = ob * MB; t < (ob + 1) * MB; ++t) {
                        int64_t n = (int64_t)mc[t] * G + D;
                        n = n > 0 ? n >> ASIM_GAIN_BITS : 0;
                        n = n < top ? n : top;
                        idx[t] = (int32_t)n;
                        row[t] = (int32_t)(n + base);
                    }
                }
            } else {
                for (int t = 0; t < NL; ++t) idx[t] = row[t] = mc[t];
            }
            if (md == ASIM_CYC_ADC && pv) {
                const int32_t *fc = fcode + vcnt_off[c];
                for (int ob = 0; ob < OB; ++ob) {
                    const float *tv = tvo[ob];
                    for (int t = ob * MB; t < (ob + 1) * MB; ++t) y[t] = y[t] + k * tv[fc[idx[t]]];
                }
                continue;
            }
            if (md == ASIM_CYC_ADC) {
                const float *tv = vcnt + vcnt_off[c];
                for (int t = 0; t < NL; ++t) y[t] = y[t] + k * tv[idx[t]];
                continue;
            }
            const asim_code_table *tab = tables + c;
            const asim_bucket_table *bt = buckets ? buckets + c : NULL;
            const uint64_t draw =
                ((uint64_t)(tile * w + i) * (uint64_t)ncyc + (uint64_t)c) * (uint64_t)K;
#if ACIM_AVX2
            if (bt && bt->entry && pv) { /* the fused pass per output block: its column's values */
                for (int ob = 0; ob < OB; ++ob)
                    draw_add8(bt, row + ob * MB, ek + ob * MB, draw,
                              md == ASIM_CYC_NOISY ? 1 : K, tvo[ob], k, A, 1.0f, 0, y + ob * MB, MB);
                continue;
            }
            if (bt && bt->entry) { /* the fused pass: the plan's code values, or fl(fl(q/A)*F) */
                draw_add8(bt, row, ek, draw, md == ASIM_CYC_NOISY ? 1 : K,
                          vcode ? vcode + c * ncode : NULL, k, A, fs[c], rec, y, NL);
                continue;
            }
#endif
            int32_t q[NL];
            drawn_codes(bt, tab, row, ek, draw, md == ASIM_CYC_NOISY ? 1 : K, q);
            if (pv) {
                for (int ob = 0; ob < OB; ++ob)
                    add_values(q + ob * MB, tvo[ob], k, A, 1.0f, 0, y + ob * MB, MB);
                continue;
            }
            add_values(q, vcode ? vcode + c * ncode : NULL, k, A, fs[c], rec, y, NL);
        }
    }
}

#if ACIM_AVX512
/* tile_epilogue when every conversion is a noise-free ADC read through the value table or a
 * digital exact cycle (X->table_only): the same float32 operations in the same order per
 * lane, but 32 lanes at a time through all conversions, so the two sums stay in registers. */
static void tile_epilogue_table(const ctx_t *X, int32_t (*cnt)[NL], float *y) {
    const asim_run *R = X->R;
    const int32_t x = R->x, ncyc = R->ncyc;
    const int32_t *nbits = (const int32_t *)R->cyc_nbits, *allbits = (const int32_t *)R->cyc_bits;
    const float *coef = (const float *)R->coef, *qmuls = (const float *)R->cyc_qmul;
    const uint8_t *mode = (const uint8_t *)R->mode;
    __m512 tab[4];
    load_table(X->vtab, tab); /* X->uniform: one table and multiplier for every cycle */
    __m512 vq = _mm512_set1_ps(qmuls[0]);
    static const int32_t no_code[3] = {0, 0, 0};
    const int32_t *code = X->int_codes ? (const int32_t *)R->cyc_code : no_code;
    __m512i ck = _mm512_set1_epi32(code[0]), cb = _mm512_set1_epi32(code[1]);
    __m128i cs = _mm_cvtsi32_si128(code[2]);
    for (int t = 0; t < NL; t += 32) {
        __m512 acc0 = _mm512_loadu_ps(y + t), acc1 = _mm512_loadu_ps(y + t + 16);
        for (int32_t i = R->w - 1; i >= 0; --i)
            for (int32_t c = ncyc - 1; c >= 0; --c) {
                const int32_t *bits = allbits + (int64_t)c * ASIM_MAXBITS;
                const int32_t *c0 = cnt[i * x + bits[0]] + t;
                __m512i m0 = _mm512_loadu_si512(c0), m1 = _mm512_loadu_si512(c0 + 16);
                for (int32_t b = 1; b < nbits[c]; ++b) {
                    const int32_t *cb = cnt[i * x + bits[b]] + t;
                    m0 = _mm512_add_epi32(m0, _mm512_slli_epi32(_mm512_loadu_si512(cb), b));
                    m1 = _mm512_add_epi32(m1, _mm512_slli_epi32(_mm512_loadu_si512(cb + 16), b));
                }
                __m512 v0, v1;
                if (mode[i * ncyc + c] == ASIM_CYC_EXACT) {
                    v0 = _mm512_cvtepi32_ps(m0);
                    v1 = _mm512_cvtepi32_ps(m1);
                } else {
                    if (!X->uniform) {
                        load_table(X->vtab + (int64_t)c * VT, tab);
                        vq = _mm512_set1_ps(qmuls[c]);
                        if (X->int_codes) {
                            ck = _mm512_set1_epi32(code[3 * c]);
                            cb = _mm512_set1_epi32(code[3 * c + 1]);
                            cs = _mm_cvtsi32_si128(code[3 * c + 2]);
                        }
                    }
                    if (X->int_codes) { /* integer pipes: the float ones are the busy ones */
                        v0 = code_value16(_mm512_srl_epi32(_mm512_add_epi32(_mm512_mullo_epi32(m0, ck), cb), cs), tab);
                        v1 = code_value16(_mm512_srl_epi32(_mm512_add_epi32(_mm512_mullo_epi32(m1, ck), cb), cs), tab);
                    } else {
                        v0 = adc_value16(_mm512_cvtepi32_ps(m0), vq, tab);
                        v1 = adc_value16(_mm512_cvtepi32_ps(m1), vq, tab);
                    }
                }
                const __m512 vk = _mm512_set1_ps(coef[i * ncyc + c]);
                if (X->exact_products) { /* k * v is exact: one rounding either way */
                    acc0 = _mm512_fmadd_ps(vk, v0, acc0);
                    acc1 = _mm512_fmadd_ps(vk, v1, acc1);
                } else {
                    acc0 = _mm512_add_ps(acc0, _mm512_mul_ps(vk, v0));
                    acc1 = _mm512_add_ps(acc1, _mm512_mul_ps(vk, v1));
                }
            }
        _mm512_storeu_ps(y + t, acc0);
        _mm512_storeu_ps(y + t + 16, acc1);
    }
}
#endif

typedef struct {
    ctx_t *X;
    int64_t tid;
} work_t;

/* Phase 1: pack thread tid's share of the rows (and zero the padding rows), every tile. */
static void *pack_worker(void *arg) {
    ctx_t *X = ((work_t *)arg)->X;
    const asim_run *R = X->R;
    const int64_t tid = ((work_t *)arg)->tid;
    const int64_t step = (X->Mpad + X->nthreads - 1) / X->nthreads;
    const int64_t m0 = tid * step < X->Mpad ? tid * step : X->Mpad;
    const int64_t m1 = m0 + step < X->Mpad ? m0 + step : X->Mpad;
    const int64_t mr = m1 < R->M ? m1 : R->M;
    const int64_t *tiles = (const int64_t *)R->tiles;
    for (int32_t t = 0; t < R->ntiles; ++t) {
        const int64_t r0 = tiles[2 * t], r1 = tiles[2 * t + 1];
        const int64_t nw = (r1 - r0 + 63) / 64;
        uint64_t *xp = X->xpk + X->xoff[t];
        if (mr > m0)
            pack_rows(R->codes, R->kind, R->ld, (const int64_t *)R->row_off,
                      (const int64_t *)R->col_off, m0, mr, r0, r1, R->x, xp, nw * X->Mpad,
                      X->Mpad, 1);
        const int64_t z0 = mr > m0 ? mr : m0;
        for (int32_t b = 0; b < R->x; ++b)
            for (int64_t wd = 0; wd < nw; ++wd)
                for (int64_t m = z0; m < m1; ++m) xp[(b * nw + wd) * X->Mpad + m] = 0;
    }
    return NULL;
}

/* Phase 2: (row block, output range) items taken dynamically: counts and epilogue, tile
 * by tile in the spec's order, then one store per output. */
static void *compute_worker(void *arg) {
    ctx_t *X = ((work_t *)arg)->X;
    const asim_run *R = X->R;
    int32_t(*cnt)[NL] = (int32_t(*)[NL])calloc((size_t)R->wpad * R->x, sizeof(int32_t) * NL);
    if (!cnt) return (void *)1;
    const int64_t *tiles = (const int64_t *)R->tiles, *woff = (const int64_t *)R->woff;
    const int64_t *sample = (const int64_t *)R->sample, *pos = (const int64_t *)R->pos;
    const uint64_t *wpk = (const uint64_t *)R->wpk;
    float *out = (float *)R->y;
    const int64_t *y_row = (const int64_t *)R->y_row;
    float y[NL];
    uint64_t ek[NL], rk[MB];
    for (int t = 0; t < NL; ++t) ek[t] = 0;
    for (;;) {
        const int64_t item = __atomic_fetch_add(&X->next, 1, __ATOMIC_RELAXED);
        if (item >= X->nitems) break;
        const int64_t mb = (item / X->noc) * MB;
        const int64_t o0 = (item % X->noc) * X->ochunk;
        const int64_t o1 = o0 + X->ochunk < R->O ? o0 + X->ochunk : R->O;
        const int64_t n = R->M - mb < MB ? R->M - mb : MB;
        if (X->noisy) /* asim_element_key: the rows' part once for all their outputs */
            for (int64_t t = 0; t < n; ++t)
                rk[t] = asim_derive(asim_derive(R->call_key, sample[mb + t], ASIM_KEY_SAMPLE),
                                    pos[mb + t], ASIM_KEY_POS);
        for (int64_t o = o0; o < o1; o += OB) {
            const int64_t nob = o1 - o < OB ? o1 - o : OB;
            for (int t = 0; t < NL; ++t) y[t] = 0.0f;
            if (nob < OB) /* unused lanes: zero counts, results dropped */
                for (int32_t r = 0; r < R->wpad * R->x; ++r)
                    for (int t = (int)nob * MB; t < NL; ++t) cnt[r][t] = 0;
            if (X->noisy)
                for (int64_t ob = 0; ob < nob; ++ob)
                    for (int64_t t = 0; t < n; ++t)
                        ek[ob * MB + t] = asim_derive(rk[t], o + ob, ASIM_KEY_OUT);
            for (int32_t tile = 0; tile < R->ntiles; ++tile) {
                const int64_t nw = (tiles[2 * tile + 1] - tiles[2 * tile] + 63) / 64;
                for (int64_t ob = 0; ob < nob; ++ob)
                    tile_counts(X->xpk + X->xoff[tile],
                                wpk + woff[tile] + (o + ob) * R->wpad * nw, nw, X->Mpad, mb,
                                R->wpad, R->x, (int32_t(*)[NL]) & cnt[0][ob * MB]);
#if ACIM_AVX512
                if (X->table_only) tile_epilogue_table(X, cnt, y);
                else
#endif
                if (R->vcnt) tile_epilogue_lookup(X, tile, o, cnt, ek, y);
                else tile_epilogue(X, tile, cnt, ek, y);
            }
            for (int64_t ob = 0; ob < nob; ++ob) {
                float *col = out + (o + ob) * R->ldo;
                if (y_row)
                    for (int64_t t = 0; t < n; ++t) col[y_row[mb + t]] = y[ob * MB + t];
                else
                    for (int64_t t = 0; t < n; ++t) col[(mb + t) * R->ldy] = y[ob * MB + t];
            }
        }
    }
    free(cnt);
    return NULL;
}

/* fn(tid) for tid < X->nthreads. Built with OpenMP, the threads are the process's OpenMP
 * pool: the one torch's own ops use when both link the same libgomp, so its threads are awake
 * and no second pool competes for the cores. Otherwise new pthreads and the caller's; a
 * share whose thread could not be started runs on the caller. Nonzero if any share failed. */
static int parallel(ctx_t *X, void *(*fn)(void *)) {
    work_t work[ASIM_MAXTHREADS];
    int failed = 0;
    for (int32_t t = 0; t < X->nthreads; ++t) {
        work[t].X = X;
        work[t].tid = t;
    }
#ifdef _OPENMP
    int done[ASIM_MAXTHREADS];
    for (int32_t t = 0; t < X->nthreads; ++t) done[t] = 0;
#pragma omp parallel num_threads(X->nthreads) reduction(| : failed)
    {
        const int t = omp_get_thread_num();
        if (t < X->nthreads) {
            failed |= fn(&work[t]) != NULL;
            done[t] = 1;
        }
    }
    for (int32_t t = 0; t < X->nthreads; ++t) /* fewer threads than asked (nested region) */
        if (!done[t]) failed |= fn(&work[t]) != NULL;
#else
    pthread_t th[ASIM_MAXTHREADS];
    int started[ASIM_MAXTHREADS];
    for (int32_t t = 0; t < X->nthreads; ++t)
        started[t] = t > 0 && pthread_create(&th[t], NULL, fn, &work[t]) == 0;
    for (int32_t t = 0; t < X->nthreads; ++t)
        if (!started[t]) failed |= fn(&work[t]) != NULL;
    for (int32_t t = 1; t < X->nthreads; ++t)
        if (started[t]) {
            void *ret = NULL;
            pthread_join(th[t], &ret);
            failed |= ret != NULL;
        }
#endif
    return failed;
}

/* The packed activations' scratch, kept between calls: a fresh allocation of several MiB
 * per call costs page faults and page clearing comparable to the kernel's own work. One
 * buffer is cached; a call that finds it taken (concurrent calls) allocates its own. */
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *scratch_buf = NULL;
static size_t scratch_words = 0;
static int scratch_busy = 0;

static uint64_t *scratch_take(size_t words) {
    uint64_t *p = NULL;
    pthread_mutex_lock(&scratch_lock);
    if (!scratch_busy) {
        if (scratch_words < words) {
            free(scratch_buf);
            scratch_words = 0;
            scratch_buf = (uint64_t *)aligned_alloc(64, sizeof(uint64_t) * words);
            if (scratch_buf) scratch_words = words;
        }
        if (scratch_buf) {
            scratch_busy = 1;
            p = scratch_buf;
        }
    }
    pthread_mutex_unlock(&scratch_lock);
    return p ? p : (uint64_t *)aligned_alloc(64, sizeof(uint64_t) * words);
}

static void scratch_give(uint64_t *p) {
    pthread_mutex_lock(&scratch_lock);
    if (p == scratch_buf) scratch_busy = 0;
    else free(p);
    pthread_mutex_unlock(&scratch_lock);
}

/* Whether every product k * v of the table epilogue is exact in float32: each k = coef is
 * zero or a power of two, and |k| times the smallest and the largest nonzero v (a table
 * value, or an exact cycle's count, at most 2^24) stays a normal float. Then the rounded
 * fl(y + fl(k * v)) equals the fused fl(y + k * v). */
static int exact_products(const asim_run *R, const float *vtab) {
    float vmin = 1.0f, vmax = 16777216.0f;
    for (int64_t q = 0; q < (int64_t)VT * R->ncyc; ++q)
        if (vtab[q] > 0.0f) {
            vmin = vtab[q] < vmin ? vtab[q] : vmin;
            vmax = vtab[q] > vmax ? vtab[q] : vmax;
        }
    const float *coef = (const float *)R->coef;
    for (int32_t k = 0; k < R->w * R->ncyc; ++k) {
        const float a = fabsf(coef[k]);
        int e;
        if (a == 0.0f) continue;
        if (!(frexpf(a, &e) == 0.5f && a * vmin >= 0x1p-126f && a * vmax <= 0x1p126f)) return 0;
    }
    return 1;
}

/* Y of the call's rows over all tiles (engine.h documents every field).
 * Returns 0, -1 if out of memory, -2 if votes exceeds ASIM_MAXVOTES. */
int32_t asim_run_call(const asim_run *R) {
    if (R->M <= 0 || R->O <= 0) return 0;
    if (R->votes < 1 || R->votes > ASIM_MAXVOTES) return -2;
    ctx_t X;
    memset(&X, 0, sizeof X);
    X.R = R;
    X.Mpad = (R->M + MB - 1) / MB * MB;
    const uint8_t *mode = (const uint8_t *)R->mode;
    for (int32_t k = 0; k < R->w * R->ncyc; ++k)
        X.noisy |= mode[k] == ASIM_CYC_NOISY || mode[k] == ASIM_CYC_VOTED;

    const int64_t *tiles = (const int64_t *)R->tiles;
    int64_t *xoff = (int64_t *)malloc(sizeof(int64_t) * (size_t)(R->ntiles + 1));
    if (!xoff) return -1;
    int64_t words = 0;
    for (int32_t t = 0; t < R->ntiles; ++t) {
        xoff[t] = words;
        words += (int64_t)R->x * ((tiles[2 * t + 1] - tiles[2 * t] + 63) / 64) * X.Mpad;
    }
    X.xoff = xoff;
    if (R->adc_levels < (float)VT) { /* the spec's value of every code, as the chain does it */
        X.vtab = (float *)aligned_alloc(64, sizeof(float) * VT * (size_t)R->ncyc);
        if (!X.vtab) {
            free(xoff);
            return -1;
        }
        const float A = R->adc_levels, invA = 1.0f / A;
        const float *fs = (const float *)R->cyc_fs;
        for (int32_t c = 0; c < R->ncyc; ++c)
            for (int32_t q = 0; q < VT; ++q)
                X.vtab[c * VT + q] =
                    (float)q <= A ? (R->reciprocal ? (float)q * invA : (float)q / A) * fs[c] : 0.0f;
    }
    if (X.vtab) {
        const float *qm = (const float *)R->cyc_qmul;
        X.table_only = X.uniform = 1;
        for (int32_t i = 0; i < R->w; ++i)
            for (int32_t c = 0; c < R->ncyc; ++c) {
                const int md = mode[i * R->ncyc + c];
                X.table_only &= md == ASIM_CYC_EXACT || (md == ASIM_CYC_ADC && qm[c] != 0.0f);
            }
        const float *fs = (const float *)R->cyc_fs;
        for (int32_t c = 0; c < R->ncyc; ++c) /* bit-identical full scale and multiplier */
            X.uniform &= memcmp(&fs[c], &fs[0], sizeof(float)) == 0 &&
                         memcmp(&qm[c], &qm[0], sizeof(float)) == 0;
        X.table_only &= R->vcnt == NULL; /* value tables: tile_epilogue_lookup */
        X.uniform &= X.table_only;
        X.exact_products = X.table_only && exact_products(R, X.vtab);
        X.int_codes = X.table_only && R->cyc_code != NULL;
    }
    X.xpk = scratch_take((size_t)(words > 0 ? words : 1));
    if (!X.xpk) {
        free(X.vtab);
        free(xoff);
        return -1;
    }

    /* items: row blocks x output ranges, enough for dynamic balancing */
    int32_t nthreads = R->nthreads < 1 ? 1 : R->nthreads;
    const int64_t nmb = X.Mpad / MB;
    int64_t noc = 1;
    while (nmb * noc < 8 * nthreads && noc < R->O) noc *= 2;
    X.ochunk = (R->O + noc - 1) / noc;
    if (X.ochunk > OB) X.ochunk = (X.ochunk + OB - 1) / OB * OB; /* whole epilogue blocks */
    X.noc = (R->O + X.ochunk - 1) / X.ochunk;
    X.nitems = nmb * X.noc;
    if (nthreads > X.Mpad) nthreads = (int32_t)X.Mpad;
    if (nthreads > ASIM_MAXTHREADS) nthreads = ASIM_MAXTHREADS;
    X.nthreads = nthreads;
    int failed = parallel(&X, pack_worker);
    if (!failed) failed = parallel(&X, compute_worker);
    scratch_give(X.xpk);
    free(X.vtab);
    free(xoff);
    return failed ? -1 : 0;
}
