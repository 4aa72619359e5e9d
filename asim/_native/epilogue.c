/* Native CPU kernels of the ACiM engine: a binary GEMM by popcount fused with the ADC
 * epilogue, so the bit-plane MACs never leave registers.
 *
 * For every output element the kernel runs the spec's cycle sequence (acim-model.md §4.1,
 * §5, §6): cycle count from bit MACs, optional gain compression, normalise, clamp, optional
 * noise (standard normals supplied by the caller), clamp, ADC rounding (half to even),
 * rescale, and the float32 shift-and-add in the spec's order (tile, then weight bit, then
 * cycle, descending). Every operation is a single float32 IEEE operation, as in the torch
 * path: build with -ffp-contract=off and without -ffast-math so that the compiler neither
 * fuses nor reorders them.
 */
#include <math.h>
#include <stdint.h>

#define MAXBITS 32

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
 * Binary GEMM by popcount (XNOR-net style) fused with the ADC epilogue.
 *
 * pack_planes: bit b of the two's-complement code of q[m, r0:r1] (integer-valued float32,
 * row stride ld) for b < nbits, packed 64 rows per word: out[b][wd][m] (uint64), for rows
 * m0..m1 of M.
 */
void acim_pack_planes(const float *codes, int64_t ld, int64_t m0, int64_t m1, int64_t M,
                      int64_t r0, int64_t r1, int32_t nbits, uint64_t *out) {
    const uint32_t mask = nbits >= 32 ? 0xFFFFFFFFu : ((1u << nbits) - 1u);
    const int64_t nw = (r1 - r0 + 63) / 64;
    for (int64_t m = m0; m < m1; ++m) {
        const float *row = codes + m * ld;
        for (int64_t wd = 0; wd < nw; ++wd) {
            const int64_t ra = r0 + wd * 64;
            const int64_t rb = ra + 64 < r1 ? ra + 64 : r1;
            uint64_t words[MAXBITS] = {0};
            for (int64_t r = ra; r < rb; ++r) {  /* each code read once, all its bits */
                const uint32_t u = (uint32_t)(int32_t)row[r] & mask;  /* two's complement */
                for (int32_t b = 0; b < nbits; ++b)
                    words[b] |= (uint64_t)((u >> b) & 1u) << (r - ra);
            }
            for (int32_t b = 0; b < nbits; ++b) out[((int64_t)b * nw + wd) * M + m] = words[b];
        }
    }
}

#define MB 32

/* For outputs o in [o0,o1) and m in [m0,m1): counts of tile planes by popcount, then the
 * ADC cycle sequence, accumulated into yt[o][m] (float32 [O][M]) in the spec's order.
 * xpk: [x][nw][M], wpk: [w][nw][O]. With noise_on, read-out noise uses the counter-based
 * normals above, keyed by seed and the (i, c, o, m) position. */
void acim_popcount_tile(const uint64_t *xpk, const uint64_t *wpk, int64_t nw, int64_t M,
                        int64_t O, int64_t o0, int64_t o1, int64_t m0, int64_t m1, float *yt,
                        int32_t w, int32_t x, int32_t ncyc,
                        const int32_t *cyc_nbits, const int32_t *cyc_bits, const float *cyc_fs,
                        const float *coef, const uint8_t *analog, const uint8_t *exact,
                        float adc_levels, int32_t reciprocal, float alpha, float rand_var,
                        float nl_var, float nrow, int32_t noise_on, uint64_t seed) {
    const float A = adc_levels;
    const float invA = 1.0f / A;
    float cnt[MAXBITS][MB];
    float mc[MB], y[MB], zz[MB];
    for (int64_t o = o0; o < o1; ++o) {
        for (int64_t mb = m0; mb < m1; mb += MB) {
            const int64_t n = (m1 - mb) < MB ? (m1 - mb) : MB;
            float *yo = yt + o * M + mb;
            for (int64_t t = 0; t < n; ++t) y[t] = yo[t];
            for (int32_t i = w - 1; i >= 0; --i) {
                /* all activation-bit counts of weight bit i for this block */
                for (int32_t j = 0; j < x; ++j) {
                    int64_t acc[MB];
                    for (int64_t t = 0; t < MB; ++t) acc[t] = 0;
                    for (int64_t wd = 0; wd < nw; ++wd) {
                        const uint64_t wv = wpk[((int64_t)i * nw + wd) * O + o];
                        const uint64_t *xv = xpk + ((int64_t)j * nw + wd) * M + mb;
                        if (n == MB) {
                            for (int64_t t = 0; t < MB; ++t)
                                acc[t] += __builtin_popcountll(xv[t] & wv);
                        } else {
                            for (int64_t t = 0; t < n; ++t)
                                acc[t] += __builtin_popcountll(xv[t] & wv);
                        }
                    }
                    for (int64_t t = 0; t < MB; ++t) cnt[j][t] = (float)acc[t];
                }
                for (int32_t c = ncyc - 1; c >= 0; --c) {
                    const int32_t nb = cyc_nbits[c];
                    const int32_t *bits = cyc_bits + (int64_t)c * MAXBITS;
                    const float F = cyc_fs[c];
                    const float invF = 1.0f / F;
                    const float k = coef[i * ncyc + c];
                    for (int64_t t = 0; t < n; ++t) mc[t] = cnt[bits[0]][t];
                    for (int32_t b = 1; b < nb; ++b) {
                        const float s = (float)(1u << b);
                        for (int64_t t = 0; t < n; ++t) mc[t] = mc[t] + s * cnt[bits[b]][t];
                    }
                    if (exact[i * ncyc + c]) {
                        for (int64_t t = 0; t < n; ++t) y[t] = y[t] + k * mc[t];
                        continue;
                    }
                    if (alpha != 0.0f)
                        for (int64_t t = 0; t < n; ++t) mc[t] = mc[t] / (mc[t] * alpha + 1.0f);
                    const int noisy = noise_on && analog[i * ncyc + c];
                    if (noisy) {
                        /* pair counter = global element index / 2 over an even-padded m
                         * axis (blocks start at even m), unique for every (i, c, o, m) */
                        const uint64_t Me = (uint64_t)(M + (M & 1));
                        const uint64_t base =
                            (((uint64_t)(i * ncyc + c) * (uint64_t)O + (uint64_t)o) * Me +
                             (uint64_t)mb) / 2u;
                        for (int64_t t = 0; t < MB / 2; ++t)
                            normal_pair(splitmix64(seed + base + (uint64_t)t), &zz[2 * t],
                                        &zz[2 * t + 1]);
                    }
                    const float *zc = zz;
                    for (int64_t t = 0; t < n; ++t) {
                        float a = reciprocal ? mc[t] * invF : mc[t] / F;
                        a = a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a);
                        if (noisy) {
                            float var = rand_var;
                            if (nl_var != 0.0f) var = var + nl_var / (a * nrow + 1.0f);
                            a = a + sqrtf(var) * zc[t];
                            a = a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a);
                        }
                        float q = nearbyintf(a * A);
                        float v = (reciprocal ? q * invA : q / A) * F;
                        y[t] = y[t] + k * v;
                    }
                }
            }
            for (int64_t t = 0; t < n; ++t) yo[t] = y[t];
        }
    }
}
