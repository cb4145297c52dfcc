/* The register-blocked products for one element type (FBP_T, FBP_NAME) and one vector size
 * (FBP_PROD_BYTES, FBP_PROD_ROWS x FBP_PROD_VECTORS accumulators), named by FBP_PROD and
 * compiled for FBP_PROD_TARGET: included by products.h, which says how they work. */

#define FBP_PROD_LANES ((ptrdiff_t)(FBP_PROD_BYTES / sizeof(FBP_T)))
/* a column panel's width: the register block's columns */
#define FBP_PROD_WIDTH (FBP_PROD_VECTORS * FBP_PROD_LANES)

typedef FBP_T FBP_PROD(fbp_prod_vector) __attribute__((vector_size(FBP_PROD_BYTES)));
typedef FBP_T FBP_PROD(fbp_prod_unaligned)
    __attribute__((vector_size(FBP_PROD_BYTES), aligned(sizeof(FBP_T)), may_alias));

/* C's last vector of columns when n is not a whole number of vectors: its first `used`
   lanes loaded (the others 0) and stored with the CPU's masked moves, so nothing past
   them is read or written; the mask (fbp_prod_mask) is a loop invariant the compiler
   hoists. */
#if FBP_PROD_BYTES == 64
typedef unsigned FBP_PROD(fbp_prod_mask_t);      /* an AVX-512 mask register's bits */
#else
typedef __m256i FBP_PROD(fbp_prod_mask_t);       /* AVX2: a lane's sign bit */
#endif

FBP_PROD_TARGET static inline __attribute__((always_inline))
FBP_PROD(fbp_prod_mask_t) FBP_PROD(fbp_prod_mask)(int used)
{
#if FBP_PROD_BYTES == 64
    return (1u << used) - 1;
#else
    if (sizeof(FBP_T) == sizeof(float))
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(used),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(used), _mm256_setr_epi64x(0, 1, 2, 3));
#endif
}

FBP_PROD_TARGET static inline __attribute__((always_inline))
FBP_PROD(fbp_prod_vector) FBP_PROD(fbp_prod_load_part)(const FBP_T *p, int used)
{
    typedef FBP_PROD(fbp_prod_vector) vector;
    const FBP_PROD(fbp_prod_mask_t) mask = FBP_PROD(fbp_prod_mask)(used);
#if FBP_PROD_BYTES == 64
    if (sizeof(FBP_T) == sizeof(float))
        return (vector)_mm512_maskz_loadu_ps((__mmask16)mask, (const float *)p);
    return (vector)_mm512_maskz_loadu_pd((__mmask8)mask, (const double *)p);
#else
    if (sizeof(FBP_T) == sizeof(float))
        return (vector)_mm256_maskload_ps((const float *)p, mask);
    return (vector)_mm256_maskload_pd((const double *)p, mask);
#endif
}

FBP_PROD_TARGET static inline __attribute__((always_inline))
void FBP_PROD(fbp_prod_store_part)(FBP_T *p, FBP_PROD(fbp_prod_vector) value, int used)
{
    const FBP_PROD(fbp_prod_mask_t) mask = FBP_PROD(fbp_prod_mask)(used);
#if FBP_PROD_BYTES == 64
    if (sizeof(FBP_T) == sizeof(float))
        _mm512_mask_storeu_ps((float *)p, (__mmask16)mask, (__m512)value);
    else
        _mm512_mask_storeu_pd((double *)p, (__mmask8)mask, (__m512d)value);
#else
    if (sizeof(FBP_T) == sizeof(float))
        _mm256_maskstore_ps((float *)p, mask, (__m256)value);
    else
        _mm256_maskstore_pd((double *)p, mask, (__m256d)value);
#endif
}

/* The register block: C(rows x n_vectors vectors) = beta C + alpha sum_k A(p, k) B(k, q),
   A(p, k) at a[p * a_row + k * a_k] (broadcast), B's rows at b + k * ldb (vector loads);
   with `partial`, the last vector is C's last columns, its first `used` lanes only (B's
   and C's, fbp_prod_load_part).  rows, n_vectors, partial and one of the strides are
   constants where it is inlined, so the accumulators live in registers.  beta == 0 never
   reads C (it may hold NaN). */
FBP_PROD_TARGET static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_block)(
    const int rows, const int n_vectors, const int partial, int used, ptrdiff_t k,
    const FBP_T *a, ptrdiff_t a_row, ptrdiff_t a_k, const FBP_T *b, ptrdiff_t ldb, FBP_T *c,
    ptrdiff_t ldc, FBP_T alpha, FBP_T beta)
{
    typedef FBP_PROD(fbp_prod_vector) vector;
    typedef FBP_PROD(fbp_prod_unaligned) unaligned;
    vector sums[FBP_PROD_TALL][FBP_PROD_VECTORS];
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            sums[p][v] = (vector){0};
    for (ptrdiff_t kk = 0; kk < k; kk++) {
        vector loaded[FBP_PROD_VECTORS];
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++) {
            const FBP_T *from = b + kk * ldb + v * FBP_PROD_LANES;
            if (partial && v == n_vectors - 1)
                loaded[v] = FBP_PROD(fbp_prod_load_part)(from, used);
            else
                loaded[v] = *(const unaligned *)from;
        }
#pragma GCC unroll 16
        for (int p = 0; p < rows; p++) {
            const FBP_T scalar = a[p * a_row + kk * a_k];
#pragma GCC unroll 8
            for (int v = 0; v < n_vectors; v++)
                sums[p][v] += scalar * loaded[v];
        }
    }
    /* C's old values all read before any is written: a load that meets a pending masked
       store of the row before (its vector reaches into this row) waits for it */
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++) {
            const FBP_T *out = c + p * ldc + v * FBP_PROD_LANES;
            if (beta == 0)
                sums[p][v] = alpha * sums[p][v];
            else if (partial && v == n_vectors - 1)
                sums[p][v] = alpha * sums[p][v]
                             + beta * FBP_PROD(fbp_prod_load_part)(out, used);
            else
                sums[p][v] = alpha * sums[p][v] + beta * *(const unaligned *)out;
        }
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++) {
            FBP_T *out = c + p * ldc + v * FBP_PROD_LANES;
            if (partial && v == n_vectors - 1)
                FBP_PROD(fbp_prod_store_part)(out, sums[p][v], used);
            else
                *(unaligned *)out = sums[p][v];
        }
}

/* One block of up to FBP_PROD_ROWS rows, its row count made a constant. */
#define FBP_PROD_ROW_CASES(call) \
    switch (rows) { \
    case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; \
    case 4: call(4); break; case 5: call(5); break; default: call(FBP_PROD_ROWS); break; }
/* ... of up to FBP_PROD_TALL rows (a panel of one vector) */
#define FBP_PROD_TALL_CASES(call) \
    switch (rows) { \
    case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; \
    case 4: call(4); break; case 5: call(5); break; case 6: call(6); break; \
    case 7: call(7); break; case 8: call(8); break; case 9: call(9); break; \
    case 10: call(10); break; case 11: call(11); break; default: call(FBP_PROD_TALL); break; }

/* C (n_rows x width) = beta C + alpha A B over one panel of B's columns: n_vectors (at
   most FBP_PROD_VECTORS) vectors, of which the last has `used` lanes of C's columns (all
   of them: FBP_PROD_LANES).  The rows go in blocks as even as they come, so that every
   block keeps enough independent sums in registers to hide the multiply-adds' latency:
   of up to FBP_PROD_ROWS rows in a whole panel and in one of three vectors (AVX-512), of
   up to FBP_PROD_TALL in a narrower last panel of one vector (an output layer of a few
   classes), or of two with AVX-512.  (32 rows of a whole panel: 5, 5, 6, 5, 5, 6; in
   five blocks of 6 and one of 2, whose 4 sums with AVX2 wait on the latency, W5's
   forward product took 1.17x as long with AVX2, 1.09x with AVX-512.)  Each element of C
   is the same sum in the same order whatever its block.  a_row_is_one picks which of A's
   strides is the constant 1 (A^T: TN), so the compiler knows it.  ahead (or NULL):
   ahead_rows rows of A (lda apart) fetched into L2, a slice with each block. */
FBP_PROD_TARGET static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_panel)(
    ptrdiff_t n_rows, int n_vectors, int used, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta, const FBP_T *ahead, ptrdiff_t ahead_rows)
{
    const ptrdiff_t a_row = a_row_is_one ? 1 : lda;
    const int partial = used < FBP_PROD_LANES;
    /* rows per block, as even as they come */
    const ptrdiff_t blocks = n_vectors <= 2 && n_vectors < FBP_PROD_VECTORS
                             ? (n_rows + FBP_PROD_TALL - 1) / FBP_PROD_TALL
                             : (n_rows + FBP_PROD_ROWS - 1) / FBP_PROD_ROWS;
    for (ptrdiff_t p = 0, block = 0; p < n_rows; block++) {
        const ptrdiff_t end = (block + 1) * n_rows / blocks;
        const int rows = (int)(end - p);
        if (ahead != NULL)
            for (ptrdiff_t r = p * ahead_rows / n_rows; r < end * ahead_rows / n_rows; r++)
                for (ptrdiff_t kk = 0; kk < k; kk += 64 / (ptrdiff_t)sizeof(FBP_T))
                    __builtin_prefetch(ahead + r * lda + kk, 0, 2);
        const FBP_T *ap = a + p * a_row;
        FBP_T *cp = c + p * ldc;
#define FBP_PROD_CALL(R, V, PARTIAL) \
        FBP_PROD(fbp_prod_block)(R, V, PARTIAL, used, k, ap, a_row_is_one ? 1 : lda, \
                                 a_row_is_one ? lda : 1, b, ldb, cp, ldc, alpha, beta)
#define FBP_PROD_CASE(R) FBP_PROD_CALL(R, FBP_PROD_VECTORS, 0)
#define FBP_PROD_CASE_PARTIAL(R) FBP_PROD_CALL(R, FBP_PROD_VECTORS, 1)
#define FBP_PROD_ONE(R) FBP_PROD_CALL(R, 1, 0)
#define FBP_PROD_ONE_PARTIAL(R) FBP_PROD_CALL(R, 1, 1)
#define FBP_PROD_TWO(R) FBP_PROD_CALL(R, 2, 1)
#define FBP_PROD_THREE(R) FBP_PROD_CALL(R, 3, 1)
        if (n_vectors == FBP_PROD_VECTORS && !partial) {
            FBP_PROD_ROW_CASES(FBP_PROD_CASE)
        } else if (n_vectors == FBP_PROD_VECTORS) {
            FBP_PROD_ROW_CASES(FBP_PROD_CASE_PARTIAL)
        } else if (n_vectors == 1 && !partial) {
            FBP_PROD_TALL_CASES(FBP_PROD_ONE)
        } else if (n_vectors == 1) {
            FBP_PROD_TALL_CASES(FBP_PROD_ONE_PARTIAL)
#if FBP_PROD_VECTORS == 4
        } else if (n_vectors == 2) {   /* (a whole last vector is masked with all lanes) */
            FBP_PROD_TALL_CASES(FBP_PROD_TWO)
        } else {
            FBP_PROD_ROW_CASES(FBP_PROD_THREE)
#endif
        }
#undef FBP_PROD_CASE
#undef FBP_PROD_CASE_PARTIAL
#undef FBP_PROD_ONE
#undef FBP_PROD_ONE_PARTIAL
#undef FBP_PROD_TWO
#undef FBP_PROD_THREE
#undef FBP_PROD_CALL
        p = end;
    }
}

/* NN's rows at a time (see fbp_prod_general): all n_rows, or, when A is too large to
   stay in L2 while it is swept once per panel and all of B's panels fit in half of L2,
   blocks of whole register blocks taking an eighth of L2, which stay there across the
   panels (A is then read from memory once, not once per panel). */
static inline ptrdiff_t FBP_PROD(fbp_prod_nn_rows)(ptrdiff_t n_rows, ptrdiff_t n_cols,
                                                   ptrdiff_t k)
{
    const ptrdiff_t l2 = fbp_product_l2_bytes, row_bytes = k * (ptrdiff_t)sizeof(FBP_T);
    if (l2 <= 0 || row_bytes == 0 || n_rows * row_bytes <= l2 / 4
        || n_cols * row_bytes > l2 / 2)
        return n_rows;
    const ptrdiff_t rows = l2 / 8 / row_bytes / FBP_PROD_ROWS * FBP_PROD_ROWS;
    return rows > FBP_PROD_ROWS ? rows : FBP_PROD_ROWS;
}

/* C = beta C + alpha op(A) B by panels of B's columns in place, the last vector of the
   last panel partial where n_cols is not a whole number of vectors.
   NN (k long, B = W) takes a panel of B's columns at a time past every register block of
   a block of rows (fbp_prod_nn_rows): the panel (k x 64 or 256 bytes) stays in L1/L2.
   TN (k = the batch, short) takes a strip of FBP_PROD_TALL rows at a time past every
   panel (all rows where there is one panel): its strip of A (k rows of 48 bytes) and all
   of D stay in L1, where the other order would sweep A from L2 once per panel.  Each
   element of C is one register block's sum over all of k either way: the order of the
   blocks changes no bits. */
FBP_PROD_TARGET static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_general)(
    ptrdiff_t n_rows, ptrdiff_t n_cols, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta)
{
    const ptrdiff_t lanes = FBP_PROD_LANES;
    const ptrdiff_t n_vectors = (n_cols + lanes - 1) / lanes;
    const int last_used = (int)(n_cols - (n_vectors - 1) * lanes);
    const ptrdiff_t row_step = !a_row_is_one ? FBP_PROD(fbp_prod_nn_rows)(n_rows, n_cols, k)
                               : n_vectors <= FBP_PROD_VECTORS ? n_rows : FBP_PROD_TALL;
    for (ptrdiff_t p = 0; p < n_rows; p += row_step) {
        const ptrdiff_t rows = n_rows - p < row_step ? n_rows - p : row_step;
        const FBP_T *ap = a + p * (a_row_is_one ? 1 : lda);
        /* the next block of rows, fetched into L2 a slice per register block of the
           last panel, while this block's products run */
        const ptrdiff_t ahead_rows = a_row_is_one || row_step >= n_rows ? 0
            : n_rows - p - rows < row_step ? n_rows - p - rows : row_step;
        for (ptrdiff_t v = 0; v < n_vectors; v += FBP_PROD_VECTORS) {
            const int last = v + FBP_PROD_VECTORS >= n_vectors;
            const int width = last ? (int)(n_vectors - v) : FBP_PROD_VECTORS;
            FBP_PROD(fbp_prod_panel)(rows, width, last ? last_used : (int)lanes, k, ap, lda,
                                     a_row_is_one, b + v * lanes, ldb, c + p * ldc + v * lanes,
                                     ldc, alpha, beta,
                                     last && ahead_rows > 0 ? ap + rows * lda : NULL,
                                     ahead_rows);
        }
    }
}

/* NN with one contiguous column b (an output layer of one unit): C's rows r to
   r + rows - 1 are dot products of A's rows and b, each a vector accumulator over whole
   vectors of k (each load of b serving every row of the block), its lanes summed in
   halves, then the last k % lanes terms one by one.  The general path would multiply
   a zero-padded vector of b for one useful lane in each. */
FBP_PROD_TARGET static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_dots)(
    const int rows, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda, const FBP_T *b, FBP_T *c,
    ptrdiff_t ldc)
{
    typedef FBP_PROD(fbp_prod_vector) vector;
    typedef FBP_PROD(fbp_prod_unaligned) unaligned;
    const ptrdiff_t whole = k - k % FBP_PROD_LANES;
    vector sums[FBP_PROD_ROWS];
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
        sums[p] = (vector){0};
    for (ptrdiff_t kk = 0; kk < whole; kk += FBP_PROD_LANES) {
        const vector bv = *(const unaligned *)(b + kk);
#pragma GCC unroll 16
        for (int p = 0; p < rows; p++)
            sums[p] += *(const unaligned *)(a + p * lda + kk) * bv;
    }
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++) {
        FBP_T t[FBP_PROD_LANES];
        memcpy(t, &sums[p], sizeof t);
#pragma GCC unroll 8
        for (int width = FBP_PROD_LANES / 2; width >= 1; width /= 2)
#pragma GCC unroll 16
            for (int j = 0; j < width; j++)
                t[j] += t[j + width];
        FBP_T sum = t[0];
        for (ptrdiff_t kk = whole; kk < k; kk++)
            sum += a[p * lda + kk] * b[kk];
        c[p * ldc] = sum;
    }
}

/* NN: C (m x n) = A (m x k, lda) B (k x n, ldb); C is overwritten. */
FBP_PROD_TARGET static void FBP_PROD(fbp_product_nn)(
    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda, const FBP_T *b,
    ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc)
{
    if (n == 1 && ldb == 1) {
        for (ptrdiff_t p = 0; p < m; p += FBP_PROD_ROWS) {
            const ptrdiff_t left = m - p;
            const int rows = left < FBP_PROD_ROWS ? (int)left : FBP_PROD_ROWS;
#define FBP_PROD_DOTS(R) FBP_PROD(fbp_prod_dots)(R, k, a + p * lda, lda, b, c + p * ldc, ldc)
            FBP_PROD_ROW_CASES(FBP_PROD_DOTS)
#undef FBP_PROD_DOTS
        }
        return;
    }
    FBP_PROD(fbp_prod_general)(m, n, k, a, lda, 0, b, ldb, c, ldc, (FBP_T)1, (FBP_T)0);
}

/* TN: C (m x n) = beta C + alpha A^T D, A (k x m, lda), D (k x n, ldd).  k, the batch's
   rows, goes in blocks of FBP_PROD_TN_ROWS, each block's sums added into C (beta with the
   first): one float register's sum over all of a batch of 2^20 rows was 1e-2 off, as
   OpenBLAS's blocks of the inner dimension are not.  A batch of at most that many rows
   is one block: its bits are those of one sum. */
#ifndef FBP_PROD_TN_ROWS
#define FBP_PROD_TN_ROWS 2048
#endif
FBP_PROD_TARGET static void FBP_PROD(fbp_product_tn)(
    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, FBP_T alpha, const FBP_T *a, ptrdiff_t lda,
    const FBP_T *d, ptrdiff_t ldd, FBP_T beta, FBP_T *c, ptrdiff_t ldc)
{
    for (ptrdiff_t k0 = 0; k0 < k || k0 == 0; k0 += FBP_PROD_TN_ROWS) {
        const ptrdiff_t kc = k - k0 < FBP_PROD_TN_ROWS ? k - k0 : FBP_PROD_TN_ROWS;
        FBP_PROD(fbp_prod_general)(m, n, kc, a + k0 * lda, lda, 1, d + k0 * ldd, ldd, c, ldc,
                                   alpha, k0 == 0 ? beta : (FBP_T)1);
        if (k == 0)
            break;
    }
}

/* NT: C (m x n) = D (m x k, ldd) W^T, W (n x k, ldw); C is overwritten.  W's rows are the
   columns of the product, so FBP_PROD_TRANSPOSED of them at a time are copied transposed
   (in chunks of FBP_PROD_NT_CHUNK of k) into a panel, and each block of rows of D
   multiplies all of that panel before the next (the block's strip of D is read once per
   panel); a partial last vector of columns reads and writes only its lanes. */
#ifndef FBP_PROD_NT_CHUNK
#define FBP_PROD_NT_CHUNK 128
#endif
#define FBP_PROD_TRANSPOSED (FBP_PROD_NT_PANELS * FBP_PROD_WIDTH)
FBP_PROD_TARGET static void FBP_PROD(fbp_product_nt)(
    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const FBP_T *d, ptrdiff_t ldd, const FBP_T *w,
    ptrdiff_t ldw, FBP_T *c, ptrdiff_t ldc)
{
    FBP_T panel[FBP_PROD_NT_CHUNK * FBP_PROD_TRANSPOSED]
        __attribute__((aligned(FBP_PROD_BYTES)));
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FBP_PROD_TRANSPOSED) {
        const ptrdiff_t columns = n - i0 < FBP_PROD_TRANSPOSED ? n - i0 : FBP_PROD_TRANSPOSED;
        const int n_vectors = (int)((columns + FBP_PROD_LANES - 1) / FBP_PROD_LANES);
        const ptrdiff_t width = n_vectors * FBP_PROD_LANES;
        const int last_used = (int)(columns - width + FBP_PROD_LANES);
        for (ptrdiff_t k0 = 0; k0 < k || k0 == 0; k0 += FBP_PROD_NT_CHUNK) {
            const ptrdiff_t kc = k - k0 < FBP_PROD_NT_CHUNK ? k - k0 : FBP_PROD_NT_CHUNK;
            const FBP_T beta = k0 == 0 ? (FBP_T)0 : (FBP_T)1;
            for (ptrdiff_t i = 0; i < columns; i++) {
                const FBP_T *row = w + (i0 + i) * ldw + k0;
                for (ptrdiff_t kk = 0; kk < kc; kk++)
                    panel[kk * width + i] = row[kk];
            }
            /* one panel: all rows at once (its blocks as it chooses them) */
            const ptrdiff_t row_step = n_vectors <= FBP_PROD_VECTORS ? m : FBP_PROD_TALL;
            for (ptrdiff_t p = 0; p < m; p += row_step) {
                const ptrdiff_t rows = m - p < row_step ? m - p : row_step;
                for (ptrdiff_t v = 0; v < n_vectors; v += FBP_PROD_VECTORS) {
                    const int last = v + FBP_PROD_VECTORS >= n_vectors;
                    const int nv = last ? n_vectors - (int)v : FBP_PROD_VECTORS;
                    FBP_PROD(fbp_prod_panel)(rows, nv, last ? last_used : FBP_PROD_LANES, kc,
                                             d + p * ldd + k0, ldd, 0,
                                             panel + v * FBP_PROD_LANES, width,
                                             c + p * ldc + i0 + v * FBP_PROD_LANES, ldc,
                                             (FBP_T)1, beta, NULL, 0);
                }
            }
            if (k == 0)
                break;
        }
    }
}
#undef FBP_PROD_TRANSPOSED
#undef FBP_PROD_TN_ROWS
#undef FBP_PROD_NT_PANELS
#undef FBP_PROD_NT_CHUNK
#undef FBP_PROD_ROW_CASES
#undef FBP_PROD_TALL_CASES
#undef FBP_PROD_WIDTH
#undef FBP_PROD_LANES
