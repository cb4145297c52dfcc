/* fastbp's own products for a training step, without packing (docs/performance.md, "Own
 * product kernels"): NN (forward, C = A W), NT (input delta, C = D W^T) and TN (weight
 * gradient with the update folded in, C = beta C + alpha A^T D), row-major with any
 * leading dimensions.  Included by fastbp.h once per element type (FBP_T, FBP_NAME).
 *
 * One register block does all three: FBP_PROD_ROWS rows of C by FBP_PROD_VECTORS vectors
 * of its columns in accumulators; each step of k loads that many vectors of a row of B and
 * multiplies each by a broadcast element of A, one per row (6 x 2 vectors with AVX2: 12
 * accumulators, 2 loads and a broadcast of the 16 registers; 6 x 4 with AVX-512: 24 of 32).
 * BLAS packs both operands into its own layout on every call; for a training step's
 * products (32 or 128 rows) that copy is a large share.  Here the operands are read where
 * they lie: in NN, W's rows are B's rows (a panel of W's columns, k x 64 bytes per vector,
 * is read from L1/L2 once per block of 6 batch rows); in TN, A^T's elements are
 * consecutive in A's rows (the broadcasts) and D's rows are B's rows.  NT's B is W^T,
 * whose columns are W's rows: a panel of them is copied transposed (one pass over W per
 * call, k in chunks) and multiplied there.  The last n % lanes columns are a partial
 * vector in the last panel's register block, loaded and stored with masked moves (AVX-512's
 * mask registers, AVX2's vmaskmov), so no load or store passes the operands' ends and the
 * tail costs one more accumulator per row, not a pass of its own.
 *
 * Instances: 64-byte vectors compiled for AVX-512F (with FMA), 32-byte ones for AVX2+FMA;
 * fbp_product_isa picks one for this CPU (or the one asked for), and where neither fits
 * (another CPU or compiler) the products stay on BLAS. */

#ifdef FBP_LEVELS      /* fastbp.h: GCC on x86-64 */
#define FBP_PROD_HAVE_KERNELS 1
#include <immintrin.h>   /* the masked moves of a partial vector */
#endif

#ifndef FBP_PRODUCT_ISAS
#define FBP_PRODUCT_ISAS
#include <unistd.h>
/* This core's L2 cache in bytes (0: unknown), which sizes NN's blocks of rows: set when
   fastbp._core loads (from fbp_l2_cache_bytes) or by tests, before any product runs. */
static ptrdiff_t fbp_product_l2_bytes = 0;

/* The L2 cache's size as the C library reports it for this CPU (0 if it cannot say). */
static inline ptrdiff_t fbp_l2_cache_bytes(void)
{
#ifdef _SC_LEVEL2_CACHE_SIZE
    long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return bytes > 0 ? (ptrdiff_t)bytes : 0;
#else
    return 0;
#endif
}
#endif

#ifdef FBP_PROD_HAVE_KERNELS
#define FBP_PROD_ROWS 6
#define FBP_PROD_TALL 12   /* rows of a narrow last panel's blocks (fbp_prod_panel) */

#define FBP_PROD_BYTES 64
#define FBP_PROD_VECTORS 4
#define FBP_PROD_NT_PANELS 1   /* NT's transposed panel: 128 x 256 bytes, in L1 */
#define FBP_PROD(name) FBP_NAME(name##_avx512)
#define FBP_PROD_TARGET __attribute__((target("avx512f,avx2,fma")))
#include "products_impl.h"
#undef FBP_PROD_BYTES
#undef FBP_PROD_VECTORS
#undef FBP_PROD
#undef FBP_PROD_TARGET

#define FBP_PROD_BYTES 32
#define FBP_PROD_VECTORS 2
#define FBP_PROD_NT_PANELS 4   /* the same 128 x 256 bytes */
#define FBP_PROD(name) FBP_NAME(name##_avx2)
#define FBP_PROD_TARGET __attribute__((target("avx2,fma")))
#include "products_impl.h"
#undef FBP_PROD_BYTES
#undef FBP_PROD_VECTORS
#undef FBP_PROD
#undef FBP_PROD_TARGET

#undef FBP_PROD_ROWS
#undef FBP_PROD_TALL
#endif

/* C (m x n) = A (m x k) B (k x n) with the kernels of `isa` (not FBP_ISA_NONE). */
static inline void FBP_NAME(fbp_product_nn)(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                            const FBP_T *a, ptrdiff_t lda, const FBP_T *b,
                                            ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc)
{
#ifdef FBP_PROD_HAVE_KERNELS
    if (isa == FBP_ISA_AVX512)
        FBP_NAME(fbp_product_nn_avx512)(m, n, k, a, lda, b, ldb, c, ldc);
    else
        FBP_NAME(fbp_product_nn_avx2)(m, n, k, a, lda, b, ldb, c, ldc);
#else
    (void)isa; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)b; (void)ldb; (void)c;
    (void)ldc;
#endif
}

/* C (m x n) = D (m x k) W^T, W (n x k). */
static inline void FBP_NAME(fbp_product_nt)(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                            const FBP_T *d, ptrdiff_t ldd, const FBP_T *w,
                                            ptrdiff_t ldw, FBP_T *c, ptrdiff_t ldc)
{
#ifdef FBP_PROD_HAVE_KERNELS
    if (isa == FBP_ISA_AVX512)
        FBP_NAME(fbp_product_nt_avx512)(m, n, k, d, ldd, w, ldw, c, ldc);
    else
        FBP_NAME(fbp_product_nt_avx2)(m, n, k, d, ldd, w, ldw, c, ldc);
#else
    (void)isa; (void)m; (void)n; (void)k; (void)d; (void)ldd; (void)w; (void)ldw; (void)c;
    (void)ldc;
#endif
}

/* C (m x n) = beta C + alpha A^T D, A (k x m), D (k x n); beta 0 never reads C. */
static inline void FBP_NAME(fbp_product_tn)(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                            FBP_T alpha, const FBP_T *a, ptrdiff_t lda,
                                            const FBP_T *d, ptrdiff_t ldd, FBP_T beta,
                                            FBP_T *c, ptrdiff_t ldc)
{
#ifdef FBP_PROD_HAVE_KERNELS
    if (isa == FBP_ISA_AVX512)
        FBP_NAME(fbp_product_tn_avx512)(m, n, k, alpha, a, lda, d, ldd, beta, c, ldc);
    else
        FBP_NAME(fbp_product_tn_avx2)(m, n, k, alpha, a, lda, d, ldd, beta, c, ldc);
#else
    (void)isa; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)d;
    (void)ldd; (void)beta; (void)c; (void)ldc;
#endif
}

#ifndef FBP_PRODUCTS_ONCE
#define FBP_PRODUCTS_ONCE
/* The widest instruction set this CPU runs the kernels with (FBP_ISA_NONE: none): the
   widest level of the other kernels (fastbp.h). */
static inline int fbp_best_product_isa(void)
{
#ifdef FBP_PROD_HAVE_KERNELS
    return fbp_widest_level();
#else
    return FBP_ISA_NONE;
#endif
}

/* Multiply-adds per cycle of one core at its peak, measured: `n` iterations of 2 x lanes
   independent FMA chains on registers (no memory), the caller times it; returns a sum so
   the work is not removed.  isa picks the vector width. */
#ifdef FBP_PROD_HAVE_KERNELS
typedef float fbp_peak_vector_avx2 __attribute__((vector_size(32)));
typedef float fbp_peak_vector_avx512 __attribute__((vector_size(64)));
#define FBP_PEAK_LOOP(vector, name, isa_names) \
    __attribute__((target(isa_names), noinline)) static float name(long n, float x) \
    { \
        /* distinct starts, so the compiler cannot merge the chains into one */ \
        vector s0 = (vector){0} + 0.1f, s1 = (vector){0} + 0.2f, s2 = (vector){0} + 0.3f, \
               s3 = (vector){0} + 0.4f, s4 = (vector){0} + 0.5f, s5 = (vector){0} + 0.6f, \
               s6 = (vector){0} + 0.7f, s7 = (vector){0} + 0.8f, s8 = (vector){0} + 0.9f, \
               s9 = (vector){0} + 1.0f; \
        vector m = (vector){0} + x, y = (vector){0} + (1.0f - x); \
        __asm__ volatile("" : "+v"(m), "+v"(y)); \
        for (long i = 0; i < n; i++) { \
            s0 = s0 * m + y; s1 = s1 * m + y; s2 = s2 * m + y; s3 = s3 * m + y; \
            s4 = s4 * m + y; s5 = s5 * m + y; s6 = s6 * m + y; s7 = s7 * m + y; \
            s8 = s8 * m + y; s9 = s9 * m + y; \
        } \
        vector s = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 + s8 + s9; \
        float total = 0; \
        for (unsigned j = 0; j < sizeof(vector) / sizeof(float); j++) \
            total += s[j]; \
        return total; \
    }
FBP_PEAK_LOOP(fbp_peak_vector_avx2, fbp_fma_loop_avx2, "avx2,fma")
FBP_PEAK_LOOP(fbp_peak_vector_avx512, fbp_fma_loop_avx512, "avx512f,avx2,fma")
#undef FBP_PEAK_LOOP
#endif

/* n x 8 dependent integer adds: n x 8 cycles on any x86 core (an add's latency is one
   cycle), so timing it gives the core's clock. */
static inline long fbp_clock_loop(long n)
{
    long x = 0, one = 1;
    for (long i = 0; i < n; i++) {
#if defined(__GNUC__) && defined(__x86_64__)
        /* register operands: some cores fold chains of adds of an immediate */
        __asm__("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0"
                : "+r"(x) : "r"(one));
#else
        x += 8;
#endif
    }
    return x;
}

/* n iterations of 10 independent vector FMAs (float lanes of `isa`'s width); returns a
   value that depends on all of them. */
static inline float fbp_fma_loop(int isa, long n, float x)
{
#ifdef FBP_PROD_HAVE_KERNELS
    if (isa == FBP_ISA_AVX512)
        return fbp_fma_loop_avx512(n, x);
    if (isa == FBP_ISA_AVX2)
        return fbp_fma_loop_avx2(n, x);
#endif
    (void)isa; (void)n;
    return x;
}
#endif
