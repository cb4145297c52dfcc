/* fbp_softmax_rows's blocks of FBP_SOFTMAX_ROWS rows (kernels_impl.h), in vectors: included
 * by one_type.h before kernels_impl.h, once per element type (FBP_T, FBP_NAME).
 *
 * A row of an output layer is often a few columns, too few to fill a vector, so a block of
 * rows is turned into columns: each column's FBP_SOFTMAX_ROWS values in one stack of
 * vectors (one 64-byte vector of floats, two of 32 bytes, ...), where the bias, the max,
 * the shift, the dot with the targets, the exps, the sums and the scaling run across the
 * rows, each row's the same operations in the same order as row by row (so the same bits as
 * a row alone).  The block is read and written by square tiles of vectors, transposed in
 * registers by log2(lanes) stages of two-vector shuffles, or element by element when it
 * has too few columns to fill a tile (FBP_SM_TILE_COLUMNS).  (Written as plain loops over
 * a transposed array, with the column count known only at run time, the block had
 * compiled to mostly single-element code: 470 ns for 16 rows x 10 columns on the Xeon of
 * docs/performance.md, 283 ns now.)  The vectors are GCC's generic vectors: 64 bytes in
 * an instance compiled for AVX-512F, else 32 bytes (one instance for AVX2, one for the
 * baseline), the one of level fbp_level running (fastbp.h), as for the few-row kernels;
 * other compilers take every row one by one. */

#define FBP_SOFTMAX_ROWS 16
#define FBP_SOFTMAX_COLUMNS 32

#ifdef FBP_LEVELS
#define FBP_SM_BYTES 64
#define FBP_SM(name) FBP_NAME(name##_64)
#define FBP_SM_TARGET __attribute__((target("avx512f")))
#include "softmax_impl.h"
#undef FBP_SM_BYTES
#undef FBP_SM
#undef FBP_SM_TARGET

#define FBP_SM_BYTES 32
#define FBP_SM(name) FBP_NAME(name##_32_avx2)
#define FBP_SM_TARGET __attribute__((target("avx2,fma")))
#include "softmax_impl.h"
#undef FBP_SM_BYTES
#undef FBP_SM
#undef FBP_SM_TARGET

#define FBP_SM_BYTES 32
#define FBP_SM(name) FBP_NAME(name##_32)
#define FBP_SM_TARGET
#include "softmax_impl.h"
#undef FBP_SM_BYTES
#undef FBP_SM
#undef FBP_SM_TARGET
#endif

/* 1 if fbp_softmax_rows takes rows of n_cols columns FBP_SOFTMAX_ROWS at a time through
   fbp_softmax_block. */
static inline int FBP_NAME(fbp_softmax_blocks)(ptrdiff_t n_cols)
{
#ifdef FBP_LEVELS
    return n_cols <= FBP_SOFTMAX_COLUMNS;
#else
    (void)n_cols;
    return 0;
#endif
}

/* One block, in the instance for this CPU's widest registers (fbp_softmax_blocks only). */
static inline void FBP_NAME(fbp_softmax_block)(FBP_T *block, const FBP_T *bias,
                                               ptrdiff_t n_cols, const FBP_T *target,
                                               const FBP_T *row_weights, FBP_T *delta,
                                               FBP_T scale, double *total)
{
#ifdef FBP_LEVELS
    FBP_FEW_WIDEST(fbp_softmax_block, block, bias, n_cols, target, row_weights, delta, scale,
                   total);
#else
    (void)block; (void)bias; (void)n_cols; (void)target; (void)row_weights; (void)delta;
    (void)scale; (void)total;
#endif
}
