/* Matrix products for few rows, without packing: out (m x n_out) = x (m x n_in) . W
 * (n_in x n_out), all row-major and contiguous.  Included by fastbp.h after kernels_impl.h,
 * once per element type (FBP_T, FBP_NAME).
 *
 * BLAS packs all of W into its own layout before a product; for a few rows that copy costs
 * more than the arithmetic (a one-row 784 x 128 product: about 40 us packed, 2-3 us here).
 * These kernels read W as it lies: for each input i, one row of W is loaded into vector
 * registers and multiplied by x[r, i] into the accumulators of up to four rows (4 x 2 or,
 * with AVX-512, 4 x 4 vectors; one row x up to 8).  Every
 * output element is one sum over i in order 0..n_in-1 in one accumulator, so its value
 * depends neither on m nor on which block computed it (a row predicts the same alone or in
 * a batch).  The vectors are GCC's generic vectors of a register's width: 64 bytes in an
 * instance compiled for AVX-512 and used where the CPU has it, else 32 bytes (AVX2 and the
 * baseline, FBP_MULTIVERSION's clones).  A 64-byte vector on AVX2 would be two registers
 * everywhere and spill: 784 x 128 at 4 rows took 326 us instead of 7. */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTBP_NO_MULTIVERSION)
#define FBP_FEW_HAVE_AVX512 1
#endif

#ifdef FBP_FEW_HAVE_AVX512
#define FBP_FEW_BYTES 64
#define FBP_FEW(name) FBP_NAME(name##_64)
#define FBP_FEW_TARGET __attribute__((target("avx512f")))
#include "few_rows_impl.h"
#undef FBP_FEW_BYTES
#undef FBP_FEW
#undef FBP_FEW_TARGET
#endif

#define FBP_FEW_BYTES 32
#define FBP_FEW(name) FBP_NAME(name##_32)
#define FBP_FEW_TARGET FBP_MULTIVERSION
#include "few_rows_impl.h"
#undef FBP_FEW_BYTES
#undef FBP_FEW
#undef FBP_FEW_TARGET

/* out = x . W for m rows, in the instance for this CPU's widest registers. */
static inline void FBP_NAME(fbp_few_rows_product)(FBP_T *out, const FBP_T *x, const FBP_T *W,
                                                  ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out)
{
#ifdef FBP_FEW_HAVE_AVX512
    if (__builtin_cpu_supports("avx512f")) {
        FBP_NAME(fbp_few_rows_product_64)(out, x, W, m, n_in, n_out);
        return;
    }
#endif
    FBP_NAME(fbp_few_rows_product_32)(out, x, W, m, n_in, n_out);
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
