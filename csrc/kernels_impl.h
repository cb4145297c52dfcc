/* Element-wise kernels and the helpers of elementwise_impl.h's, written once for one float
 * type.  Included by one_type.h with FBP_T = float / double and FBP_NAME adding _f32 /
 * _f64.  Matrices are row-major, n_rows x n_cols, contiguous.  Inputs are const; the
 * caller passes the output buffers. */

/* The gathers check every index they read against the length of what it indexes, as
   they read it (the caller's arrays may have been rewritten since they were validated:
   a wrong index must give an error, never a read or write out of bounds).  Each returns
   -1, or the first i whose index is out of range (nothing is written for it or after). */

/* Columns [first, first + n_cols) of the named rows of src (rows of row_length values,
   n_src of them) into the same columns of dst's rows (row_length apart): a worker's share
   of a batch split by its inputs.  Returns the position of the first row out of range,
   or -1. */
static inline ptrdiff_t FBP_NAME(fbp_gather_columns)(FBP_T *dst, const FBP_T *src,
                                                     const ptrdiff_t *rows, ptrdiff_t n_rows,
                                                     ptrdiff_t row_length, ptrdiff_t first,
                                                     ptrdiff_t n_cols, ptrdiff_t n_src)
{
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        ptrdiff_t row = rows[i];
        if ((size_t)row >= (size_t)n_src)
            return i;
        memcpy(dst + i * row_length + first, src + row * row_length + first,
               (size_t)n_cols * sizeof(FBP_T));
    }
    return -1;
}

/* dst[i, :] = src[rows[i], :], src having n_src rows */
static inline ptrdiff_t FBP_NAME(fbp_gather_rows)(FBP_T *dst, const FBP_T *src,
                                                  const ptrdiff_t *rows, ptrdiff_t n_rows,
                                                  ptrdiff_t n_cols, ptrdiff_t n_src)
{
    return FBP_NAME(fbp_gather_columns)(dst, src, rows, n_rows, n_cols, 0, n_cols, n_src);
}

/* Ask the CPU to bring rows[0..n_rows-1] of src (n_cols wide, n_src rows) into cache: the
   next batch's rows, requested while this batch trains, since a shuffled order reads X at
   random (for batches of one row, a miss to memory was about a tenth of a step); or the
   rows of W1 a sparse pass reads next.  head_bytes > 0: only each row's first head_bytes
   (FBP_PREFETCH_HEAD_BYTES: the hardware brings in the rest as the row is read).  Rows
   out of range are skipped: the gather checks them. */
static inline void FBP_NAME(fbp_prefetch_rows)(const FBP_T *src, const ptrdiff_t *rows,
                                               ptrdiff_t n_rows, ptrdiff_t n_cols,
                                               ptrdiff_t n_src, ptrdiff_t head_bytes)
{
    const size_t row_bytes = (size_t)n_cols * sizeof(FBP_T);
    const size_t bytes = head_bytes > 0 && (size_t)head_bytes < row_bytes ? (size_t)head_bytes
                                                                          : row_bytes;
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        ptrdiff_t row = rows[i];
        if ((size_t)row >= (size_t)n_src)
            continue;
        const char *start = (const char *)(src + row * n_cols);
        for (size_t b = 0; b < bytes; b += 64)
            fbp_prefetch(start + b);
        fbp_prefetch(start + bytes - 1);
    }
}

/* dst[i] = src[rows[i]], src having n_src elements */
static inline ptrdiff_t FBP_NAME(fbp_gather)(FBP_T *dst, const FBP_T *src, const ptrdiff_t *rows,
                                             ptrdiff_t n, ptrdiff_t n_src)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t row = rows[i];
        if ((size_t)row >= (size_t)n_src)
            return i;
        dst[i] = src[row];
    }
    return -1;
}

/* dst[i, :] = one-hot row of labels[rows[i]] (or labels[i] when rows is NULL), labels
   having n_labels elements, each a class in [0, n_cols). */
static inline ptrdiff_t FBP_NAME(fbp_one_hot)(FBP_T *dst, const ptrdiff_t *labels,
                                              const ptrdiff_t *rows, ptrdiff_t n_rows,
                                              ptrdiff_t n_cols, ptrdiff_t n_labels)
{
    memset(dst, 0, (size_t)(n_rows * n_cols) * sizeof(FBP_T));
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        ptrdiff_t row = rows ? rows[i] : i;
        if ((size_t)row >= (size_t)n_labels)
            return i;
        ptrdiff_t label = labels[row];   /* read once: checked and used as the same value */
        if ((size_t)label >= (size_t)n_cols)
            return i;
        dst[i * n_cols + label] = 1;
    }
    return -1;
}

/* dots[k] = sum_j y[k, j] z[k, j] for `rows` (a constant where inlined) consecutive rows of
   n_cols, each in column order by fused multiply-adds (as fbp_softmax_block does): the
   rows' chains side by side, so that each waits on its own fma's latency only. */
static inline __attribute__((always_inline)) void FBP_NAME(fbp_target_dots)(
    const FBP_T *y, const FBP_T *z, ptrdiff_t n_cols, const int rows, FBP_T *dots)
{
#pragma GCC unroll 4
    for (int k = 0; k < rows; k++)
        dots[k] = 0;
    for (ptrdiff_t j = 0; j < n_cols; j++)
#pragma GCC unroll 4
        for (int k = 0; k < rows; k++)
            dots[k] = FBP_MATH_FMA(y[k * n_cols + j], z[k * n_cols + j], dots[k]);
}

/* Softmax of each row of z + bias, in place: z <- exp(z + bias - max) / sum, row by row;
   each row's sum is taken in column order.  With targets y (not NULL) also the
   cross-entropy: returns the summed loss terms -sum_k y_k log p_k, each row's weighted by
   row_weights[r] (all 1 when NULL), taken from the logits (sum_k y_k (log(sum exp(z -
   top)) - (z_k - top)): no log of 0), and, when delta is not NULL, writes the fused
   gradient delta = scale * weight * (p - y).  Without targets it returns 0.
   Rows of up to FBP_SOFTMAX_COLUMNS columns go FBP_SOFTMAX_ROWS at a time through
   fbp_softmax_block (softmax.h), in vectors across the rows.  The other rows take their
   exps in one loop over all of them, where it vectorises.  Both give each row the same
   operations in the same order, so the same bits.  Inlined into each of its callers'
   instruction-set levels (elementwise_impl.h), where the exps take that set's vectors. */
static inline __attribute__((always_inline)) double FBP_NAME(fbp_softmax_rows)(
    FBP_T *z, const FBP_T *bias, ptrdiff_t n_rows, ptrdiff_t n_cols, const FBP_T *y,
    const FBP_T *row_weights, FBP_T *delta, FBP_T scale)
{
    double total = 0;
    ptrdiff_t start = 0;
    if (FBP_NAME(fbp_softmax_blocks)(n_cols))
        for (; start + FBP_SOFTMAX_ROWS <= n_rows; start += FBP_SOFTMAX_ROWS)
            FBP_NAME(fbp_softmax_block)(z + start * n_cols, bias, n_cols,
                                        y ? y + start * n_cols : NULL,
                                        row_weights ? row_weights + start : NULL,
                                        delta ? delta + start * n_cols : NULL, scale, &total);
    z += start * n_cols;
    n_rows -= start;
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        FBP_T *row = z + r * n_cols;
        FBP_T top = row[0] + bias[0];
        for (ptrdiff_t j = 0; j < n_cols; j++) {
            row[j] += bias[j];
            top = row[j] > top ? row[j] : top;
        }
        for (ptrdiff_t j = 0; j < n_cols; j++)
            row[j] -= top;
    }
    if (y)   /* the loss's second term; the first once the sums of exp are known */
        for (ptrdiff_t r = 0; r < n_rows;) {
            FBP_T dots[4];
            const int rows = n_rows - r >= 4 ? 4 : 1;
            if (rows == 4)
                FBP_NAME(fbp_target_dots)(y + (start + r) * n_cols, z + r * n_cols, n_cols, 4,
                                          dots);
            else
                FBP_NAME(fbp_target_dots)(y + (start + r) * n_cols, z + r * n_cols, n_cols, 1,
                                          dots);
            for (int k = 0; k < rows; k++, r++)
                total -= (row_weights ? row_weights[start + r] : 1) * (double)dots[k];
        }
    const ptrdiff_t n = n_rows * n_cols;
    for (ptrdiff_t i = 0; i < n; i++)
        z[i] = FBP_MATH_EXP(z[i]);
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        FBP_T *row = z + r * n_cols;
        FBP_T sum_exp = 0;
        for (ptrdiff_t j = 0; j < n_cols; j++)
            sum_exp += row[j];
        const FBP_T weight = row_weights ? row_weights[start + r] : 1;
        const FBP_T *target = y ? y + (start + r) * n_cols : NULL;
        if (target) {
            FBP_T sum_y = 0;
            for (ptrdiff_t j = 0; j < n_cols; j++)
                sum_y += target[j];
            total += weight * (double)(sum_y * FBP_MATH_LOG_INLINE(sum_exp));
        }
        FBP_T inverse = 1 / sum_exp;
        for (ptrdiff_t j = 0; j < n_cols; j++)
            row[j] *= inverse;
        if (target && delta) {
            FBP_T factor = scale * weight;
            FBP_T *delta_row = delta + (start + r) * n_cols;
            for (ptrdiff_t j = 0; j < n_cols; j++)
                delta_row[j] = factor * (row[j] - target[j]);
        }
    }
    return total;
}

/* A logistic sigmoid that never overflows: one exp of -|v|. */
static inline FBP_T FBP_NAME(fbp_sigmoid)(FBP_T v)
{
    FBP_T e = FBP_MATH_EXP(-FBP_MATH_ABS(v));
    return v >= 0 ? 1 / (1 + e) : e / (1 + e);
}

/* Inverted dropout: out = a * mask, mask[i] = 0 with probability `rate`, else
   1 / (1 - rate); the mask is kept for the backward pass. */
static inline void FBP_NAME(fbp_dropout)(FBP_T *out, FBP_T *mask, const FBP_T *a, ptrdiff_t n,
                                         double rate, uint64_t *random_state)
{
    const uint64_t threshold = (uint64_t)(rate * 18446744073709551616.0);
    const FBP_T keep = (FBP_T)(1.0 / (1.0 - rate));
    for (ptrdiff_t i = 0; i < n; i++)
        mask[i] = fbp_random_next(random_state) >= threshold ? keep : 0;
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = a[i] * mask[i];
}

/* x <- x * y, element by element. */
static inline void FBP_NAME(fbp_multiply)(FBP_T *x, const FBP_T *y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] *= y[i];
}

static inline void FBP_NAME(fbp_add)(FBP_T *x, const FBP_T *y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* beta * value + alpha * sum, rounded once (fbp_column_sums' last step). */
static inline FBP_T FBP_NAME(fbp_stepped_sum)(FBP_T value, double sum, FBP_T alpha, FBP_T beta)
{
    const double kept = beta == 0 ? 0 : beta == 1 ? (double)value : (double)(beta * value);
    return (FBP_T)(kept + (double)alpha * sum);
}

/* target <- beta * target + alpha * (sum of delta's rows): the bias gradient or update.
   The rows are summed in FBP_T 16 at a time, those sums in double, a block of columns at
   a time, and the sum added once: added row after row into the target in float (plain
   SGD's bias itself, a batch's gradient), a batch of 2^20 rows left the bias where it
   was.  (Every row converted to double took 1.7x the time of the float sums for 256
   rows of 4096.) */
static inline void FBP_NAME(fbp_column_sums)(FBP_T *target, const FBP_T *delta, ptrdiff_t n_rows,
                                             ptrdiff_t n_cols, FBP_T alpha, FBP_T beta)
{
    enum { COLUMNS = 256, ROWS = 16 };
    double sums[COLUMNS];
    FBP_T partial[COLUMNS];
    if (n_rows >= 1 && n_rows <= ROWS) {   /* one block (a small batch): no sums between */
        for (ptrdiff_t low = 0; low < n_cols; low += COLUMNS) {
            const ptrdiff_t width = n_cols - low < COLUMNS ? n_cols - low : COLUMNS;
            const FBP_T *first_row = delta + low;
            for (ptrdiff_t j = 0; j < width; j++)
                partial[j] = first_row[j];
            for (ptrdiff_t i = 1; i < n_rows; i++) {
                const FBP_T *row = delta + i * n_cols + low;
                for (ptrdiff_t j = 0; j < width; j++)
                    partial[j] += row[j];
            }
            FBP_T *out = target + low;
            for (ptrdiff_t j = 0; j < width; j++)   /* (0.0 + : the same bits as below) */
                out[j] = FBP_NAME(fbp_stepped_sum)(out[j], 0.0 + (double)partial[j], alpha, beta);
        }
        return;
    }
    for (ptrdiff_t low = 0; low < n_cols; low += COLUMNS) {
        const ptrdiff_t width = n_cols - low < COLUMNS ? n_cols - low : COLUMNS;
        for (ptrdiff_t j = 0; j < width; j++)
            sums[j] = 0;
        for (ptrdiff_t first = 0; first < n_rows; first += ROWS) {
            const ptrdiff_t last = n_rows - first < ROWS ? n_rows : first + ROWS;
            memcpy(partial, delta + first * n_cols + low, (size_t)width * sizeof(FBP_T));
            for (ptrdiff_t i = first + 1; i < last; i++) {
                const FBP_T *row = delta + i * n_cols + low;
                for (ptrdiff_t j = 0; j < width; j++)
                    partial[j] += row[j];
            }
            for (ptrdiff_t j = 0; j < width; j++)
                sums[j] += partial[j];
        }
        FBP_T *out = target + low;
        for (ptrdiff_t j = 0; j < width; j++)
            out[j] = FBP_NAME(fbp_stepped_sum)(out[j], sums[j], alpha, beta);
    }
}

/* Sum of squares, accumulated in double (for clipping by the gradient's norm). */
static inline double FBP_NAME(fbp_sum_squares)(const FBP_T *x, ptrdiff_t n)
{
    double total = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        total += (double)x[i] * x[i];
    return total;
}

/* Sum of squares of scale * x, in double: the norm of values whose squares overflow double
   (fastbp/_core.pyx, gradient_norm), scale a power of two. */
static inline double FBP_NAME(fbp_sum_squares_scaled)(const FBP_T *x, ptrdiff_t n,
                                                      double scale)
{
    double total = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double value = scale * x[i];
        total += value * value;
    }
    return total;
}

/* x <- factor * x */
static inline void FBP_NAME(fbp_scale)(FBP_T *x, ptrdiff_t n, FBP_T factor)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] *= factor;
}

/* Adam's k steps without a gradient on n weights, one step at a time with the dense rule's
   arithmetic (fbp_optimizer_step's), the loop over the weights inside (it vectorises). */
static inline void FBP_NAME(fbp_adam_steps)(FBP_T *restrict params, FBP_T *restrict first,
                                            FBP_T *restrict second, ptrdiff_t n,
                                            const double *step_sizes, const double *roots,
                                            ptrdiff_t k, double shrink, double beta1,
                                            double beta2, double epsilon)
{
    const FBP_T b1 = (FBP_T)beta1, b2 = (FBP_T)beta2, eps = (FBP_T)epsilon;
    const FBP_T decay = (FBP_T)shrink;
    for (ptrdiff_t s = 1; s <= k; s++) {
        const FBP_T step_size = (FBP_T)step_sizes[s];
        const FBP_T inverse_root_correction = (FBP_T)(1.0 / roots[s]);
        for (ptrdiff_t i = 0; i < n; i++) {
            FBP_T m = b1 * first[i], v = b2 * second[i];
            first[i] = m;
            second[i] = v;
            params[i] = decay * params[i]
                        - step_size * m / (FBP_MATH_SQRT(v) * inverse_root_correction + eps);
        }
    }
}

/* The terms of a series in powers of at most `largest` (0 <= largest < 1) that bring its
   rest within a quarter of FBP_T's rounding, `margin` bits more (at least 1, at most
   the dtype's FBP_ADAM_TERMS_*). */
#ifndef FBP_ADAM_TERMS_T
#define FBP_ADAM_TERMS_T (sizeof(FBP_T) == sizeof(float) ? FBP_ADAM_TERMS_FLOAT \
                                                        : FBP_ADAM_TERMS_DOUBLE)
#endif
static inline int FBP_NAME(fbp_series_terms)(FBP_T largest, int margin)
{
    const double bits = (sizeof(FBP_T) == sizeof(float) ? 26.0 : 55.0) + margin;
    const int most = FBP_ADAM_TERMS_T;
    int terms = largest > 0 ? (int)ceil(-bits / log2((double)largest)) : 1;
    return terms < 1 ? 1 : terms > most ? most : terms;
}

/* The second series' coefficients M_q in FBP_T (around) and the scale of its y (middle,
   epsilon: fbp_adam_catch_up's): 1 where they are finite in FBP_T with room, else 0 (no
   second series). */
static inline int FBP_NAME(fbp_adam_second_series)(const double *middle, double epsilon,
                                                   FBP_T *around, FBP_T *y_scale)
{
    const double room = (sizeof(FBP_T) == sizeof(float) ? FLT_MAX : DBL_MAX) / 4;
    if (middle == NULL || !(middle[0] > 0))
        return 0;
    for (int q = 0; q < (int)FBP_ADAM_TERMS_T; q++) {
        if (!(isfinite(middle[1 + q]) && fabs(middle[1 + q]) < room))
            return 0;
        around[q] = (FBP_T)middle[1 + q];
    }
    const double scale = 1 / (epsilon * middle[0]);
    *y_scale = (FBP_T)scale;
    return isfinite(scale) && scale < room;
}

/* Sparse input: a batch of rows of a CSR matrix (data, indices, indptr; n_rows rows,
   n_cols columns, nnz stored values), rows[0..m) of it, or first..first+m when rows is
   NULL.  The arrays are the caller's, read in place, so every index is checked as it is
   read (each is read once and the checked value used): the row, its range
   indptr[row]..indptr[row + 1] (within 0..nnz, not decreasing) and each column
   (< n_cols).  Both kernels return -1, or the first i whose row holds an index out of
   range (rows before it are done; its own and later rows are not).  A column named twice
   in a row counts twice, as scipy reads it.  (The kernels: elementwise_impl.h.) */

/* 1 and row's range [*begin, *end) of stored values if row and its indptr are in range. */
static inline int FBP_NAME(fbp_csr_range)(const ptrdiff_t *indptr, ptrdiff_t n_rows,
                                          ptrdiff_t nnz, ptrdiff_t row, ptrdiff_t *begin,
                                          ptrdiff_t *end)
{
    if ((size_t)row >= (size_t)n_rows)
        return 0;
    *begin = indptr[row];
    *end = indptr[row + 1];
    return 0 <= *begin && *begin <= *end && *end <= nnz;
}

/* The passes over a sparse batch read its rows' stored values in batch order, each row
   from anywhere in the matrix (a shuffled order), and the first layer's product reads the
   rows of W they name, anywhere in W: at row i of m (rows[i], or first + i where rows is
   NULL) each pass asks for the indptr entries of row i + FBP_CSR_AHEAD_INDPTR and the
   stored values (columns and values) of row i + FBP_CSR_AHEAD_VALUES, whose indptr
   entries are in cache by then (FBP_CSR_AHEAD_*, fastbp.h).  Rows and ranges out of range
   are skipped: the readers check them. */
static inline void FBP_NAME(fbp_prefetch_csr_ahead)(const FBP_T *data, const ptrdiff_t *indices,
                                                    const ptrdiff_t *indptr, ptrdiff_t n_rows,
                                                    ptrdiff_t nnz, const ptrdiff_t *rows,
                                                    ptrdiff_t first, ptrdiff_t i, ptrdiff_t m)
{
    ptrdiff_t ahead = i + FBP_CSR_AHEAD_INDPTR, begin, end;
    if (ahead < m) {
        ptrdiff_t row = rows ? rows[ahead] : first + ahead;
        if ((size_t)row < (size_t)n_rows)
            fbp_prefetch(indptr + row);
    }
    ahead = i + FBP_CSR_AHEAD_VALUES;
    if (ahead >= m || !FBP_NAME(fbp_csr_range)(indptr, n_rows, nnz,
                                               rows ? rows[ahead] : first + ahead, &begin, &end)
            || begin == end)
        return;
    for (ptrdiff_t k = begin; k < end; k += 64 / sizeof(ptrdiff_t))
        fbp_prefetch(indices + k);
    fbp_prefetch(indices + end - 1);
    for (ptrdiff_t k = begin; k < end; k += 64 / sizeof(FBP_T))
        fbp_prefetch(data + k);
    fbp_prefetch(data + end - 1);
}

