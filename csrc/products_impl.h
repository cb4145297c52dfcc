/* The register-blocked products for one element type (FBP_T, FBP_NAME) and one vector size
 * (FBP_PROD_BYTES, FBP_PROD_ROWS x FBP_PROD_VECTORS accumulators), named by FBP_PROD and
 * compiled for FBP_PROD_TARGET: included by products.h, which says how they work. */

#define FBP_PROD_LANES ((ptrdiff_t)(FBP_PROD_BYTES / sizeof(FBP_T)))
/* a column panel's width: the register block's columns */
#define FBP_PROD_WIDTH (FBP_PROD_VECTORS * FBP_PROD_LANES)

typedef FBP_T FBP_PROD(fbp_prod_vector) __attribute__((vector_size(FBP_PROD_BYTES)));
typedef FBP_T FBP_PROD(fbp_prod_unaligned)
    __attribute__((vector_size(FBP_PROD_BYTES), aligned(sizeof(FBP_T)), may_alias));

/* The register block: C(rows x n_vectors vectors) = beta C + alpha sum_k A(p, k) B(k, q),
   A(p, k) at a[p * a_row + k * a_k] (broadcast), B's rows at b + k * ldb (vector loads).
   rows, n_vectors and one of the strides are constants where it is inlined, so the
   accumulators live in registers.  beta == 0 never reads C (it may hold NaN). */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_block)(
    const int rows, const int n_vectors, ptrdiff_t k, const FBP_T *a, ptrdiff_t a_row,
    ptrdiff_t a_k, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc, FBP_T alpha,
    FBP_T beta)
{
    typedef FBP_PROD(fbp_prod_vector) vector;
    typedef FBP_PROD(fbp_prod_unaligned) unaligned;
    vector sums[FBP_PROD_ROWS][FBP_PROD_VECTORS];
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            sums[p][v] = (vector){0};
    for (ptrdiff_t kk = 0; kk < k; kk++) {
        vector loaded[FBP_PROD_VECTORS];
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++)
            loaded[v] = *(const unaligned *)(b + kk * ldb + v * FBP_PROD_LANES);
#pragma GCC unroll 16
        for (int p = 0; p < rows; p++) {
            const FBP_T scalar = a[p * a_row + kk * a_k];
#pragma GCC unroll 8
            for (int v = 0; v < n_vectors; v++)
                sums[p][v] += scalar * loaded[v];
        }
    }
#pragma GCC unroll 16
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 8
        for (int v = 0; v < n_vectors; v++) {
            unaligned *out = (unaligned *)(c + p * ldc + v * FBP_PROD_LANES);
            if (beta == 0)
                *out = alpha * sums[p][v];
            else
                *out = alpha * sums[p][v] + beta * *out;
        }
}

/* One block of up to FBP_PROD_ROWS rows, its row count made a constant. */
#define FBP_PROD_ROW_CASES(call) \
    switch (rows) { \
    case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; \
    case 4: call(4); break; case 5: call(5); break; default: call(FBP_PROD_ROWS); break; }

/* C (n_rows x width) = beta C + alpha A B over one panel of B's columns: width is at most
   FBP_PROD_WIDTH and a whole number of vectors; row blocks of FBP_PROD_ROWS then the rest.
   a_row_is_one picks which of A's strides is the constant 1 (A^T: TN), so the compiler
   knows it. */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_panel)(
    ptrdiff_t n_rows, int n_vectors, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta, const FBP_T *ahead, ptrdiff_t ahead_rows)
{
    const ptrdiff_t a_row = a_row_is_one ? 1 : lda;
    const ptrdiff_t blocks = (n_rows + FBP_PROD_ROWS - 1) / FBP_PROD_ROWS;
    for (ptrdiff_t p = 0; p < n_rows; p += FBP_PROD_ROWS) {
        if (ahead != NULL) {
            const ptrdiff_t block = p / FBP_PROD_ROWS;
            const ptrdiff_t from = block * ahead_rows / blocks;
            const ptrdiff_t to = (block + 1) * ahead_rows / blocks;
            for (ptrdiff_t r = from; r < to; r++)
                for (ptrdiff_t kk = 0; kk < k; kk += 64 / (ptrdiff_t)sizeof(FBP_T))
                    __builtin_prefetch(ahead + r * lda + kk, 0, 2);
        }
        const ptrdiff_t left = n_rows - p;
        const int rows = left < FBP_PROD_ROWS ? (int)left : FBP_PROD_ROWS;
        const FBP_T *ap = a + p * a_row;
        FBP_T *cp = c + p * ldc;
#define FBP_PROD_CALL(R, V) FBP_PROD(fbp_prod_block)(R, V, k, ap, a_row_is_one ? 1 : lda, \
                                                      a_row_is_one ? lda : 1, b, ldb, cp, \
                                                      ldc, alpha, beta)
        if (n_vectors == FBP_PROD_VECTORS) {
#define FBP_PROD_FULL(R) FBP_PROD_CALL(R, FBP_PROD_VECTORS)
            FBP_PROD_ROW_CASES(FBP_PROD_FULL)
#undef FBP_PROD_FULL
        } else {   /* the last, narrower panel: vector by vector */
            for (int v = 0; v < n_vectors; v++) {
                const FBP_T *bv = b + v * FBP_PROD_LANES;
                FBP_T *cv = cp + v * FBP_PROD_LANES;
#define FBP_PROD_ONE(R) FBP_PROD(fbp_prod_block)(R, 1, k, ap, a_row_is_one ? 1 : lda, \
                                                 a_row_is_one ? lda : 1, bv, ldb, cv, ldc, \
                                                 alpha, beta)
                FBP_PROD_ROW_CASES(FBP_PROD_ONE)
#undef FBP_PROD_ONE
            }
        }
#undef FBP_PROD_CALL
    }
}

/* C's columns past the whole vectors: every block of rows' product with one vector of
   B's columns (b, ldb) into `scratch`, then its n_tail lanes from `skip` on added to C
   (c, ldc) as C = beta C + alpha product. */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_tail_blocks)(
    ptrdiff_t n_rows, ptrdiff_t n_tail, ptrdiff_t skip, ptrdiff_t k, const FBP_T *a,
    ptrdiff_t lda, const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c,
    ptrdiff_t ldc, FBP_T alpha, FBP_T beta)
{
    const ptrdiff_t lanes = FBP_PROD_LANES, a_row = a_row_is_one ? 1 : lda;
    FBP_T scratch[FBP_PROD_ROWS * FBP_PROD_LANES] __attribute__((aligned(FBP_PROD_BYTES)));
    for (ptrdiff_t p = 0; p < n_rows; p += FBP_PROD_ROWS) {
        const ptrdiff_t left = n_rows - p;
        const int rows = left < FBP_PROD_ROWS ? (int)left : FBP_PROD_ROWS;
        const FBP_T *ap = a + p * a_row;
#define FBP_PROD_TAIL(R) FBP_PROD(fbp_prod_block)(R, 1, k, ap, a_row_is_one ? 1 : lda, \
                                                  a_row_is_one ? lda : 1, b, ldb, scratch, \
                                                  lanes, (FBP_T)1, (FBP_T)0)
        FBP_PROD_ROW_CASES(FBP_PROD_TAIL)
#undef FBP_PROD_TAIL
        for (int r = 0; r < rows; r++)
            for (ptrdiff_t j = 0; j < n_tail; j++) {
                FBP_T *out = c + (p + r) * ldc + j;
                FBP_T value = alpha * scratch[r * lanes + skip + j];
                *out = beta == 0 ? value : value + beta * *out;
            }
    }
}

/* The last n_tail (< lanes) of C's columns where there is a whole vector before them: the
   vector of B's columns that ends with them (b_last) is read in place, overlapping the
   whole vectors before it, so no load passes B's ends and B is not copied; each of the
   tail's sums is the same register accumulation over all of k as the whole vectors'. */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_columns_last)(
    ptrdiff_t n_rows, ptrdiff_t n_tail, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b_last, ptrdiff_t ldb, FBP_T *c_tail, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta)
{
    FBP_PROD(fbp_prod_tail_blocks)(n_rows, n_tail, FBP_PROD_LANES - n_tail, k, a, lda,
                                   a_row_is_one, b_last, ldb, c_tail, ldc, alpha, beta);
}

/* C (n_rows x n_cols) = beta C + alpha op(A) B, B row-major (k x n_cols, ldb), n_cols less
   than a vector (wider ones: fbp_prod_columns_last): the columns come from B copied into
   `padded`, zero-filled to a whole vector, k in chunks of FBP_PROD_CHUNK, each chunk's
   product added to C (beta only on the first). */
#define FBP_PROD_CHUNK 128
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_columns_tail)(
    ptrdiff_t n_rows, ptrdiff_t n_cols, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta)
{
    const ptrdiff_t lanes = FBP_PROD_LANES, a_k = a_row_is_one ? lda : 1;
    FBP_T padded[FBP_PROD_CHUNK * FBP_PROD_LANES] __attribute__((aligned(FBP_PROD_BYTES)));
    for (ptrdiff_t k0 = 0; k0 < k || k0 == 0; k0 += FBP_PROD_CHUNK) {
        const ptrdiff_t kc = k - k0 < FBP_PROD_CHUNK ? k - k0 : FBP_PROD_CHUNK;
        memset(padded, 0, (size_t)(kc * lanes) * sizeof(FBP_T));   /* the rows read */
        for (ptrdiff_t kk = 0; kk < kc; kk++)
            for (ptrdiff_t j = 0; j < n_cols; j++)
                padded[kk * lanes + j] = b[(k0 + kk) * ldb + j];
        FBP_PROD(fbp_prod_tail_blocks)(n_rows, n_cols, 0, kc, a + k0 * a_k, lda, a_row_is_one,
                                       padded, lanes, c, ldc, alpha,
                                       k0 == 0 ? beta : (FBP_T)1);
        if (k == 0)
            break;
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

/* C = beta C + alpha op(A) B: panels of whole vectors in place, then the column tail.
   NN (k long, B = W) takes a panel of B's columns at a time past every register block of
   a block of rows (fbp_prod_nn_rows): the panel (k x 64 or 128 bytes) stays in L1/L2.
   TN (k = the batch, short) takes a register block of rows at a time past every panel:
   its strip of A (k rows of 24 or 48 bytes) and all of D stay in L1, where the other
   order would sweep A from L2 once per panel.  Each element of C is one register
   block's sum over all of k either way: the order of the blocks changes no bits. */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_general)(
    ptrdiff_t n_rows, ptrdiff_t n_cols, ptrdiff_t k, const FBP_T *a, ptrdiff_t lda,
    const int a_row_is_one, const FBP_T *b, ptrdiff_t ldb, FBP_T *c, ptrdiff_t ldc,
    FBP_T alpha, FBP_T beta)
{
    const ptrdiff_t whole = n_cols - n_cols % FBP_PROD_LANES;
    const ptrdiff_t row_step = a_row_is_one ? FBP_PROD_ROWS
                                            : FBP_PROD(fbp_prod_nn_rows)(n_rows, whole, k);
    for (ptrdiff_t p = 0; p < n_rows; p += row_step) {
        const ptrdiff_t rows = n_rows - p < row_step ? n_rows - p : row_step;
        const FBP_T *ap = a + p * (a_row_is_one ? 1 : lda);
        /* the next block of rows, fetched into L2 a slice per register block of the
           last panel, while this block's products run */
        const ptrdiff_t ahead_rows = a_row_is_one || row_step >= n_rows ? 0
            : n_rows - p - rows < row_step ? n_rows - p - rows : row_step;
        for (ptrdiff_t j = 0; j < whole; j += FBP_PROD_WIDTH) {
            const ptrdiff_t width = whole - j < FBP_PROD_WIDTH ? whole - j : FBP_PROD_WIDTH;
            const int last = j + FBP_PROD_WIDTH >= whole;
            FBP_PROD(fbp_prod_panel)(rows, (int)(width / FBP_PROD_LANES), k, ap, lda,
                                     a_row_is_one, b + j, ldb, c + p * ldc + j, ldc, alpha,
                                     beta, last && ahead_rows > 0 ? ap + rows * lda : NULL,
                                     ahead_rows);
        }
    }
    if (whole < n_cols && whole > 0)
        FBP_PROD(fbp_prod_columns_last)(n_rows, n_cols - whole, k, a, lda, a_row_is_one,
                                        b + n_cols - FBP_PROD_LANES, ldb, c + whole, ldc,
                                        alpha, beta);
    else if (whole < n_cols)
        FBP_PROD(fbp_prod_columns_tail)(n_rows, n_cols - whole, k, a, lda, a_row_is_one,
                                        b + whole, ldb, c + whole, ldc, alpha, beta);
}

/* NN with one contiguous column b (an output layer of one unit): C's rows r to
   r + rows - 1 are dot products of A's rows and b, each a vector accumulator over whole
   vectors of k (each load of b serving every row of the block), its lanes summed in
   halves, then the last k % lanes terms one by one.  The general path would multiply
   a zero-padded vector of b for one useful lane in each. */
static inline __attribute__((always_inline)) void FBP_PROD(fbp_prod_dots)(
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

/* TN: C (m x n) = beta C + alpha A^T D, A (k x m, lda), D (k x n, ldd). */
FBP_PROD_TARGET static void FBP_PROD(fbp_product_tn)(
    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, FBP_T alpha, const FBP_T *a, ptrdiff_t lda,
    const FBP_T *d, ptrdiff_t ldd, FBP_T beta, FBP_T *c, ptrdiff_t ldc)
{
    FBP_PROD(fbp_prod_general)(m, n, k, a, lda, 1, d, ldd, c, ldc, alpha, beta);
}

/* NT: C (m x n) = D (m x k, ldd) W^T, W (n x k, ldw); C is overwritten.  W's rows are the
   columns of the product, so FBP_PROD_TRANSPOSED of them at a time are copied transposed
   (in chunks of FBP_PROD_NT_CHUNK of k) into a zero-padded panel, and each block of rows
   of D multiplies all of that panel before the next (the block's strip of D is read once
   per panel). */
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
    FBP_T scratch[FBP_PROD_ROWS * FBP_PROD_TRANSPOSED] __attribute__((aligned(FBP_PROD_BYTES)));
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FBP_PROD_TRANSPOSED) {
        const ptrdiff_t columns = n - i0 < FBP_PROD_TRANSPOSED ? n - i0 : FBP_PROD_TRANSPOSED;
        const int n_vectors = (int)((columns + FBP_PROD_LANES - 1) / FBP_PROD_LANES);
        const ptrdiff_t width = n_vectors * FBP_PROD_LANES;
        const int whole = columns == width;   /* C's columns take whole vector stores */
        for (ptrdiff_t k0 = 0; k0 < k || k0 == 0; k0 += FBP_PROD_NT_CHUNK) {
            const ptrdiff_t kc = k - k0 < FBP_PROD_NT_CHUNK ? k - k0 : FBP_PROD_NT_CHUNK;
            const FBP_T beta = k0 == 0 ? (FBP_T)0 : (FBP_T)1;
            if (!whole)
                memset(panel, 0, (size_t)(kc * width) * sizeof(FBP_T));
            for (ptrdiff_t i = 0; i < columns; i++) {
                const FBP_T *row = w + (i0 + i) * ldw + k0;
                for (ptrdiff_t kk = 0; kk < kc; kk++)
                    panel[kk * width + i] = row[kk];
            }
            for (ptrdiff_t p = 0; p < m; p += FBP_PROD_ROWS) {
                const ptrdiff_t rows = m - p < FBP_PROD_ROWS ? m - p : FBP_PROD_ROWS;
                /* whole: straight into C; else through scratch (C's last columns are
                   partial) */
                FBP_T *out = whole ? c + p * ldc + i0 : scratch;
                const ptrdiff_t ld_out = whole ? ldc : width;
                for (ptrdiff_t v = 0; v < n_vectors; v += FBP_PROD_VECTORS) {
                    const int nv = n_vectors - v < FBP_PROD_VECTORS ? n_vectors - (int)v
                                                                   : FBP_PROD_VECTORS;
                    FBP_PROD(fbp_prod_panel)(rows, nv, kc, d + p * ldd + k0, ldd, 0,
                                             panel + v * FBP_PROD_LANES, width,
                                             out + v * FBP_PROD_LANES, ld_out, (FBP_T)1,
                                             whole ? beta : (FBP_T)0, NULL, 0);
                }
                if (!whole)
                    for (ptrdiff_t r = 0; r < rows; r++)
                        for (ptrdiff_t i = 0; i < columns; i++) {
                            FBP_T *target = c + (p + r) * ldc + i0 + i;
                            *target = beta == 0 ? scratch[r * width + i]
                                                : *target + scratch[r * width + i];
                        }
            }
            if (k == 0)
                break;
        }
    }
}
#undef FBP_PROD_TRANSPOSED
#undef FBP_PROD_NT_PANELS
#undef FBP_PROD_NT_CHUNK
#undef FBP_PROD_CHUNK
#undef FBP_PROD_ROW_CASES
#undef FBP_PROD_WIDTH
#undef FBP_PROD_LANES
