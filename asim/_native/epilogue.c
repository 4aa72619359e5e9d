/* Native CPU kernels of the ACiM engine: a binary GEMM by popcount fused with the ADC
 * epilogue, so the bit-plane MACs never leave the core's caches.
 *
 * acim_popcount_run computes one chunk of Y = X @ W over all tiles in one call:
 *   1. pack: bit b of every activation code, 64 reduction rows per 64-bit word;
 *   2. counts: the column MAC of every (weight bit, activation bit) pair of a tile is the
 *      popcount of (activation word AND weight word), summed over the tile's words;
 *   3. epilogue: the spec's cycle sequence (acim-model.md §4.1, §5, §6) on those counts:
 *      cycle count, optional gain compression, normalise, clamp, optional noise, clamp, ADC
 *      rounding (half to even), rescale, and the float32 shift-and-add in the spec's order
 *      (tile, then weight bit, then cycle, descending).
 * Every arithmetic step is a single float32 IEEE operation, as in the torch path: build
 * with -ffp-contract=off and without -ffast-math so the compiler neither fuses nor
 * reorders them. Threads (pthreads) split the chunk's rows for packing, then take (row
 * block, output range) items for the rest; results do not depend on the thread count.
 *
 * With AVX-512 (F, BW, DQ, VPOPCNTDQ) the pack and count loops use intrinsics; otherwise
 * portable C gives the same bits.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#define ACIM_AVX512 1
#else
#define ACIM_AVX512 0
#endif

#define MAXBITS 32
#define MB 32 /* output rows per block: a multiple of 8, and even (noise counters) */
#define IB 4  /* weight bits per count block; weight planes are padded to a multiple */

int32_t acim_simd(void) { return ACIM_AVX512; }

/* ---------------------------------------------------------------------------------------
 * Counter-based standard normals: splitmix64(seed + counter) gives two 32-bit uniforms,
 * Box-Muller turns them into two independent N(0,1) values. Branchless polynomial ln, sin
 * and cos (|error| < 1e-6) keep the loops vectorizable; the stream depends only on the seed
 * and the element index, not on threads or blocking.
 */
static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline float u32_as_f32(uint32_t u) {
    union { uint32_t u; float f; } v = {u};
    return v.f;
}

static inline uint32_t f32_as_u32(float f) {
    union { float f; uint32_t u; } v = {f};
    return v.u;
}

/* ln(u) for u in (0, 1]. */
static inline float fast_log(float u) {
    uint32_t bits = f32_as_u32(u);
    float e = (float)((int32_t)((bits >> 23) & 255) - 127);
    float m = u32_as_f32((bits & 0x7FFFFFu) | 0x3F800000u); /* [1, 2) */
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1.0f : e;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = s * (2.0f + s2 * (0.666666667f + s2 * (0.4f + s2 * (0.285714286f +
                                                                     s2 * 0.222222222f))));
    return e * 0.693147181f + p;
}

/* sin and cos of x in [-pi/2, pi/2] (Taylor to x^11 / x^10). */
static inline void sincos_half(float x, float *sn, float *cs) {
    float x2 = x * x;
    *sn = x * (1.0f - x2 * (1.0f / 6 - x2 * (1.0f / 120 - x2 * (1.0f / 5040 - x2 *
                                                                (1.0f / 362880 - x2 / 39916800.0f)))));
    *cs = 1.0f - x2 * (0.5f - x2 * (1.0f / 24 - x2 * (1.0f / 720 - x2 * (1.0f / 40320 - x2 /
                                                                       3628800.0f))));
}

/* Two standard normals from the 64 random bits h. */
static inline void normal_pair(uint64_t h, float *z0, float *z1) {
    float u1 = ((float)(uint32_t)(h >> 40) + 1.0f) * (1.0f / 16777216.0f); /* (0, 1] */
    float u2 = ((float)(uint32_t)((h >> 8) & 0xFFFFFFu) + 0.5f) * (1.0f / 16777216.0f);
    float r = sqrtf(-2.0f * fast_log(u1));
    /* angle 2*pi*u2 - pi (a rotation by pi keeps the pair i.i.d. normal); half angle */
    float sh, ch;
    sincos_half(3.14159265f * u2 - 1.57079633f, &sh, &ch);
    *z0 = r * (ch * ch - sh * sh);
    *z1 = r * (2.0f * sh * ch);
}

void acim_fill_normals(float *out, int64_t n, uint64_t seed, uint64_t offset) {
    for (int64_t t = 0; t < n / 2; ++t) {
        float a, b;
        normal_pair(splitmix64(seed + offset + (uint64_t)t), &a, &b);
        out[2 * t] = a;
        out[2 * t + 1] = b;
    }
    if (n & 1) {
        float a, b;
        normal_pair(splitmix64(seed + offset + (uint64_t)(n / 2)), &a, &b);
        out[n - 1] = a;
    }
}

/* ---------------------------------------------------------------------------------------
 * Bit packing. Codes are integer-valued: kind 0 float32, 1 int32, 2 one byte (int8 or
 * uint8; int8 only for nbits <= 8). Bit b of the two's-complement code of codes[m*ld + r],
 * r in [r0, r1), goes to bit (r - r0) % 64 of word out[b*sb + wd*sw + m*sm],
 * wd = (r - r0) / 64.
 */
enum { KIND_F32 = 0, KIND_I32 = 1, KIND_I8 = 2 };

static inline void pack_word(const void *codes, int32_t kind, int64_t at, int64_t cnt,
                             int32_t nbits, uint64_t *words) {
    for (int32_t b = 0; b < nbits; ++b) words[b] = 0;
#if ACIM_AVX512
    if (kind == KIND_I8) {
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
        if (kind == KIND_F32)
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
        if (kind == KIND_F32) u = (uint32_t)(int32_t)((const float *)codes)[at + r];
        else if (kind == KIND_I32) u = (uint32_t)((const int32_t *)codes)[at + r];
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
    uint64_t words[MAXBITS];
    union { uint8_t b[64]; uint32_t u[64]; } tmp;
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t wd = 0; wd < nw; ++wd) {
            const int64_t ra = r0 + 64 * wd;
            const int64_t cnt = r1 - ra < 64 ? r1 - ra : 64;
            if (row_off) { /* gather the word's codes, then pack them as a contiguous run */
                const int64_t *co = col_off + ra;
                if (kind == KIND_I8) {
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
 * bit i of column o), as float32 (exact: at most 64 * words).
 * xp: the tile's activation planes [x][nw][Mpad]; wo: column o's weight planes [wpad][nw].
 */
static void tile_counts(const uint64_t *xp, const uint64_t *wo, int64_t nw, int64_t Mpad,
                        int64_t mb, int32_t wpad, int32_t x, float (*cnt)[MB]) {
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
                    _mm256_storeu_ps(&cnt[(ib + ii) * x + j][8 * k],
                                     _mm512_cvtepi64_ps(acc[ii][k]));
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
            for (int t = 0; t < MB; ++t) cnt[i * x + j][t] = (float)acc[t];
        }
#endif
}

/* Everything the threads of one acim_popcount_run call share. */
typedef struct {
    const void *codes;
    int32_t kind;
    int64_t ld, M, Mpad;
    const int64_t *row_off, *col_off; /* NULL: rows m*ld, columns contiguous */
    int32_t ntiles;
    const int64_t *tiles;  /* [ntiles][2] row ranges */
    const uint64_t *wpk;   /* per tile: [O][wpad][nw_t] */
    const int64_t *woff;   /* word offset of each tile in wpk */
    uint64_t *xpk;         /* per tile: [x][nw_t][Mpad] */
    const int64_t *xoff;
    int64_t O, ldy;
    float *y;              /* y[m*ldy + o], written (not accumulated) */
    int32_t w, wpad, x, ncyc;
    const int32_t *cyc_nbits, *cyc_bits;
    const float *cyc_fs, *cyc_qmul, *coef;
    const uint8_t *analog, *exact;
    float A, alpha, rand_var, nl_var, nrow;
    int32_t reciprocal, noise_on;
    const uint64_t *seeds; /* per tile */
    int32_t nthreads;
    int64_t nmb, ochunk, noc, nitems;
    int64_t next; /* work counter (atomic) */
} run_t;

/* The cycle sequence of one tile on its counts, accumulated into y[MB]. */
static void tile_epilogue(const run_t *R, int32_t tile, int64_t o, int64_t mb,
                          float (*cnt)[MB], float *y) {
    const int32_t x = R->x, ncyc = R->ncyc;
    const float A = R->A, invA = 1.0f / A;
    float mc[MB], zz[MB];
    for (int32_t i = R->w - 1; i >= 0; --i) {
        for (int32_t c = ncyc - 1; c >= 0; --c) {
            const int32_t nb = R->cyc_nbits[c];
            const int32_t *bits = R->cyc_bits + (int64_t)c * MAXBITS;
            const float F = R->cyc_fs[c];
            const float invF = 1.0f / F;
            const float k = R->coef[i * ncyc + c];
            const float qmul = R->cyc_qmul[c];
            const float *c0 = cnt[i * x + bits[0]];
            for (int t = 0; t < MB; ++t) mc[t] = c0[t];
            for (int32_t b = 1; b < nb; ++b) {
                const float s = (float)(1u << b);
                const float *cb = cnt[i * x + bits[b]];
                for (int t = 0; t < MB; ++t) mc[t] = mc[t] + s * cb[t];
            }
            if (R->exact[i * ncyc + c]) {
                for (int t = 0; t < MB; ++t) y[t] = y[t] + k * mc[t];
                continue;
            }
            if (R->alpha != 0.0f)
                for (int t = 0; t < MB; ++t) mc[t] = mc[t] / (mc[t] * R->alpha + 1.0f);
            const int noisy = R->noise_on && R->analog[i * ncyc + c];
            if (!noisy) {
                if (qmul != 0.0f && R->alpha == 0.0f && !R->reciprocal) {
                    /* rne(m * fl(A/F)) == rne(fl(m/F) * A) for every count m in [0, F],
                     * checked exhaustively for this (F, A) by the caller: one division */
                    for (int t = 0; t < MB; ++t) {
                        const float q = nearbyintf(mc[t] * qmul);
                        y[t] = y[t] + k * ((q / A) * F);
                    }
                } else { /* clamps as max/min: the operands are never NaN or -0 */
                    for (int t = 0; t < MB; ++t) {
                        float a = R->reciprocal ? mc[t] * invF : mc[t] / F;
                        a = a > 0.0f ? a : 0.0f;
                        a = a < 1.0f ? a : 1.0f;
                        const float q = nearbyintf(a * A);
                        y[t] = y[t] + k * ((R->reciprocal ? q * invA : q / A) * F);
                    }
                }
                continue;
            }
            /* pair counter = global element index / 2 over an even-padded m axis (blocks
             * start at even m), unique for every (i, c, o, m) of the tile */
            const uint64_t Me = (uint64_t)(R->M + (R->M & 1));
            const uint64_t base =
                (((uint64_t)(i * ncyc + c) * (uint64_t)R->O + (uint64_t)o) * Me + (uint64_t)mb) /
                2u;
            const uint64_t seed = R->seeds[tile];
            for (int t = 0; t < MB / 2; ++t)
                normal_pair(splitmix64(seed + base + (uint64_t)t), &zz[2 * t], &zz[2 * t + 1]);
            for (int t = 0; t < MB; ++t) {
                float a = R->reciprocal ? mc[t] * invF : mc[t] / F;
                a = a > 0.0f ? a : 0.0f;
                a = a < 1.0f ? a : 1.0f;
                float var = R->rand_var;
                if (R->nl_var != 0.0f) var = var + R->nl_var / (a * R->nrow + 1.0f);
                a = a + sqrtf(var) * zz[t];
                a = a > 0.0f ? a : 0.0f;
                a = a < 1.0f ? a : 1.0f;
                const float q = nearbyintf(a * A);
                const float v = (R->reciprocal ? q * invA : q / A) * F;
                y[t] = y[t] + k * v;
            }
        }
    }
}

typedef struct {
    run_t *R;
    int64_t tid;
} work_t;

/* Phase 1: pack thread tid's share of the rows (and zero the padding rows), every tile. */
static void *pack_worker(void *arg) {
    run_t *R = ((work_t *)arg)->R;
    const int64_t tid = ((work_t *)arg)->tid;
    const int64_t step = (R->Mpad + R->nthreads - 1) / R->nthreads;
    const int64_t m0 = tid * step < R->Mpad ? tid * step : R->Mpad;
    const int64_t m1 = m0 + step < R->Mpad ? m0 + step : R->Mpad;
    const int64_t mr = m1 < R->M ? m1 : R->M;
    for (int32_t t = 0; t < R->ntiles; ++t) {
        const int64_t r0 = R->tiles[2 * t], r1 = R->tiles[2 * t + 1];
        const int64_t nw = (r1 - r0 + 63) / 64;
        uint64_t *xp = R->xpk + R->xoff[t];
        if (mr > m0)
            pack_rows(R->codes, R->kind, R->ld, R->row_off, R->col_off, m0, mr, r0, r1, R->x,
                      xp, nw * R->Mpad, R->Mpad, 1);
        const int64_t z0 = mr > m0 ? mr : m0;
        for (int32_t b = 0; b < R->x; ++b)
            for (int64_t wd = 0; wd < nw; ++wd)
                for (int64_t m = z0; m < m1; ++m) xp[(b * nw + wd) * R->Mpad + m] = 0;
    }
    return NULL;
}

/* Phase 2: (row block, output range) items taken dynamically: counts and epilogue, tile
 * by tile in the spec's order, then one store per output. */
static void *compute_worker(void *arg) {
    run_t *R = ((work_t *)arg)->R;
    float(*cnt)[MB] = (float(*)[MB])malloc(sizeof(float) * MB * (size_t)R->wpad * R->x);
    if (!cnt) return (void *)1;
    float y[MB];
    for (;;) {
        const int64_t item = __atomic_fetch_add(&R->next, 1, __ATOMIC_RELAXED);
        if (item >= R->nitems) break;
        const int64_t mb = (item / R->noc) * MB;
        const int64_t o0 = (item % R->noc) * R->ochunk;
        const int64_t o1 = o0 + R->ochunk < R->O ? o0 + R->ochunk : R->O;
        const int64_t n = R->M - mb < MB ? R->M - mb : MB;
        for (int64_t o = o0; o < o1; ++o) {
            for (int t = 0; t < MB; ++t) y[t] = 0.0f;
            for (int32_t tile = 0; tile < R->ntiles; ++tile) {
                const int64_t nw = (R->tiles[2 * tile + 1] - R->tiles[2 * tile] + 63) / 64;
                tile_counts(R->xpk + R->xoff[tile], R->wpk + R->woff[tile] + o * R->wpad * nw,
                            nw, R->Mpad, mb, R->wpad, R->x, cnt);
                tile_epilogue(R, tile, o, mb, cnt, y);
            }
            for (int64_t t = 0; t < n; ++t) R->y[(mb + t) * R->ldy + o] = y[t];
        }
    }
    free(cnt);
    return NULL;
}

#define MAXTHREADS 256

/* fn(tid) for tid < R->nthreads, on new threads and the caller's; a share whose thread
 * could not be started runs on the caller. Returns nonzero if any share failed. */
static int parallel(run_t *R, void *(*fn)(void *)) {
    work_t work[MAXTHREADS];
    pthread_t th[MAXTHREADS];
    int started[MAXTHREADS];
    int failed = 0;
    for (int32_t t = 0; t < R->nthreads; ++t) {
        work[t].R = R;
        work[t].tid = t;
        started[t] = t > 0 && pthread_create(&th[t], NULL, fn, &work[t]) == 0;
    }
    for (int32_t t = 0; t < R->nthreads; ++t)
        if (!started[t]) failed |= fn(&work[t]) != NULL;
    for (int32_t t = 1; t < R->nthreads; ++t)
        if (started[t]) {
            void *ret = NULL;
            pthread_join(th[t], &ret);
            failed |= ret != NULL;
        }
    return failed;
}

/* Y[m, o] of one chunk (rows m < M of the activation codes) over all tiles.
 * codes: [M][ld] integer codes of `kind`, or with row_off/col_off (both non-NULL) the
 * code of (m, r) at element row_off[m] + col_off[r]; tiles: [ntiles][2] row ranges; wpk/woff: weight
 * planes packed by acim_pack per tile as [O][wpad][nw_t] (planes >= w zero); y: output with
 * row stride ldy; seeds: one noise seed per tile; cyc_qmul[c]: fl(A/F) where the caller
 * verified that it gives the ADC code of every noise-free count, else 0. Returns 0, or -1 if out of memory. */
int32_t acim_popcount_run(const void *codes, int32_t kind, int64_t ld,
                          const int64_t *row_off, const int64_t *col_off, int64_t M,
                          int32_t ntiles, const int64_t *tiles, const uint64_t *wpk,
                          const int64_t *woff, int64_t O, float *y, int64_t ldy, int32_t w,
                          int32_t wpad, int32_t x, int32_t ncyc, const int32_t *cyc_nbits,
                          const int32_t *cyc_bits, const float *cyc_fs,
                          const float *cyc_qmul, const float *coef,
                          const uint8_t *analog, const uint8_t *exact, float adc_levels,
                          int32_t reciprocal, float alpha, float rand_var, float nl_var,
                          float nrow, int32_t noise_on, const uint64_t *seeds,
                          int32_t nthreads) {
    run_t R;
    memset(&R, 0, sizeof R);
    R.codes = codes; R.kind = kind; R.ld = ld; R.M = M;
    R.row_off = row_off; R.col_off = col_off;
    R.Mpad = (M + MB - 1) / MB * MB;
    R.ntiles = ntiles; R.tiles = tiles; R.wpk = wpk; R.woff = woff;
    R.O = O; R.ldy = ldy; R.y = y;
    R.w = w; R.wpad = wpad; R.x = x; R.ncyc = ncyc;
    R.cyc_nbits = cyc_nbits; R.cyc_bits = cyc_bits; R.cyc_fs = cyc_fs; R.cyc_qmul = cyc_qmul;
    R.coef = coef;
    R.analog = analog; R.exact = exact;
    R.A = adc_levels; R.alpha = alpha; R.rand_var = rand_var; R.nl_var = nl_var;
    R.nrow = nrow; R.reciprocal = reciprocal; R.noise_on = noise_on; R.seeds = seeds;
    if (M <= 0 || O <= 0) return 0;

    int64_t *xoff = (int64_t *)malloc(sizeof(int64_t) * (size_t)(ntiles + 1));
    if (!xoff) return -1;
    int64_t words = 0;
    for (int32_t t = 0; t < ntiles; ++t) {
        xoff[t] = words;
        words += (int64_t)x * ((tiles[2 * t + 1] - tiles[2 * t] + 63) / 64) * R.Mpad;
    }
    R.xoff = xoff;
    R.xpk = (uint64_t *)aligned_alloc(64, sizeof(uint64_t) * (size_t)(words > 0 ? words : 1));
    if (!R.xpk) {
        free(xoff);
        return -1;
    }

    /* items: row blocks x output ranges, enough for dynamic balancing */
    if (nthreads < 1) nthreads = 1;
    R.nmb = R.Mpad / MB;
    int64_t noc = 1;
    while (R.nmb * noc < 8 * nthreads && noc < O) noc *= 2;
    R.ochunk = (O + noc - 1) / noc;
    R.noc = (O + R.ochunk - 1) / R.ochunk;
    R.nitems = R.nmb * R.noc;
    if (nthreads > R.Mpad) nthreads = (int32_t)R.Mpad;
    R.nthreads = nthreads;

    if (nthreads > MAXTHREADS) nthreads = MAXTHREADS;
    R.nthreads = nthreads;
    int failed = parallel(&R, pack_worker);
    if (!failed) failed = parallel(&R, compute_worker);
    free(R.xpk);
    free(xoff);
    return failed ? -1 : 0;
}
