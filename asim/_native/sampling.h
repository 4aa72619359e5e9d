/* Counter-based noise stream and exact ADC code sampling (C twin of asim/rng.py and the
 * sampling part of asim/noise.py).
 *
 * Every random decision is a pure function of integers: a 64-bit key per layer and chip,
 * derived keys per output element, and a draw counter per conversion. One splitmix64-style
 * finalizer per draw turns a counter into 64 random bits; an ADC code is then one 32-bit
 * uniform compared against precomputed integer thresholds. No state, no globals, no floating
 * point on the exact path, so the C kernel and the torch path give the same bits.
 *
 * The #define ASIM_... constants below are the single source of truth: asim/rng.py parses
 * them from this file at import time. Keep each on one line: `#define ASIM_NAME value`.
 *
 * C99, header-only, every function static inline.
 */
#ifndef ASIM_SAMPLING_H
#define ASIM_SAMPLING_H

#include <math.h>
#include <stdint.h>

/* splitmix64 finalizer (Steele, Lea, Flood 2014; the "mix13" variant of Stafford's
 * constants): x ^= x >> S1; x *= M1; x ^= x >> S2; x *= M2; x ^= x >> S3. */
#define ASIM_MIX_S1 30
#define ASIM_MIX_M1 0xbf58476d1ce4e5b9ULL
#define ASIM_MIX_S2 27
#define ASIM_MIX_M2 0x94d049bb133111ebULL
#define ASIM_MIX_S3 31

/* Odd multipliers that spread one index over 64 bits before mixing it into a key. */
#define ASIM_KEY_SEED 0x6a09e667f3bcc909ULL
#define ASIM_KEY_LAYER 0xbb67ae8584caa73bULL
#define ASIM_KEY_SUB 0x3c6ef372fe94f82bULL
#define ASIM_KEY_SAMPLE 0xa54ff53a5f1d36f1ULL
#define ASIM_KEY_POS 0x510e527fade682d1ULL
#define ASIM_KEY_OUT 0x9b05688c2b3e6c1fULL
/* Weyl increment of the draw counter (golden ratio * 2^64, splitmix64's gamma). */
#define ASIM_DRAW_GAMMA 0x9e3779b97f4a7c15ULL

/* Code tables: at most 2^ASIM_TABLE_MAX_LOG2 thresholds in one table, guide tables of at
 * most 2^ASIM_GUIDE_MAX_BITS buckets per count and 2^ASIM_GUIDE_MAX_LOG2 entries in all. */
#define ASIM_TABLE_MAX_LOG2 25
#define ASIM_GUIDE_MAX_BITS 10
#define ASIM_GUIDE_MAX_LOG2 24

/* ---------------------------------------------------------------------------------------- */
/* Hash stream                                                                               */

static inline uint64_t asim_mix64(uint64_t x) {
    x ^= x >> ASIM_MIX_S1;
    x *= ASIM_MIX_M1;
    x ^= x >> ASIM_MIX_S2;
    x *= ASIM_MIX_M2;
    x ^= x >> ASIM_MIX_S3;
    return x;
}

/* A key derived from `key` and one integer index: mix64(key + index * mult), wrap-around. */
static inline uint64_t asim_derive(uint64_t key, int64_t index, uint64_t mult) {
    return asim_mix64(key + (uint64_t)index * mult);
}

/* The key of one layer of one chip (seed), see asim.rng.layer_key. */
static inline uint64_t asim_layer_key(uint64_t seed, int64_t layer) {
    return asim_derive(asim_mix64(seed ^ ASIM_KEY_SEED), layer, ASIM_KEY_LAYER);
}

/* A sub-key (e.g. one forward call of a layer), see asim.rng.sub_key. */
static inline uint64_t asim_sub_key(uint64_t key, int64_t index) {
    return asim_derive(key, index, ASIM_KEY_SUB);
}

/* The key of one output element: global sample index, position inside the sample, output
 * column. See asim.rng.element_keys. */
static inline uint64_t asim_element_key(uint64_t call_key, int64_t sample, int64_t pos,
                                        int64_t out) {
    uint64_t k = asim_derive(call_key, sample, ASIM_KEY_SAMPLE);
    k = asim_derive(k, pos, ASIM_KEY_POS);
    return asim_derive(k, out, ASIM_KEY_OUT);
}

/* 64 random bits of draw number `draw` of one element (one mix64). */
static inline uint64_t asim_draw_u64(uint64_t ekey, uint64_t draw) {
    return asim_mix64(ekey + draw * ASIM_DRAW_GAMMA);
}

/* A uniform integer in [0, 2^32): the upper half of asim_draw_u64. */
static inline uint32_t asim_draw_u32(uint64_t ekey, uint64_t draw) {
    return (uint32_t)(asim_draw_u64(ekey, draw) >> 32);
}

/* A standard normal from the same 64 bits (Box-Muller in double, rounded to float): only for
 * non-integer counts (weight-cell variation). log/sqrt/cos may differ in their last bits
 * between math libraries, so this draw is not promised bit-identical across backends. */
static inline float asim_normal_from(uint64_t ekey, uint64_t draw) {
    const uint64_t bits = asim_draw_u64(ekey, draw);
    const double u1 = ((double)(bits >> 32) + 0.5) * 0x1p-32; /* (0, 1) */
    const double u2 = (double)(bits & 0xffffffffULL) * 0x1p-32;  /* [0, 1) */
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---------------------------------------------------------------------------------------- */
/* Exact ADC code sampling                                                                   */

/* One code table: P(code | integer count m) as cumulative 32-bit thresholds (see
 * asim.noise.CodeTable, which builds it and mirrors this layout as a ctypes.Structure).
 *
 *   r = m - m_min                       row of count m, 0 <= r < n_m (the caller guarantees)
 *   row r's thresholds: thr[start[r]] .. thr[start[r+1]-1], non-decreasing, in [1, 2^32-1]
 *   code = k_lo[r] + #{ j in row r : u >= thr[j] }
 *
 * guide[(r << guide_bits) + b] = #{ j in row r : thr[j] <= b << (32 - guide_bits) } lets the
 * scan start next to the answer: the few thresholds inside u's bucket are compared. */
typedef struct {
    const uint32_t *thr;   /* all rows' thresholds, concatenated */
    const int32_t *start;  /* n_m + 1 offsets into thr */
    const int32_t *k_lo;   /* n_m: the smallest code with non-zero probability */
    const int32_t *guide;  /* n_m << guide_bits: thresholds at or below each bucket's start */
    int32_t m_min;         /* the count of row 0 */
    int32_t n_m;           /* number of rows (counts m_min .. m_min + n_m - 1) */
    int32_t guide_bits;    /* 1 .. ASIM_GUIDE_MAX_BITS */
    int32_t max_code;      /* the largest code any row can give */
} asim_code_table;

/* The ADC code for integer count m and uniform u (from asim_draw_u32). */
static inline int32_t asim_sample_code(const asim_code_table *t, int32_t m, uint32_t u) {
    const int32_t r = m - t->m_min;
    const int32_t end = t->start[r + 1];
    int32_t j = t->start[r] +
                t->guide[((int64_t)r << t->guide_bits) + (int64_t)(u >> (32 - t->guide_bits))];
    while (j < end && u >= t->thr[j]) ++j;
    return t->k_lo[r] + (j - t->start[r]);
}

/* The statistical mode of K codes; ties go to the smallest code (spec §8.2). */
static inline int32_t asim_vote(const int32_t *codes, int K) {
    int32_t best = codes[0];
    int bestn = 0;
    for (int i = 0; i < K; ++i) {
        int n = 0;
        for (int k = 0; k < K; ++k) n += codes[k] == codes[i];
        if (n > bestn || (n == bestn && codes[i] < best)) {
            best = codes[i];
            bestn = n;
        }
    }
    return best;
}

#endif /* ASIM_SAMPLING_H */
