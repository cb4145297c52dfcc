/* The few-row product for one element type (FBP_T, FBP_NAME) and one vector size
 * (FBP_FEW_BYTES), its functions named by FBP_FEW and compiled for FBP_FEW_TARGET: included
 * by few_rows.h, which says how it works and picks the instance. */

#define FBP_FEW_LANES ((ptrdiff_t)(FBP_FEW_BYTES / sizeof(FBP_T)))

typedef FBP_T FBP_FEW(fbp_few_vector) __attribute__((vector_size(FBP_FEW_BYTES)));
/* the same vector at any element-aligned address (W's rows start anywhere) */
typedef FBP_T FBP_FEW(fbp_few_unaligned)
    __attribute__((vector_size(FBP_FEW_BYTES), aligned(sizeof(FBP_T)), may_alias));

/* `rows` rows (1..6) by n_vectors vectors of columns (rows * n_vectors <= 24 accumulators);
   both are constants where it is inlined, so the loops unroll into registers. */
static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_block)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    const int rows, const int n_vectors)
{
    typedef FBP_FEW(fbp_few_vector) vector;
    typedef FBP_FEW(fbp_few_unaligned) unaligned;
    vector sums[6][8];   /* at most 24 used */
#pragma GCC unroll 6
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
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            FBP_T a = x[r * n_in + i];
#pragma GCC unroll 8
            for (int v = 0; v < n_vectors; v++)
                sums[r][v] += a * loaded[v];
        }
    }
#pragma GCC unroll 6
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
static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_tail_rows)(
    FBP_FEW(fbp_few_vector) *sums, const FBP_T *xs, const FBP_FEW(fbp_few_vector) *tail,
    ptrdiff_t n, ptrdiff_t n_in, const int rows)
{
    FBP_FEW(fbp_few_vector) acc[8];
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

static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_tail)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out,
    ptrdiff_t n_cols)
{
    typedef FBP_FEW(fbp_few_vector) vector;
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
            case 1: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 1); break;
            case 2: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 2); break;
            case 3: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 3); break;
            case 4: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 4); break;
            case 5: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 5); break;
            case 6: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 6); break;
            case 7: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 7); break;
            default: FBP_FEW(fbp_few_tail_rows)(sums, xs, tail, n, n_in, 8); break;
            }
        }
        for (int r = 0; r < rows; r++)
            for (ptrdiff_t j = 0; j < n_cols; j++)
                out[(r0 + r) * n_out + j] = sums[r][j];
    }
}
#undef FBP_FEW_TAIL_CHUNK

/* The columns in whole vectors of `rows` rows (1 to 4): the widest blocks first, then
   narrower ones. */
static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_columns)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    const int rows)
{
    const ptrdiff_t lanes = FBP_FEW_LANES;
    ptrdiff_t j = 0;
    if (rows == 1) {
        for (; j + 8 * lanes <= n_out; j += 8 * lanes)
            FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 8);
        if (j + 4 * lanes <= n_out) {
            FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 4);
            j += 4 * lanes;
        }
        if (j + 2 * lanes <= n_out) {
            FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, 1, 2);
            j += 2 * lanes;
        }
    } else {
        if (FBP_FEW_BYTES == 64)   /* 16 accumulators: AVX-512's 32 registers hold them */
            for (; j + 4 * lanes <= n_out; j += 4 * lanes)
                FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, rows, 4);
        for (; j + 2 * lanes <= n_out; j += 2 * lanes)
            FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, rows, 2);
    }
    for (; j + lanes <= n_out; j += lanes)
        FBP_FEW(fbp_few_block)(out + j, x, W + j, n_in, n_out, rows, 1);
}

/* out = x . W for m rows: blocks of four rows share each load of W, and the last two or
   three rows too (a W that does not fit in cache is then read once more, not two or three
   times); a last single row goes alone. */
FBP_FEW_TARGET static void FBP_FEW(fbp_few_rows_product)(
    FBP_T *out, const FBP_T *x, const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in, ptrdiff_t n_out)
{
    const ptrdiff_t n_tail = n_out % FBP_FEW_LANES;
    ptrdiff_t r = 0;
    if (n_out >= FBP_FEW_LANES) {
        if (FBP_FEW_BYTES == 64)   /* 6 x 4 sums: W's loads shared by 6 rows, in 32 registers */
            for (; r + 6 <= m; r += 6)
                FBP_FEW(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 6);
        for (; r + 4 <= m; r += 4)
            FBP_FEW(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 4);
        if (m - r == 3)
            FBP_FEW(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 3);
        else if (m - r == 2)
            FBP_FEW(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 2);
        else if (m - r == 1)
            FBP_FEW(fbp_few_columns)(out + r * n_out, x + r * n_in, W, n_in, n_out, 1);
    }
    if (n_tail)
        FBP_FEW(fbp_few_tail)(out + n_out - n_tail, x, W + n_out - n_tail, m, n_in, n_out,
                               n_tail);
}

/* out (m x n_in) = delta (m x n_out) . W^T, W n_in x n_out: a layer's input delta (the
   backward pass's D W^T).  out[r, i] is the dot product of delta's row r and W's row i,
   both contiguous: a vector accumulator over the whole vectors of columns, its lanes
   summed in halves, then the last n_out % lanes columns one by one (only these when
   n_out < lanes); blocks of up to 4 rows of delta by 4 rows of W share their loads.
   Each element is computed the same way whatever m or its block is. */
static inline __attribute__((always_inline)) FBP_T FBP_FEW(fbp_few_lane_sum)(
    const FBP_FEW(fbp_few_vector) *v)
{
    /* in halves (lane k + lane k + width, width = lanes / 2, ..., 1): a fixed order, and
       a chain of log2(lanes) additions, not lanes - 1 */
    FBP_T t[FBP_FEW_LANES];
    memcpy(t, v, sizeof t);
#pragma GCC unroll 4
    for (int width = FBP_FEW_LANES / 2; width >= 1; width /= 2)
#pragma GCC unroll 8
        for (int k = 0; k < width; k++)
            t[k] += t[k + width];
    return t[0];
}

/* out[r, i + k] for `rows` rows of delta (from r = 0) and n_w rows of W (from i): each
   loaded vector of W serves every row of the block, each of delta every row of W. */
static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_delta_block)(
    FBP_T *out, const FBP_T *delta, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    ptrdiff_t n_whole, ptrdiff_t i, const int rows, const int n_w)
{
    typedef FBP_FEW(fbp_few_vector) vector;
    typedef FBP_FEW(fbp_few_unaligned) unaligned;
    const FBP_T *w = W + i * n_out;
    vector sums[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int k = 0; k < n_w; k++)
            sums[r][k] = (vector){0};
    for (ptrdiff_t j = 0; j < n_whole; j += FBP_FEW_LANES) {
        vector wv[4];
#pragma GCC unroll 4
        for (int k = 0; k < n_w; k++)
            wv[k] = *(const unaligned *)(w + k * n_out + j);
#pragma GCC unroll 4
        for (int r = 0; r < rows; r++) {
            const vector dv = *(const unaligned *)(delta + r * n_out + j);
#pragma GCC unroll 4
            for (int k = 0; k < n_w; k++)
                sums[r][k] += dv * wv[k];
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int k = 0; k < n_w; k++) {
            FBP_T sum = FBP_FEW(fbp_few_lane_sum)(&sums[r][k]);
            for (ptrdiff_t j = n_whole; j < n_out; j++)
                sum += delta[r * n_out + j] * w[k * n_out + j];
            out[r * n_in + i + k] = sum;
        }
}

static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_delta_rows)(
    FBP_T *out, const FBP_T *delta, const FBP_T *W, ptrdiff_t n_in, ptrdiff_t n_out,
    ptrdiff_t n_whole, const int rows)
{
    ptrdiff_t i = 0;
    for (; i + 4 <= n_in; i += 4)
        FBP_FEW(fbp_few_delta_block)(out, delta, W, n_in, n_out, n_whole, i, rows, 4);
    for (; i < n_in; i++)
        FBP_FEW(fbp_few_delta_block)(out, delta, W, n_in, n_out, n_whole, i, rows, 1);
}

FBP_FEW_TARGET static void FBP_FEW(fbp_few_rows_delta)(
    FBP_T *out, const FBP_T *delta, const FBP_T *W, ptrdiff_t m, ptrdiff_t n_in,
    ptrdiff_t n_out)
{
    const ptrdiff_t n_whole = n_out - n_out % FBP_FEW_LANES;
    /* rows of delta a block takes: 4 x 4 sums in AVX-512's 32 registers, 2 x 4 in 16 */
    const ptrdiff_t block = FBP_FEW_BYTES == 64 ? 4 : 2;
    if (n_out == 1) {   /* one column (an output layer's): the same products, in vectors */
        for (ptrdiff_t r = 0; r < m; r++)
            for (ptrdiff_t i = 0; i < n_in; i++)
                out[r * n_in + i] = delta[r] * W[i];
        return;
    }
    if (n_whole == 0) {   /* a narrow W: its few columns one by one */
        for (ptrdiff_t r = 0; r < m; r++)
            for (ptrdiff_t i = 0; i < n_in; i++) {
                FBP_T sum = 0;
                for (ptrdiff_t j = 0; j < n_out; j++)
                    sum += delta[r * n_out + j] * W[i * n_out + j];
                out[r * n_in + i] = sum;
            }
        return;
    }
    for (ptrdiff_t r = 0; r < m; r += block) {
        const ptrdiff_t rows = m - r < block ? m - r : block;
        FBP_T *o = out + r * n_in;
        const FBP_T *d = delta + r * n_out;
        switch (rows) {   /* a constant count, so the sums stay in registers */
        case 1: FBP_FEW(fbp_few_delta_rows)(o, d, W, n_in, n_out, n_whole, 1); break;
        case 2: FBP_FEW(fbp_few_delta_rows)(o, d, W, n_in, n_out, n_whole, 2); break;
        case 3: FBP_FEW(fbp_few_delta_rows)(o, d, W, n_in, n_out, n_whole, 3); break;
        default: FBP_FEW(fbp_few_delta_rows)(o, d, W, n_in, n_out, n_whole, 4); break;
        }
    }
}

/* C (n_rows x n_out, contiguous) = beta C + alpha A^T D: a block of a layer's weight
   gradient with the update folded in (a rank-m update), A the block's columns of the
   layer input (m rows at stride lda), D the delta (m x n_out).  For each element, the m
   products are summed in row order, then scaled by alpha and added to beta C (C is not
   read when beta is 0), as BLAS's gemm defines it; C's rows are read and written once. */
static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_gradient_block)(
    FBP_T *C, const FBP_T *A, ptrdiff_t lda, const FBP_T *D, ptrdiff_t m, ptrdiff_t n_out,
    FBP_T alpha, FBP_T beta, const int n_c, const int n_vectors)
{
    /* n_c rows of C (from C, A's columns from A) by n_vectors vectors of columns: n_c x
       n_vectors independent sums, so the multiply-adds do not wait on one another */
    typedef FBP_FEW(fbp_few_vector) vector;
    typedef FBP_FEW(fbp_few_unaligned) unaligned;
    vector sums[4][4];
#pragma GCC unroll 4
    for (int k = 0; k < n_c; k++)
#pragma GCC unroll 4
        for (int v = 0; v < n_vectors; v++)
            sums[k][v] = (vector){0};
    for (ptrdiff_t r = 0; r < m; r++) {
        vector d[4];
#pragma GCC unroll 4
        for (int v = 0; v < n_vectors; v++)
            d[v] = *(const unaligned *)(D + r * n_out + v * FBP_FEW_LANES);
#pragma GCC unroll 4
        for (int k = 0; k < n_c; k++) {
            const FBP_T a = A[r * lda + k];
#pragma GCC unroll 4
            for (int v = 0; v < n_vectors; v++)
                sums[k][v] += a * d[v];
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < n_c; k++) {
        unaligned *c = (unaligned *)(C + k * n_out);
        if (beta == 0) {
#pragma GCC unroll 4
            for (int v = 0; v < n_vectors; v++)
                c[v] = alpha * sums[k][v];
        } else {
#pragma GCC unroll 4
            for (int v = 0; v < n_vectors; v++)
                c[v] = beta * (vector)c[v] + alpha * sums[k][v];
        }
    }
}

static inline __attribute__((always_inline)) void FBP_FEW(fbp_few_gradient_columns)(
    FBP_T *C, const FBP_T *A, ptrdiff_t lda, const FBP_T *D, ptrdiff_t m, ptrdiff_t n_rows,
    ptrdiff_t n_out, FBP_T alpha, FBP_T beta, const int n_vectors)
{
    /* rows of C a block takes: 4 x 4 sums in AVX-512's 32 registers, 2 x 4 in 16 */
    const ptrdiff_t block = FBP_FEW_BYTES == 64 ? 4 : 2;
    ptrdiff_t i = 0;
    for (; i + block <= n_rows; i += block)
        FBP_FEW(fbp_few_gradient_block)(C + i * n_out, A + i, lda, D, m, n_out, alpha, beta,
                                        (int)block, n_vectors);
    for (; i < n_rows; i++)
        FBP_FEW(fbp_few_gradient_block)(C + i * n_out, A + i, lda, D, m, n_out, alpha, beta,
                                        1, n_vectors);
}

FBP_FEW_TARGET static void FBP_FEW(fbp_few_rows_gradient)(
    FBP_T *C, const FBP_T *A, ptrdiff_t lda, const FBP_T *D, ptrdiff_t m, ptrdiff_t n_rows,
    ptrdiff_t n_out, FBP_T alpha, FBP_T beta)
{
    const ptrdiff_t lanes = FBP_FEW_LANES;
    ptrdiff_t j = 0;
    for (; j + 4 * lanes <= n_out; j += 4 * lanes)
        FBP_FEW(fbp_few_gradient_columns)(C + j, A, lda, D + j, m, n_rows, n_out, alpha,
                                          beta, 4);
    if (j + 2 * lanes <= n_out) {
        FBP_FEW(fbp_few_gradient_columns)(C + j, A, lda, D + j, m, n_rows, n_out, alpha,
                                          beta, 2);
        j += 2 * lanes;
    }
    if (j + lanes <= n_out) {
        FBP_FEW(fbp_few_gradient_columns)(C + j, A, lda, D + j, m, n_rows, n_out, alpha,
                                          beta, 1);
        j += lanes;
    }
    if (n_out == 1) {   /* one column (an output layer's): C's rows in vectors, the
                           same sums in the same order as the loop below */
        typedef FBP_FEW(fbp_few_vector) vector;
        typedef FBP_FEW(fbp_few_unaligned) unaligned;
        ptrdiff_t i = 0;
        for (; i + lanes <= n_rows; i += lanes) {
            vector sum = {0};
            for (ptrdiff_t r = 0; r < m; r++)
                sum += *(const unaligned *)(A + r * lda + i) * D[r];
            unaligned *c = (unaligned *)(C + i);
            *c = beta == 0 ? alpha * sum : beta * (vector)*c + alpha * sum;
        }
        for (; i < n_rows; i++) {
            FBP_T sum = 0;
            for (ptrdiff_t r = 0; r < m; r++)
                sum += A[r * lda + i] * D[r];
            C[i] = beta == 0 ? alpha * sum : beta * C[i] + alpha * sum;
        }
        return;
    }
    if (j < n_out)   /* the last columns, too few for a vector */
        for (ptrdiff_t i = 0; i < n_rows; i++)
            for (ptrdiff_t k = j; k < n_out; k++) {
                FBP_T sum = 0;
                for (ptrdiff_t r = 0; r < m; r++)
                    sum += A[r * lda + i] * D[r * n_out + k];
                FBP_T *c = C + i * n_out + k;
                *c = beta == 0 ? alpha * sum : beta * *c + alpha * sum;
            }
}

#undef FBP_FEW_LANES
