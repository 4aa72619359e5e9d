/* One code lookup per draw, as the kernel's codes8 does it, timed alone (bench_lookup.py).
 *
 * usage: bench_lookup DIR FORMAT BITS FINE USE MEAN ROWS [M H]
 *   DIR     holds entry.bin, scan.bin, thr.bin (int32) and, for FORMAT rel and e16, klo.bin
 *           (and for e16 start.bin)
 *   FORMAT  abs: the kernel's bucket entry (code | d << 8);
 *           rel: a smaller entry, code - k_lo[row] | d << (BITS - 1), plus a k_lo gather;
 *           e16: a 16-bit entry, code - base(row) | kind << 6 | dhi << 8, no second gather:
 *           base(row) = ((row * M) >> 16) - H; kind 0: no threshold in the bucket, 1: one,
 *           whose top 8 bits below the bucket's are dhi, 2: several; the rare draws it cannot
 *           settle (kind 2, or kind 1 with u's next 8 bits equal to dhi) count the row's
 *           thresholds;
 *           a16: a 16-bit entry with the code itself, code | dhi << 8 | open << 15 (dhi: the
 *           top 7 bits of a lone threshold's offset in the bucket, 127 when none; open: the
 *           bucket holds several, or dhi would be 127): draws it cannot settle count the row's
 *   FINE    rows per count of the table: 16 (a row per fine index) or 1 (a row per count)
 *   USE     fine rows per count the draws use, FINE/USE apart (USE < FINE: the footprint of a
 *           coarser grid), a random one per draw
 *   MEAN    mean of the geometric count distribution; ROWS: rows of the table
 * prints: ns per draw (best of 7 passes over 2^22 draws, thread CPU) and a checksum. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N (1 << 22)
static int32_t rows[N];
static uint32_t us[N];
static uint64_t state = 88172645463325252ULL;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static uint32_t *load(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint32_t *b = aligned_alloc(64, (size_t)((n + 64 + 63) / 64 * 64)); /* e16 reads past */
    if (fread(b, 1, (size_t)n, f) != (size_t)n) exit(2);
    fclose(f);
    return b;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static __m256i lookup8(const uint32_t *entry, const int32_t *klo, const int32_t *scan,
                       const uint32_t *thr, int bits, int rel, const int32_t *mc, __m256i vu) {
    const int sh = 32 - bits, cb = rel ? bits - 1 : 8;
    const __m256i vr = _mm256_loadu_si256((const __m256i *)mc);
    const __m256i ix = _mm256_add_epi32(_mm256_sll_epi32(vr, _mm_cvtsi32_si128(bits)),
                                        _mm256_srl_epi32(vu, _mm_cvtsi32_si128(sh)));
    const __m256i e = _mm256_i32gather_epi32((const int *)entry, ix, 4);
    const __m256i d = _mm256_srl_epi32(e, _mm_cvtsi32_si128(cb));
    const __m256i low = _mm256_and_si256(vu, _mm256_set1_epi32((int32_t)((1u << sh) - 1u)));
    __m256i c = _mm256_and_si256(e, _mm256_set1_epi32((1 << cb) - 1));
    if (rel) c = _mm256_add_epi32(c, _mm256_i32gather_epi32((const int *)klo, vr, 4));
    __m256i q = _mm256_add_epi32(
        c, _mm256_add_epi32(_mm256_set1_epi32(1), _mm256_cmpgt_epi32(d, low)));
    const int several =
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(d, _mm256_setzero_si256())));
    if (several) {
        int32_t qq[8], at[8], rr[8];
        uint32_t uu[8];
        _mm256_storeu_si256((__m256i *)qq, q);
        _mm256_storeu_si256((__m256i *)at, ix);
        _mm256_storeu_si256((__m256i *)rr, vr);
        _mm256_storeu_si256((__m256i *)uu, vu);
        for (int l = several; l; l &= l - 1) {
            const int t = __builtin_ctz((unsigned)l);
            const int32_t s = scan[at[t]], n = (int32_t)((uint32_t)s >> 25);
            const uint32_t *th = thr + (s & ((1 << 25) - 1));
            int32_t k = (int32_t)(entry[at[t]] & ((1u << cb) - 1u)) + (rel ? klo[rr[t]] : 0);
            for (int32_t j = 0; j < n; ++j) k += uu[t] >= th[j];
            qq[t] = k;
        }
        q = _mm256_loadu_si256((const __m256i *)qq);
    }
    return q;
}

/* The 16-bit formats' lanes in `several` whose bucket does not settle the code: the code is
 * k_lo[row] plus the row's thresholds at or below u. */
static __m256i settle(__m256i q, int several, const uint32_t *thr, const int32_t *start,
                      const int32_t *klo, __m256i vr, __m256i vu) {
    if (!several) return q;
    int32_t qq[8], rr[8];
    uint32_t uu[8];
    _mm256_storeu_si256((__m256i *)qq, q);
    _mm256_storeu_si256((__m256i *)rr, vr);
    _mm256_storeu_si256((__m256i *)uu, vu);
    for (int l = several; l; l &= l - 1) {
        const int t = __builtin_ctz((unsigned)l);
        int32_t k = klo[rr[t]];
        for (int32_t j = start[rr[t]]; j < start[rr[t] + 1]; ++j) k += uu[t] >= thr[j];
        qq[t] = k;
    }
    return _mm256_loadu_si256((const __m256i *)qq);
}

static __m256i lookup8_e16(const uint16_t *entry, const uint32_t *thr, const int32_t *start,
                           const int32_t *klo, int bits, int M, int H, const int32_t *mc,
                           __m256i vu) {
    const __m256i vr = _mm256_loadu_si256((const __m256i *)mc);
    const __m256i ix = _mm256_add_epi32(_mm256_sll_epi32(vr, _mm_cvtsi32_si128(bits)),
                                        _mm256_srl_epi32(vu, _mm_cvtsi32_si128(32 - bits)));
    const __m256i e = _mm256_i32gather_epi32((const int *)entry, ix, 2);
    const __m256i base = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_mullo_epi32(vr, _mm256_set1_epi32(M)), 16), _mm256_set1_epi32(H));
    const __m256i kind = _mm256_and_si256(e, _mm256_set1_epi32(0xC0));
    const __m256i dhi = _mm256_and_si256(_mm256_srli_epi32(e, 8), _mm256_set1_epi32(0xFF));
    const __m256i uh = _mm256_and_si256(_mm256_srl_epi32(vu, _mm_cvtsi32_si128(24 - bits)),
                                        _mm256_set1_epi32(0xFF));
    const __m256i one = _mm256_cmpeq_epi32(kind, _mm256_set1_epi32(0x40));
    const __m256i up = _mm256_and_si256(one, _mm256_cmpgt_epi32(uh, dhi)); /* -1: one more */
    __m256i q = _mm256_sub_epi32(
        _mm256_add_epi32(base, _mm256_and_si256(e, _mm256_set1_epi32(63))), up);
    const __m256i open = _mm256_or_si256(_mm256_cmpeq_epi32(kind, _mm256_set1_epi32(0x80)),
                                         _mm256_and_si256(one, _mm256_cmpeq_epi32(uh, dhi)));
    return settle(q, _mm256_movemask_ps(_mm256_castsi256_ps(open)), thr, start, klo, vr, vu);
}

static __m256i lookup8_a16(const uint16_t *entry, const uint32_t *thr, const int32_t *start,
                           const int32_t *klo, int bits, const int32_t *mc, __m256i vu) {
    const __m256i vr = _mm256_loadu_si256((const __m256i *)mc);
    const __m256i ix = _mm256_add_epi32(_mm256_sll_epi32(vr, _mm_cvtsi32_si128(bits)),
                                        _mm256_srl_epi32(vu, _mm_cvtsi32_si128(32 - bits)));
    const __m256i e = _mm256_i32gather_epi32((const int *)entry, ix, 2);
    const __m256i dhi = _mm256_and_si256(_mm256_srli_epi32(e, 8), _mm256_set1_epi32(0x7F));
    const __m256i uh = _mm256_and_si256(_mm256_srl_epi32(vu, _mm_cvtsi32_si128(25 - bits)),
                                        _mm256_set1_epi32(0x7F));
    __m256i q = _mm256_sub_epi32(_mm256_and_si256(e, _mm256_set1_epi32(0xFF)),
                                 _mm256_cmpgt_epi32(uh, dhi));
    const __m256i tie = _mm256_andnot_si256(_mm256_cmpeq_epi32(dhi, _mm256_set1_epi32(127)),
                                            _mm256_cmpeq_epi32(uh, dhi));
    const __m256i open = _mm256_or_si256(tie, _mm256_slli_epi32(e, 16)); /* open: bit 15 */
    return settle(q, _mm256_movemask_ps(_mm256_castsi256_ps(open)), thr, start, klo, vr, vu);
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 10) return 1;
    const char *dir = argv[1];
    const int rel = strcmp(argv[2], "rel") == 0, a16 = strcmp(argv[2], "a16") == 0;
    const int e16 = strcmp(argv[2], "e16") == 0, short16 = e16 || a16;
    const int bits = atoi(argv[3]), fine = atoi(argv[4]), use = atoi(argv[5]);
    const double mean = atof(argv[6]);
    const int nrows = atoi(argv[7]), top = (nrows - 1) / fine;
    const int M = argc == 10 ? atoi(argv[8]) : 0, H = argc == 10 ? atoi(argv[9]) : 0;
    const uint32_t *entry = load(dir, "entry.bin"), *thr = load(dir, "thr.bin");
    const int32_t *scan = (const int32_t *)load(dir, "scan.bin");
    const int32_t *klo = (const int32_t *)load(dir, "klo.bin");
    const int32_t *start = (const int32_t *)load(dir, "start.bin");
    if (!entry || !thr || (!short16 && !scan) || ((rel || short16) && !klo) ||
        (short16 && !start))
        return 2;
    for (int i = 0; i < N; ++i) {
        const double u = (double)(next() >> 11) * 0x1p-53;
        int m = (int)(-mean * log(1.0 - u));
        m = m > top ? top : m;
        const int r = m * fine + (int)(next() % (uint64_t)use) * (fine / use);
        rows[i] = r < nrows ? r : nrows - 1;
        us[i] = (uint32_t)(next() >> 32);
    }
    __m256i acc = _mm256_setzero_si256();
    double best = 1e30;
    for (int rep = 0; rep < 7; ++rep) {
        const double t0 = now();
        for (int i = 0; i < N; i += 8) {
            const __m256i vu = _mm256_loadu_si256((const __m256i *)(us + i));
            const uint16_t *e = (const uint16_t *)entry;
            acc = _mm256_add_epi32(
                acc, e16   ? lookup8_e16(e, thr, start, klo, bits, M, H, rows + i, vu)
                     : a16 ? lookup8_a16(e, thr, start, klo, bits, rows + i, vu)
                           : lookup8(entry, klo, scan, thr, bits, rel, rows + i, vu));
        }
        const double t = now() - t0;
        best = t < best ? t : best;
    }
    int32_t a[8];
    _mm256_storeu_si256((__m256i *)a, acc);
    printf("%.3f %d\n", best / N * 1e9, a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7]);
    return 0;
}
