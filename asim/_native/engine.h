/* The one interface between the Python engine (asim/engine/native.py) and the C kernel
 * (engine.c). Python parses this file at import time: every `#define ASIM_<NAME> <int>`
 * becomes a constant, and the ASIM_RUN_FIELDS list becomes the ctypes.Structure that
 * mirrors `asim_run` field for field. Change a field or a constant here and both sides
 * follow; engine.c also reports sizeof(asim_run), which Python checks on load.
 *
 * The same holds for ASIM_BUCKET_FIELDS (`asim_bucket_table`, one per noisy cycle).
 * Field types: ptr (const void *), i32 (int32_t), i64 (int64_t), u64 (uint64_t), f32 (float).
 */
#ifndef ASIM_ENGINE_H
#define ASIM_ENGINE_H
#include <stdint.h>

#define ASIM_MAXBITS 32   /* most bit planes of a weight or activation code */
#define ASIM_MB 32        /* output rows per register block (a multiple of 8) */
#define ASIM_IB 4         /* weight bits per count block; weight planes padded to a multiple */
#define ASIM_MAXVOTES 64  /* most conversions of one voted cycle */
#define ASIM_MAXTHREADS 256

/* How activation/weight codes are stored (the packer reads them in place). */
#define ASIM_KIND_F32 0   /* integer-valued float32 */
#define ASIM_KIND_I32 1   /* int32 */
#define ASIM_KIND_I8 2    /* one byte: uint8, or int8 holding <= 8 bits */

/* What one (weight bit, cycle) conversion does (the plan's `mode`, spec §4.1, §6, §8.2). */
#define ASIM_CYC_ADC 0    /* noise-free ADC: the spec chain on the count */
#define ASIM_CYC_EXACT 1  /* digital exact cycle: the count itself (hybrid_exact, Q4) */
#define ASIM_CYC_NOISY 2  /* one code drawn from the cycle's code table */
#define ASIM_CYC_VOTED 3  /* `votes` codes drawn, the most frequent kept (ties: smallest) */

/* A chip's fixed column pattern (spec §4.7): an ADC with gain G and offset D (integers)
 * converts count m at the fine index n = min(max(m*G + D, 0) >> ASIM_GAIN_BITS, F << ASIM_FINE_BITS)
 * of a grid of 2^-ASIM_FINE_BITS counts; the temporal noise of an ADC is scaled by a
 * multiple of 1/ASIM_SIGMA_STEPS. */
#define ASIM_FINE_BITS 4
#define ASIM_GAIN_BITS 8
#define ASIM_SIGMA_STEPS 8

/* X(type, name, meaning) */
#define ASIM_RUN_FIELDS(X)                                                                  \
    X(ptr, codes, "activation codes of `kind`: row m at m*ld, or at row_off[m]+col_off[r]")  \
    X(i32, kind, "ASIM_KIND_* of codes")                                                    \
    X(i64, ld, "row stride of codes (elements) when row_off is NULL")                       \
    X(ptr, row_off, "int64 [M] element offset of each row, or NULL")                        \
    X(ptr, col_off, "int64 [R] element offset of each column, or NULL")                     \
    X(i64, M, "rows of this call")                                                          \
    X(i32, ntiles, "number of tiles")                                                       \
    X(ptr, tiles, "int64 [ntiles][2] reduction-row ranges")                                 \
    X(ptr, wpk, "uint64 weight planes, per tile [O][wpad][nw_t] (acim_pack)")               \
    X(ptr, woff, "int64 [ntiles] word offset of each tile in wpk")                          \
    X(i64, O, "output columns")                                                             \
    X(ptr, y, "float32 output: y[m*ldy + o*ldo], or y[y_row[m] + o*ldo], written")          \
    X(i64, ldy, "row stride of y when y_row is NULL")                                       \
    X(ptr, y_row, "int64 [M] element offset of each output row, or NULL")                   \
    X(i64, ldo, "column stride of y")                                                       \
    X(i32, w, "weight bits")                                                                \
    X(i32, wpad, "weight planes in wpk (w rounded up to ASIM_IB)")                          \
    X(i32, x, "activation bits")                                                            \
    X(i32, ncyc, "activation cycles")                                                       \
    X(ptr, cyc_nbits, "int32 [ncyc] activation bits per cycle")                             \
    X(ptr, cyc_bits, "int32 [ncyc][ASIM_MAXBITS] the bits of each cycle, ascending")        \
    X(ptr, coef, "float32 [w][ncyc] signed power-of-two weight of each conversion")         \
    X(ptr, mode, "uint8 [w][ncyc] ASIM_CYC_* of each conversion")                           \
    X(ptr, cyc_fs, "float32 [ncyc] full scale F_c of each cycle, in counts")                \
    X(ptr, cyc_qmul, "float32 [ncyc] fl(A/F_c) where rne(m*qmul) gives every ADC code, or 0") \
    X(ptr, cyc_code, "uint32 [ncyc][3] (k, b, s): (m*k + b) >> s == rne(m*qmul), or NULL")   \
    X(ptr, cyc_late, "uint8 [ncyc] 1: compress after the noise (Q28 sign cycle)")           \
    X(f32, adc_levels, "A = 2^adc_bits - 1")                                                \
    X(f32, alpha, "current-domain compression (0: off)")                                    \
    X(i32, reciprocal, "1: divide by float32 reciprocals (MacroConfig.division, Q10)")      \
    X(ptr, tables, "asim_code_table [ncyc] (sampling.h), or NULL when noise-free")          \
    X(ptr, buckets, "asim_bucket_table [ncyc] (entry NULL: use tables), or NULL")           \
    X(i32, votes, "conversions per voted cycle (K)")                                        \
    X(u64, call_key, "the call's 64-bit noise key")                                         \
    X(ptr, sample, "int64 [M] global sample index of each row")                             \
    X(ptr, pos, "int64 [M] position of each row inside its sample")                         \
    X(i32, nthreads, "threads to use (>= 1)")                                              \
    X(ptr, vcnt, "float32 value of each count (or fine index, §4.7) per cycle, or NULL")    \
    X(ptr, vcnt_off, "int64 [ncyc] offset of each cycle's table in vcnt")                   \
    X(ptr, vcode, "float32 [nclass][ncyc][A+1] value of each code (with vcnt; 1 class) or NULL") \
    X(ptr, pat_gain, "int64 [ntiles][w][O] gain G of each column's ADC (§4.7), or NULL")    \
    X(ptr, pat_offset, "int64 [ntiles][ncyc][w][O] offset D of each column's ADC")          \
    X(ptr, pat_block, "int32 [ntiles][w][O] noise block (sigma multiple) of each column")   \
    X(ptr, pat_top, "int32 [ncyc] the largest fine index S*F_c")                           \
    X(ptr, pat_vclass, "int32 [ntiles][w][O] value class of each column (§4.8), or NULL")   \
    X(ptr, fcode, "int32 code of each fine index, cycle c's at vcnt_off[c] (pat_vclass)")   \
    X(i32, pat_narrow, "1: every column's m*G + D fits int32 (32-bit lanes), 0: int64")

/* The code table of one cycle re-indexed for the kernel, so that most draws are one lookup
 * and one compare. Row r = m - m_min and bucket b = u >> (32 - bits) of the uniform u give
 * entry[(r << bits) + b] = c | d << ASIM_BUCKET_CODE_BITS, where c is the code of the
 * bucket's first u and d says where the code steps inside the bucket:
 *   d = 2^(32 - bits)         no threshold inside: code = c;
 *   1 <= d < 2^(32 - bits)    one threshold, at the bucket's start + d: code = c + (low >= d),
 *                             low = u & (2^(32 - bits) - 1);
 *   d = 0                     several: scan[...] = j | n << ASIM_BUCKET_SCAN_SHIFT, and
 *                             code = c + #{k < n : u >= thr[j + k]}.
 * It gives exactly asim_sample_code's code (built and checked in asim/engine/native.py). */
#define ASIM_BUCKET_CODE_BITS 8  /* codes 0 .. 255 (ADCs of up to 8 bits) */
#define ASIM_BUCKET_MIN_BITS 9   /* c (8 bits) and d (up to 33 - bits bits) share 32 bits */
#define ASIM_BUCKET_SCAN_SHIFT 25 /* thr index j below 2^ASIM_TABLE_MAX_LOG2 (sampling.h) */
#define ASIM_BUCKET_FIELDS(X)                                                               \
    X(ptr, entry, "uint32 [n_m << bits]: code | d << ASIM_BUCKET_CODE_BITS")                \
    X(ptr, scan, "int32 [n_m << bits]: j | n << ASIM_BUCKET_SCAN_SHIFT where d = 0")        \
    X(ptr, thr, "uint32 thresholds of the code table")                                      \
    X(i32, m_min, "count of row 0")                                                         \
    X(i32, n_m, "rows")                                                                     \
    X(i32, bits, "bucket bits (ASIM_BUCKET_MIN_BITS .. 16)")                                \
    X(i32, max_n, "most thresholds inside one bucket (< 128)")

#define ASIM_C_ptr const void *
#define ASIM_C_i32 int32_t
#define ASIM_C_i64 int64_t
#define ASIM_C_u64 uint64_t
#define ASIM_C_f32 float
#define ASIM_FIELD(type, name, doc) ASIM_C_##type name;
typedef struct {
    ASIM_RUN_FIELDS(ASIM_FIELD)
} asim_run;
typedef struct {
    ASIM_BUCKET_FIELDS(ASIM_FIELD)
} asim_bucket_table;
#undef ASIM_FIELD

#endif
