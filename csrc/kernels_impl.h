/* Element-wise kernels, written once for one float type.
 * Included by fastbp.h with FBP_T = float / double and FBP_NAME adding _f32 / _f64.
 * Matrices are row-major, n_rows x n_cols, contiguous.  Inputs are const;
 * the caller passes the output buffers. */

/* 1 if every element of x is finite.  An integer test on the exponent bits, so the
   loop vectorises without -ffast-math. */
static inline int FBP_NAME(fbp_all_finite)(const FBP_T *x, ptrdiff_t n)
{
    const ptrdiff_t block = 4096;
    for (ptrdiff_t start = 0; start < n; start += block) {
        ptrdiff_t stop = start + block < n ? start + block : n;
        int bad = 0;
        for (ptrdiff_t i = start; i < stop; i++)
            bad |= !isfinite(x[i]);
        if (bad)
            return 0;
    }
    return 1;
}

/* dst[i, :] = src[rows[i], :] */
static inline void FBP_NAME(fbp_gather_rows)(FBP_T *dst, const FBP_T *src, const ptrdiff_t *rows,
                                             ptrdiff_t n_rows, ptrdiff_t n_cols)
{
    for (ptrdiff_t i = 0; i < n_rows; i++)
        memcpy(dst + i * n_cols, src + rows[i] * n_cols, (size_t)n_cols * sizeof(FBP_T));
}

/* dst[i, :] = one-hot row of labels[rows[i]] (or labels[i] when rows is NULL). */
static inline void FBP_NAME(fbp_one_hot)(FBP_T *dst, const ptrdiff_t *labels, const ptrdiff_t *rows,
                                         ptrdiff_t n_rows, ptrdiff_t n_cols)
{
    memset(dst, 0, (size_t)(n_rows * n_cols) * sizeof(FBP_T));
    for (ptrdiff_t i = 0; i < n_rows; i++)
        dst[i * n_cols + labels[rows ? rows[i] : i]] = 1;
}

/* One row of a softmax, in place: z <- exp(z - max z) / sum. */
static inline void FBP_NAME(fbp_softmax_row)(FBP_T *z, ptrdiff_t n)
{
    FBP_T top = z[0];
    for (ptrdiff_t j = 1; j < n; j++)
        top = z[j] > top ? z[j] : top;
    FBP_T total = 0;
    for (ptrdiff_t j = 0; j < n; j++) {
        z[j] = FBP_MATH_EXP(z[j] - top);
        total += z[j];
    }
    FBP_T inverse = 1 / total;
    for (ptrdiff_t j = 0; j < n; j++)
        z[j] *= inverse;
}

/* A logistic sigmoid that never overflows: one exp of -|v|. */
static inline FBP_T FBP_NAME(fbp_sigmoid)(FBP_T v)
{
    FBP_T e = FBP_MATH_EXP(-FBP_MATH_ABS(v));
    return v >= 0 ? 1 / (1 + e) : e / (1 + e);
}

/* z <- f(z + bias), bias broadcast over the rows (the fused bias add and activation). */
static inline void FBP_NAME(fbp_bias_activation)(FBP_T *z, const FBP_T *bias, ptrdiff_t n_rows,
                                                 ptrdiff_t n_cols, int activation)
{
    const FBP_T slope = (FBP_T)FBP_LEAKY_SLOPE;
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        FBP_T *row = z + i * n_cols;
        switch (activation) {
        case FBP_IDENTITY:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] += bias[j];
            break;
        case FBP_RELU:
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v > 0 ? v : 0;
            }
            break;
        case FBP_LEAKY_RELU:
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v > 0 ? v : slope * v;
            }
            break;
        case FBP_SIGMOID:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] = FBP_NAME(fbp_sigmoid)(row[j] + bias[j]);
            break;
        case FBP_TANH:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] = FBP_MATH_TANH(row[j] + bias[j]);
            break;
        case FBP_SOFTMAX:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] += bias[j];
            FBP_NAME(fbp_softmax_row)(row, n_cols);
            break;
        }
    }
}

/* delta <- delta * f'(z), with f' taken from the activation's output a = f(z).
   For softmax, delta holds dL/da and becomes dL/dz = a * (delta - <delta, a>) per row. */
static inline void FBP_NAME(fbp_activation_backward)(FBP_T *delta, const FBP_T *a, ptrdiff_t n_rows,
                                                     ptrdiff_t n_cols, int activation)
{
    const FBP_T slope = (FBP_T)FBP_LEAKY_SLOPE;
    const ptrdiff_t n = n_rows * n_cols;
    switch (activation) {
    case FBP_IDENTITY:
        break;
    case FBP_RELU:
        for (ptrdiff_t i = 0; i < n; i++) delta[i] = a[i] > 0 ? delta[i] : 0;
        break;
    case FBP_LEAKY_RELU:
        for (ptrdiff_t i = 0; i < n; i++) delta[i] = a[i] > 0 ? delta[i] : slope * delta[i];
        break;
    case FBP_SIGMOID:
        for (ptrdiff_t i = 0; i < n; i++) delta[i] *= a[i] * (1 - a[i]);
        break;
    case FBP_TANH:
        for (ptrdiff_t i = 0; i < n; i++) delta[i] *= 1 - a[i] * a[i];
        break;
    case FBP_SOFTMAX:
        for (ptrdiff_t r = 0; r < n_rows; r++) {
            FBP_T *d = delta + r * n_cols;
            const FBP_T *p = a + r * n_cols;
            FBP_T dot = 0;
            for (ptrdiff_t j = 0; j < n_cols; j++) dot += d[j] * p[j];
            for (ptrdiff_t j = 0; j < n_cols; j++) d[j] = p[j] * (d[j] - dot);
        }
        break;
    }
}

/* The output layer: z <- f(z + bias) in place, returns the summed loss terms and, when
   delta is not NULL, writes delta = scale * d(summed loss)/dz.  softmax + CCE and
   sigmoid + BCE take the loss from the logits (no log of 0) and the fused gradient
   p - y; every other pairing clips probabilities and uses the chain rule. */
static inline double FBP_NAME(fbp_output_layer)(FBP_T *z, const FBP_T *bias, const FBP_T *y,
                                                FBP_T *delta, ptrdiff_t n_rows, ptrdiff_t n_cols,
                                                int activation, int loss, FBP_T scale)
{
    const ptrdiff_t n = n_rows * n_cols;
    double total = 0;

    if (activation == FBP_SOFTMAX && loss == FBP_CCE) {
        for (ptrdiff_t r = 0; r < n_rows; r++) {
            FBP_T *row = z + r * n_cols;
            const FBP_T *target = y + r * n_cols;
            FBP_T top = row[0] + bias[0];
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                row[j] += bias[j];
                top = row[j] > top ? row[j] : top;
            }
            /* -sum_k y_k log p_k = sum_k y_k * (log(sum exp(z - top)) - (z_k - top)) */
            FBP_T sum_exp = 0, sum_y = 0, dot_yz = 0;
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T shifted = row[j] - top;
                dot_yz += target[j] * shifted;
                sum_y += target[j];
                row[j] = FBP_MATH_EXP(shifted);
                sum_exp += row[j];
            }
            total += (double)sum_y * log((double)sum_exp) - (double)dot_yz;
            FBP_T inverse = 1 / sum_exp;
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] *= inverse;
            if (delta)
                for (ptrdiff_t j = 0; j < n_cols; j++)
                    delta[r * n_cols + j] = scale * (row[j] - target[j]);
        }
        return total;
    }

    if (activation == FBP_SIGMOID && loss == FBP_BCE) {
        for (ptrdiff_t r = 0; r < n_rows; r++) {
            FBP_T *row = z + r * n_cols;
            const FBP_T *target = y + r * n_cols;
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                FBP_T e = FBP_MATH_EXP(-FBP_MATH_ABS(v));
                /* -(y log p + (1-y) log(1-p)) = max(v, 0) - v y + log(1 + exp(-|v|)) */
                total += (double)((v > 0 ? v : 0) - v * target[j] + FBP_MATH_LOG1P(e));
                row[j] = v >= 0 ? 1 / (1 + e) : e / (1 + e);
            }
        }
        if (delta)
            for (ptrdiff_t i = 0; i < n; i++) delta[i] = scale * (z[i] - y[i]);
        return total;
    }

    FBP_NAME(fbp_bias_activation)(z, bias, n_rows, n_cols, activation);
    const FBP_T eps = (FBP_T)FBP_PROB_EPS;
    for (ptrdiff_t i = 0; i < n; i++) {
        FBP_T a = z[i], target = y[i], grad;
        switch (loss) {
        case FBP_MSE: {
            FBP_T diff = a - target;
            total += (double)(diff * diff);
            grad = 2 * diff;
            break;
        }
        case FBP_MAE: {
            FBP_T diff = a - target;
            total += (double)FBP_MATH_ABS(diff);
            grad = (FBP_T)((diff > 0) - (diff < 0));
            break;
        }
        case FBP_CCE: {
            int inside = a > eps && a < 1 - eps;
            FBP_T p = inside ? a : (a <= eps ? eps : 1 - eps);
            total -= (double)(target * FBP_MATH_LOG(p));
            grad = inside ? -target / p : 0;
            break;
        }
        default: { /* FBP_BCE */
            int inside = a > eps && a < 1 - eps;
            FBP_T p = inside ? a : (a <= eps ? eps : 1 - eps);
            total -= (double)(target * FBP_MATH_LOG(p) + (1 - target) * FBP_MATH_LOG(1 - p));
            grad = inside ? (p - target) / (p * (1 - p)) : 0;
            break;
        }
        }
        if (delta)
            delta[i] = scale * grad;
    }
    if (delta)
        FBP_NAME(fbp_activation_backward)(delta, z, n_rows, n_cols, activation);
    return total;
}

/* target <- beta * target + alpha * (sum of delta's rows): the bias gradient or update. */
static inline void FBP_NAME(fbp_column_sums)(FBP_T *target, const FBP_T *delta, ptrdiff_t n_rows,
                                             ptrdiff_t n_cols, FBP_T alpha, FBP_T beta)
{
    if (beta == 0)
        memset(target, 0, (size_t)n_cols * sizeof(FBP_T));
    else if (beta != 1)
        for (ptrdiff_t j = 0; j < n_cols; j++) target[j] *= beta;
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        const FBP_T *row = delta + i * n_cols;
        for (ptrdiff_t j = 0; j < n_cols; j++) target[j] += alpha * row[j];
    }
}
