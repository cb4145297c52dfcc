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
 * a batch).  The vectors are GCC's generic vectors of FBP_FEW_BYTES bytes, which each
 * target_clones instance lowers to its own registers (one zmm, two ymm or four xmm). */

#define FBP_FEW_BYTES 64
/* 1 where the CPU has AVX-512 (32 vector registers of 64 bytes): four rows then take four
   vectors of columns at once (16 accumulators; W1's 64-row product 17% faster), which
   would spill registers elsewhere.  Asked at run time, so every clone has both blocks. */
#ifndef FBP_FEW_WIDE_REGISTERS
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FBP_FEW_WIDE_REGISTERS __builtin_cpu_supports("avx512f")
#else
#define FBP_FEW_WIDE_REGISTERS 0
#endif
#endif
#define FBP_FEW_LANES ((ptrdiff_t)(FBP_FEW_BYTES / sizeof(FBP_T)))

typedef FBP_T FBP_NAME(fbp_few_vector) __attribute__((vector_size(FBP_FEW_BYTES)));
/* the same vector at any element-aligned address (W's rows start anywhere) */
typedef FBP_T FBP_NAME(fbp_few_unaligned)
    __attribute__((vector_size(FBP_FEW_BYTES), aligned(sizeof(FBP_T)), may_alias));

/* `rows` rows (1..4) by n_vectors vectors of columns (rows * n_vectors <= 8 accumulators);
   both are constants where it is inlined, so the loops unroll into registers. */
static inline __attribute__((always_inline)) void FBP_NAME(fbp_few_block)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    const int rows, const int n_vectors)
{
    typedef FBP_NAME(fbp_few_vector) vector;
    typedef FBP_NAME(fbp_few_unaligned) unaligned;
    vector sums[4][8];   /* at most 16 used */
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            sums[r][v] = (vector){0};
    for (ptrdiff_t i = 0; i < n_in; i++) {
        const FBP_T *w = W + i * n_out;
        vector loaded[8];
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            loaded[v] = *(const unaligned *)(w + v * FBP_FEW_LANES);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            FBP_T a = x[r * n_in + i];
#pragma GCC unroll 8
            for (int v = 0; v < n_vectors; v++)
                sums[r][v] += a * loaded[v];
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            *(unaligned *)(out + r * n_out + v * FBP_FEW_LANES) = sums[r][v];
}

/* The last n_cols < FBP_FEW_LANES columns of all m rows.  Too narrow for a vector load, so
   a chunk of their rows of W is first copied into zero-padded vectors (on the stack), and
   up to eight rows of x at a time accumulate against it, their sums kept between chunks
   (still one sum over i in order per element, whatever m is). */
#define FBP_FEW_TAIL_CHUNK 256
static inline __attribute__((always_inline)) void FBP_NAME(fbp_few_tail_rows)(
    FBP_NAME(fbp_few_vector) *sums, const FBP_T *xs, const FBP_NAME(fbp_few_vector) *tail,
    ptrdiff_t n, ptrdiff_t n_in, const int rows)
{
    FBP_NAME(fbp_few_vector) acc[8];
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
        acc[r] = sums[r];
    for (ptrdiff_t i = 0; i < n; i++)
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++)
            acc[r] += xs[r * n_in + i] * tail[i];
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
        sums[r] = acc[r];
}

static inline __attribute__((always_inline)) void FBP_NAME(fbp_few_tail)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out,
    ptrdiff_t n_cols)
{
    typedef FBP_NAME(fbp_few_vector) vector;
    const ptrdiff_t lanes = FBP_FEW_LANES;
    FBP_T padded[FBP_FEW_TAIL_CHUNK * FBP_FEW_BYTES / sizeof(FBP_T)]
        __attribute__((aligned(FBP_FEW_BYTES)));
    for (ptrdiff_t r0 = 0; r0 < m; r0 += 8) {
        const int rows = m - r0 < 8 ? (int)(m - r0) : 8;
        vector sums[8];
        for (int r = 0; r < 8; r++)
            sums[r] = (vector){0};
        for (ptrdiff_t i0 = 0; i0 < n_in; i0 += FBP_FEW_TAIL_CHUNK) {
            const ptrdiff_t n = n_in - i0 < FBP_FEW_TAIL_CHUNK ? n_in - i0 : FBP_FEW_TAIL_CHUNK;
            if (r0 == 0 || n_in > FBP_FEW_TAIL_CHUNK) {   /* else still there from rows r0 - 8 */
                memset(padded, 0, (size_t)(n * lanes) * sizeof(FBP_T));
                for (ptrdiff_t i = 0; i < n; i++)
                    for (ptrdiff_t j = 0; j < n_cols; j++)
                        padded[i * lanes + j] = W[(i0 + i) * n_out + j];
            }
            const FBP_T *xs = x + r0 * n_in + i0;
            const vector *tail = (const vector *)padded;
            switch (rows) {   /* a constant count, so the sums stay in registers */
            case 1: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 1); break;
            case 2: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 2); break;
            case 3: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 3); break;
            case 4: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 4); break;
            case 5: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 5); break;
            case 6: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 6); break;
            case 7: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 7); break;
            default: FBP_NAME(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 8); break;
            }
        }
        for (int r = 0; r < rows; r++)
            for (ptrdiff_t j = 0; j < n_cols; j++)
                out[(r0 + r) * n_out + j] = sums[r][j];
    }
}
#undef FBP_FEW_TAIL_CHUNK

/* The columns in whole vectors of `rows` rows (1 or 4): the widest blocks first, then narrower ones. */
static inline __attribute__((always_inline)) void FBP_NAME(fbp_few_columns)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    const int rows)
{
    const ptrdiff_t lanes = FBP_FEW_LANES;
    ptrdiff_t j = 0;
    if (rows == 1) {
        for (; j + 8 * lanes <= n_out; j += 8 * lanes)
            FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 8);
        if (j + 4 * lanes <= n_out) {
            FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 4);
            j += 4 * lanes;
        }
        if (j + 2 * lanes <= n_out) {
            FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 2);
            j += 2 * lanes;
        }
    } else {
        if (FBP_FEW_WIDE_REGISTERS)   /* 16 accumulators: only where 32 registers hold them */
            for (; j + 4 * lanes <= n_out; j += 4 * lanes)
                FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, 4, 4);
        for (; j + 2 * lanes <= n_out; j += 2 * lanes)
            FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, 4, 2);
    }
    for (; j + lanes <= n_out; j += lanes)
        FBP_NAME(fbp_few_block)(out + j, x, W + j, n_in, n_out, rows, 1);
}

/* out = x . W for m rows: blocks of four rows share each load of W, the rest go one by one. */
FBP_MULTIVERSION static void FBP_NAME(fbp_few_rows_product)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out)
{
    const ptrdiff_t n_tail = n_out % FBP_FEW_LANES;
    ptrdiff_t r = 0;
    if (n_out >= FBP_FEW_LANES) {
        for (; r + 4 <= m; r += 4)
            FBP_NAME(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 4);
        for (; r < m; r++)
            FBP_NAME(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 1);
    }
    if (n_tail)
        FBP_NAME(fbp_few_tail)(out + n_out - n_tail, x, W + n_out - n_tail, m, n_in, n_out,
                               n_tail);
}

/* 1 if fbp_few_rows_product is the faster way to take this product (m rows of x against
   an n_in x n_out W of elements like *W), else BLAS is.  Measured on 8 shapes from 64 x 1
   to 1024 x 4096, both dtypes, 1 to 64 rows (docs/performance.md, Serving): the kernels win
   up to 4 rows everywhere; up to 64 rows while W fits a 1 MiB L2 cache; up to 16 rows while
   the rows times W's bytes stay under 128 MiB (W streamed from memory once per 4 rows);
   past that BLAS's blocking for cache wins. */
static inline int FBP_NAME(fbp_few_rows_faster)(const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in,
                                                 ptrdiff_t n_out)
{
    (void)W;
    const double w_bytes = (double)n_in * (double)n_out * sizeof(FBP_T);
    return m <= 4 || (m <= 64 && w_bytes <= 1024.0 * 1024.0)
           || (m <= 16 && m * w_bytes <= 128.0 * 1024.0 * 1024.0);
}

#undef FBP_FEW_LANES
#undef FBP_FEW_BYTES
