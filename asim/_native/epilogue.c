/* Fused ADC epilogue of the ACiM engine (CPU): one pass over the bit-plane MACs.
 *
 * For every output element it runs the spec's cycle sequence (acim-model.md §4.1, §5, §6):
 * cycle count from bit MACs, optional gain compression, normalise, clamp, optional noise
 * (standard normals supplied by the caller), clamp, ADC rounding (half to even), rescale,
 * and the float32 shift-and-add in the spec's order (weight bit, then cycle, descending).
 * Every operation is a single float32 IEEE operation, as in the torch path: build with
 * -ffp-contract=off and without -ffast-math so the compiler neither fuses nor reorders.
 *
 * Layouts (one batch slice): g is bf16 (raw uint16 bits) [w][O][x][Mc]; yt is float32
 * [O][Mc]; z (optional) is float32 [w][O][C][Mc].
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAXBITS 32

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = ((uint32_t)h) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* cyc_bits: ncyc x MAXBITS bit indices (ascending within a cycle), cyc_nbits: bits per
 * cycle, cyc_fs: full scale per cycle (counts), coef/analog/exact: w x ncyc. */
void acim_epilogue(const uint16_t *g, float *yt, const float *z, int64_t o_begin,
                   int64_t o_end, int64_t O, int64_t Mc, int32_t w, int32_t x, int32_t ncyc,
                   const int32_t *cyc_nbits, const int32_t *cyc_bits, const float *cyc_fs,
                   const float *coef, const uint8_t *analog, const uint8_t *exact,
                   float adc_levels, int32_t reciprocal, float alpha, float rand_var,
                   float nl_var, float nrow, float *scratch /* Mc floats */) {
    const float A = adc_levels;
    const float invA = 1.0f / A;
    for (int64_t o = o_begin; o < o_end; ++o) {
        float *y = yt + o * Mc;
        for (int32_t i = w - 1; i >= 0; --i) {
            const uint16_t *gi = g + ((int64_t)i * O + o) * (int64_t)x * Mc;
            for (int32_t c = ncyc - 1; c >= 0; --c) {
                const int32_t nb = cyc_nbits[c];
                const int32_t *bits = cyc_bits + (int64_t)c * MAXBITS;
                const float F = cyc_fs[c];
                const float invF = 1.0f / F;
                const float k = coef[i * ncyc + c];
                float *m = scratch;
                /* cycle count: sum_k 2^k * MAC(bit_k), exact integers */
                const uint16_t *g0 = gi + (int64_t)bits[0] * Mc;
                for (int64_t t = 0; t < Mc; ++t) m[t] = bf16_to_f32(g0[t]);
                for (int32_t b = 1; b < nb; ++b) {
                    const uint16_t *gb = gi + (int64_t)bits[b] * Mc;
                    const float s = (float)(1u << b);
                    for (int64_t t = 0; t < Mc; ++t) m[t] = m[t] + s * bf16_to_f32(gb[t]);
                }
                if (exact[i * ncyc + c]) {
                    for (int64_t t = 0; t < Mc; ++t) y[t] = y[t] + k * m[t];
                    continue;
                }
                if (alpha != 0.0f) {
                    for (int64_t t = 0; t < Mc; ++t) m[t] = m[t] / (m[t] * alpha + 1.0f);
                }
                const int noisy = z != 0 && analog[i * ncyc + c];
                const float *zc = noisy ? z + (((int64_t)i * O + o) * ncyc + c) * Mc : 0;
                for (int64_t t = 0; t < Mc; ++t) {
                    float a = reciprocal ? m[t] * invF : m[t] / F;
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
    }
}
