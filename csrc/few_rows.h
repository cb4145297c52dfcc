/* Matrix products for few rows, without packing: out (m x n_out) = x (m x n_in) . W
 * (n_in x n_out), all row-major and contiguous; and the two products of a training step's
 * backward pass for few rows: the input delta delta . W^T (fbp_few_rows_delta) and the
 * weight gradient with the update folded in, C = beta C + alpha A^T D
 * (fbp_few_rows_gradient).  Included by fastbp.h after kernels_impl.h, once per element
 * type (FBP_T, FBP_NAME).
 *
 * BLAS packs all of W into its own layout before a product; for a few rows that copy costs
 * more than the arithmetic (a one-row 784 x 128 product: about 40 us packed, 2-3 us here).
 * These kernels read W as it lies: for each input i, one row of W is loaded into vector
 * registers and multiplied by x[r, i] into the accumulators of up to four rows (2 to 4
 * rows x 2 vectors or, with AVX-512, x 4 vectors; one row x up to 8).  Every
 * output element is one sum over i in order 0..n_in-1 in one accumulator, so its value
 * depends neither on m nor on which block computed it (a row predicts the same alone or in
 * a batch).  The vectors are GCC's generic vectors of a register's width: 64 bytes in an
 * instance compiled for AVX-512F, else 32 bytes (one instance for AVX2, one for the
 * baseline), the one of level fbp_level running (fastbp.h).  A 64-byte vector on AVX2
 * would be two registers everywhere and spill: 784 x 128 at 4 rows took 326 us instead
 * of 7. */

#ifdef FBP_LEVELS
#define FBP_FEW_BYTES 64
#define FBP_FEW(name) FBP_NAME(name##_64)
#define FBP_FEW_TARGET __attribute__((target("avx512f")))
#include "few_rows_impl.h"
#undef FBP_FEW_BYTES
#undef FBP_FEW
#undef FBP_FEW_TARGET

#define FBP_FEW_BYTES 32
#define FBP_FEW(name) FBP_NAME(name##_32_avx2)
#define FBP_FEW_TARGET __attribute__((target("avx2,fma")))
#include "few_rows_impl.h"
#undef FBP_FEW_BYTES
#undef FBP_FEW
#undef FBP_FEW_TARGET
#endif

#define FBP_FEW_BYTES 32
#define FBP_FEW(name) FBP_NAME(name##_32)
#define FBP_FEW_TARGET
#include "few_rows_impl.h"
#undef FBP_FEW_BYTES
#undef FBP_FEW
#undef FBP_FEW_TARGET

/* out = x . W for m rows, in the instance for this CPU's widest registers (so are the
   two below). */
static inline void FBP_NAME(fbp_few_rows_product)(FBP_T *out, const FBP_T *x, const FBP_T *W,
                                                  ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out)
{
    FBP_FEW_WIDEST(fbp_few_rows_product, out, x, W, m, n_in, n_out);
}

/* out = delta W^T for m rows (W n_in x n_out): the backward pass's input delta. */
static inline void FBP_NAME(fbp_few_rows_delta)(FBP_T *out, const FBP_T *delta, const FBP_T *W,
                                                ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out)
{
    FBP_FEW_WIDEST(fbp_few_rows_delta, out, delta, W, m, n_in, n_out);
}

/* C = beta C + alpha A^T D (C n_rows x n_out; A m rows at stride lda; D m x n_out): a
   block of the weight gradient, with plain SGD's update folded in as in the GEMM. */
static inline void FBP_NAME(fbp_few_rows_gradient)(FBP_T *C, const FBP_T *A, ptrdiff_t lda,
                                                   const FBP_T *D, ptrdiff_t m,
                                                   ptrdiff_t n_rows, ptrdiff_t n_out,
                                                   FBP_T alpha, FBP_T beta)
{
    FBP_FEW_WIDEST(fbp_few_rows_gradient, C, A, lda, D, m, n_rows, n_out, alpha, beta);
}

/* 1 if fbp_few_rows_product is the faster way to take this product (m rows of x against
   an n_in x n_out W of elements like *W), else BLAS is.  Measured on 8 shapes from 64 x 1
   to 1024 x 4096, both dtypes, 1 to 64 rows, with AVX-512 and with AVX2 (docs/serving.md):
   the kernels win up to 4 rows everywhere; up to 64 rows while W fits 512 KiB (with AVX2
   a 512 x 512 float32 W, 1 MiB, already loses from 32 rows); up to 16 rows while the rows
   times W's bytes stay under 128 MiB (W streamed from memory once per 4 rows); past that
   BLAS's blocking for cache wins. */
static inline int FBP_NAME(fbp_few_rows_faster)(const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in,
                                                 ptrdiff_t n_out)
{
    (void)W;
    const double w_bytes = (double)n_in * (double)n_out * sizeof(FBP_T);
    return m <= 4 || (m <= 64 && w_bytes <= 512.0 * 1024.0)
           || (m <= 16 && m * w_bytes <= 128.0 * 1024.0 * 1024.0);
}
