/* The element-wise kernels whose loops vectorise: the passes over whole parameter buffers
 * (the optimizer steps, the finiteness checks), the activation and loss passes, the lazy
 * rules' catch-ups and the sparse first layer.  Included by one_type.h after
 * kernels_impl.h (whose helpers they inline), once per instruction-set level where the
 * build has them (fastbp.h, FBP_LEVELS: baseline x86-64, AVX2, AVX-512F, each compiled
 * for its set) with FBP_LEVEL_NAME adding the level's suffix to FBP_NAME's name, and
 * called through fastbp.h's FBP_AT_LEVEL by their plain names; once, as FBP_NAME's, where
 * it has not.  Matrices are row-major, n_rows x n_cols, contiguous. */

/* 1 if every element of x is finite (a compare per element, no branch: vectorises). */
static int FBP_LEVEL_NAME(fbp_all_finite)(const FBP_T *x, ptrdiff_t n)
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

/* max |x[i]|, or infinity if an element is NaN or infinite; *negative set to 1 if one is
   below 0 (a sweep of compares and a max, no branch: vectorises).  The end of a sparse
   epoch bounds each row's catch-up with it (fastbp/_core.pyx, flush_bound). */
static double FBP_LEVEL_NAME(fbp_largest_magnitude)(const FBP_T *x, ptrdiff_t n,
                                                               int *negative)
{
    FBP_T largest = 0;
    int bad = 0, below = 0;
    FBP_PRAGMA_SIMD(reduction(max:largest) reduction(|:bad, below))
    for (ptrdiff_t i = 0; i < n; i++) {
        FBP_T size = FBP_MATH_ABS(x[i]);
        largest = size > largest ? size : largest;
        bad |= !isfinite(x[i]);
        below |= x[i] < 0;
    }
    *negative |= below;
    return bad ? (double)INFINITY : (double)largest;
}

/* z <- f(z + bias), bias broadcast over the rows (the fused bias add and activation).
   When preactivation is not NULL it receives z + bias (gelu and swish need it). */
static void FBP_LEVEL_NAME(fbp_bias_activation)(FBP_T *z, const FBP_T *bias,
                                                FBP_T *preactivation, ptrdiff_t n_rows,
                                                ptrdiff_t n_cols, int activation)
{
    const FBP_T slope = (FBP_T)FBP_LEAKY_SLOPE;
    const FBP_T inverse_sqrt2 = (FBP_T)0.70710678118654752440;
    if (activation == FBP_SOFTMAX && !preactivation) {
        FBP_NAME(fbp_softmax_rows)(z, bias, n_rows, n_cols, NULL, NULL, NULL, 0);
        return;
    }
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        FBP_T *row = z + i * n_cols;
        if (preactivation) {
            FBP_T *pre = preactivation + i * n_cols;
            for (ptrdiff_t j = 0; j < n_cols; j++) pre[j] = row[j] + bias[j];
        }
        switch (activation) {
        case FBP_IDENTITY:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] += bias[j];
            break;
        case FBP_RELU:   /* NaN stays NaN (as max(z, 0) does in NumPy and torch): an
                            overflow in a hidden layer must reach the loss and the
                            output's finiteness check, not turn into 0 */
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v > 0 || v != v ? v : 0;
            }
            break;
        case FBP_LEAKY_RELU:
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v > 0 ? v : slope * v;
            }
            break;
        case FBP_SIGMOID:
            for (ptrdiff_t j = 0; j < n_cols; j++)
                row[j] = FBP_NAME(fbp_sigmoid)(row[j] + bias[j]);
            break;
        case FBP_TANH:
            for (ptrdiff_t j = 0; j < n_cols; j++) row[j] = FBP_MATH_TANH(row[j] + bias[j]);
            break;
        case FBP_SOFTMAX:   /* here only with a preactivation to keep */
            FBP_NAME(fbp_softmax_rows)(row, bias, 1, n_cols, NULL, NULL, NULL, 0);
            break;
        case FBP_ELU:   /* alpha = 1 */
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v > 0 ? v : FBP_MATH_EXPM1(v);
            }
            break;
        case FBP_SOFTPLUS:   /* log(1 + e^v) = max(v, 0) + log1p(e^-|v|) */
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = (v > 0 ? v : 0) + FBP_MATH_LOG1P(FBP_MATH_EXP(-FBP_MATH_ABS(v)));
            }
            break;
        case FBP_GELU:   /* exact: v * Phi(v), with Phi(v) = erfc(-v / sqrt 2) / 2, which keeps
                            its relative precision in the negative tail (1 + erf(v / sqrt 2)
                            cancels there: all of it in float32 below v = -5.5) */
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = (FBP_T)0.5 * v * FBP_MATH_ERFC(-v * inverse_sqrt2);
            }
            break;
        case FBP_SWISH:   /* v * sigmoid(v) (SiLU) */
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                row[j] = v * FBP_NAME(fbp_sigmoid)(v);
            }
            break;
        }
    }
}

/* delta <- delta * f'(z), f' taken from the output a = f(z) or, for gelu and swish, from
   the pre-activation z.  For softmax, delta holds dL/da and becomes
   dL/dz = a * (delta - <delta, a>) per row. */
static void FBP_LEVEL_NAME(fbp_activation_backward)(FBP_T *delta, const FBP_T *a,
                                                     const FBP_T *preactivation, ptrdiff_t n_rows,
                                                     ptrdiff_t n_cols, int activation)
{
    const FBP_T slope = (FBP_T)FBP_LEAKY_SLOPE;
    const FBP_T inverse_sqrt2 = (FBP_T)0.70710678118654752440;
    const FBP_T inverse_sqrt_2pi = (FBP_T)0.39894228040143267794;
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
    case FBP_ELU:   /* f' = 1 for z > 0, e^z = a + 1 otherwise */
        for (ptrdiff_t i = 0; i < n; i++) delta[i] *= a[i] > 0 ? 1 : a[i] + 1;
        break;
    case FBP_SOFTPLUS:   /* f' = sigmoid(z) = 1 - e^-a */
        for (ptrdiff_t i = 0; i < n; i++) delta[i] *= -FBP_MATH_EXPM1(-a[i]);
        break;
    case FBP_GELU:   /* f' = Phi(z) + z phi(z) */
        for (ptrdiff_t i = 0; i < n; i++) {
            FBP_T v = preactivation[i];
            delta[i] *= (FBP_T)0.5 * FBP_MATH_ERFC(-v * inverse_sqrt2)
                        + v * inverse_sqrt_2pi * FBP_MATH_EXP((FBP_T)-0.5 * v * v);
        }
        break;
    case FBP_SWISH:   /* f' = s + z s (1 - s), s = sigmoid(z) */
        for (ptrdiff_t i = 0; i < n; i++) {
            FBP_T v = preactivation[i], s = FBP_NAME(fbp_sigmoid)(v);
            delta[i] *= s + v * s * (1 - s);
        }
        break;
    }
}

/* The log-loss of probabilities p (the fused output layers' outputs) clipped to
   [clip, 1 - clip] first, as scikit-learn's log_loss and binary_log_loss take it: each
   row's -sum y log q (CCE) or -sum (y log q + (1 - y) log(1 - q)) (BCE), times its weight.
   Only the loss's value: the fused gradient p - y stays unclipped, as scikit-learn's. */
static double FBP_LEVEL_NAME(fbp_clipped_log_loss)(const FBP_T *p, const FBP_T *y,
                                                    const FBP_T *row_weights, ptrdiff_t n_rows,
                                                    ptrdiff_t n_cols, int loss, FBP_T clip)
{
    const FBP_T high = 1 - clip;
    double total = 0;
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        double row_total = 0;
        for (ptrdiff_t j = r * n_cols; j < (r + 1) * n_cols; j++) {
            const FBP_T q = p[j] < clip ? clip : (p[j] > high ? high : p[j]), t = y[j];
            if (t != 0)
                row_total -= (double)t * FBP_MATH_LOG(q);
            if (loss == FBP_BCE && t != 1)
                row_total -= (double)(1 - t) * FBP_MATH_LOG(1 - q);
        }
        total += (row_weights ? (double)row_weights[r] : 1.0) * row_total;
    }
    return total;
}

/* The output layer: z <- f(z + bias) in place; returns the summed loss terms, each row's
   weighted by row_weights[r] (all 1 when row_weights is NULL), and, when delta is not
   NULL, writes delta = scale * d(weighted sum)/dz.  softmax + CCE and sigmoid + BCE take
   the loss from the logits (no log of 0) and the fused gradient p - y; every other
   pairing clips probabilities and uses the chain rule.
   loss_parameter: Huber's delta; for the fused cross-entropies (softmax + CCE, sigmoid +
   BCE) the clip in (0, 0.5) of the probabilities in the loss's value (fbp_clipped_log_loss),
   0 for none (the core's check_loss refuses anything else). */
static double FBP_LEVEL_NAME(fbp_output_layer)(FBP_T *z, const FBP_T *bias, FBP_T *preactivation,
                                                const FBP_T *y, const FBP_T *row_weights,
                                                FBP_T *delta, ptrdiff_t n_rows, ptrdiff_t n_cols,
                                                int activation, int loss, FBP_T loss_parameter,
                                                FBP_T scale)
{
    double total = 0;

    if (activation == FBP_SOFTMAX && loss == FBP_CCE) {
        total = FBP_NAME(fbp_softmax_rows)(z, bias, n_rows, n_cols, y, row_weights, delta,
                                           scale);
        /* (total == total: a NaN stays NaN, the batch diverged) */
        if (y && loss_parameter > 0 && total == total)
            total = FBP_LEVEL_NAME(fbp_clipped_log_loss)(z, y, row_weights, n_rows, n_cols,
                                                         loss, loss_parameter);
        return total;
    }

    if (activation == FBP_SIGMOID && loss == FBP_BCE) {
        for (ptrdiff_t r = 0; r < n_rows; r++) {
            FBP_T *row = z + r * n_cols;
            const FBP_T *target = y + r * n_cols;
            FBP_T weight = row_weights ? row_weights[r] : 1;
            FBP_T row_total = 0;
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                FBP_T v = row[j] + bias[j];
                FBP_T e = FBP_MATH_EXP(-FBP_MATH_ABS(v));
                /* -(y log p + (1-y) log(1-p)) = max(v, 0) - v y + log(1 + exp(-|v|)) */
                row_total += (v > 0 ? v : 0) - v * target[j] + FBP_MATH_LOG1P(e);
                row[j] = v >= 0 ? 1 / (1 + e) : e / (1 + e);
            }
            total += (double)weight * row_total;
            if (delta) {
                FBP_T factor = scale * weight;
                for (ptrdiff_t j = 0; j < n_cols; j++)
                    delta[r * n_cols + j] = factor * (row[j] - target[j]);
            }
        }
        if (loss_parameter > 0 && total == total)
            total = FBP_LEVEL_NAME(fbp_clipped_log_loss)(z, y, row_weights, n_rows, n_cols,
                                                         loss, loss_parameter);
        return total;
    }

    FBP_LEVEL_NAME(fbp_bias_activation)(z, bias, preactivation, n_rows, n_cols, activation);
    const FBP_T eps = (FBP_T)FBP_PROB_EPS;
    for (ptrdiff_t r = 0; r < n_rows; r++) {
        FBP_T weight = row_weights ? row_weights[r] : 1;
        double row_total = 0;   /* in double: see FBP_MSE */
        for (ptrdiff_t j = r * n_cols; j < (r + 1) * n_cols; j++) {
            FBP_T a = z[j], target = y[j], grad;
            switch (loss) {
            case FBP_MSE: {   /* squared in double: a float32 difference may square past FLT_MAX */
                FBP_T diff = a - target;
                row_total += (double)diff * diff;
                grad = 2 * diff;
                break;
            }
            case FBP_MAE: {
                FBP_T diff = a - target;
                row_total += FBP_MATH_ABS(diff);
                grad = (FBP_T)((diff > 0) - (diff < 0));
                break;
            }
            case FBP_HUBER: {   /* d^2 / 2 inside |d| <= delta, delta (|d| - delta / 2) outside */
                FBP_T diff = a - target, size = FBP_MATH_ABS(diff);
                int inside = size <= loss_parameter;
                row_total += inside ? 0.5 * (double)diff * diff
                                    : loss_parameter * (size - 0.5 * (double)loss_parameter);
                grad = inside ? diff : loss_parameter * (FBP_T)((diff > 0) - (diff < 0));
                break;
            }
            case FBP_CCE: {
                int inside = a > eps && a < 1 - eps;
                FBP_T p = inside ? a : (a <= eps ? eps : 1 - eps);
                row_total -= target * FBP_MATH_LOG(p);
                grad = inside ? -target / p : 0;
                break;
            }
            default: { /* FBP_BCE */
                int inside = a > eps && a < 1 - eps;
                FBP_T p = inside ? a : (a <= eps ? eps : 1 - eps);
                row_total -= target * FBP_MATH_LOG(p) + (1 - target) * FBP_MATH_LOG(1 - p);
                grad = inside ? (p - target) / (p * (1 - p)) : 0;
                break;
            }
            }
            if (delta)
                delta[j] = scale * weight * grad;
        }
        total += (double)weight * row_total;
    }
    if (delta)
        FBP_LEVEL_NAME(fbp_activation_backward)(delta, z, preactivation, n_rows, n_cols,
                                                activation);
    return total;
}

/* Momentum with the velocity kept pre-scaled, s = mu v, so that the GEMM can add the new
   gradient with beta = 1 (OpenBLAS spends a whole extra pass over C on any other beta):
   after the GEMM s holds mu v + grad; then v = s + wd p (coupled decay), p <- p - lr v,
   s <- mu v.  Equal to the FBP_MOMENTUM rule below, without a gradient buffer. */
static void FBP_LEVEL_NAME(fbp_momentum_step)(FBP_T *params, FBP_T *scaled_velocity,
                                                         ptrdiff_t n, FBP_T learning_rate,
                                                         FBP_T weight_decay, FBP_T momentum)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        FBP_T v = scaled_velocity[i] + weight_decay * params[i];
        params[i] -= learning_rate * v;
        scaled_velocity[i] = momentum * v;
    }
}

/* One optimizer step on a slice of parameters, as torch.optim defines each rule.
   g is the gradient (weight_decay * p is added here: coupled decay), read and then reset
   to 0, so that the next gradient GEMM can accumulate with beta = 1 (OpenBLAS spends a
   whole extra pass over C for beta = 0); state holds first[] and second[] moments where
   the rule has them.  step counts from 1.

   named: NULL, or one flag per row of row_length values (n a multiple of it), as
   fbp_sparse_scatter sets them: a row whose flag is 0 holds a gradient of 0 (the sparse
   batch named none of its columns) and steps without reading or resetting grads there,
   with g = 0 + weight_decay * p, the same bits as reading that 0; each flag is reset to 0
   once its row has stepped.  The pass is bound by memory (an Adam pass over S1's W1 runs
   as fast as a loop that only moves the same four arrays), so those rows move three
   arrays instead of four. */
#define FBP_RULE_LOOP(BODY)                                                                \
    for (ptrdiff_t lo = 0; lo < n; lo += span) {                                           \
        ptrdiff_t hi = lo + span;                                                          \
        if (!named || named[lo / span]) {                                                  \
            if (named)                                                                     \
                named[lo / span] = 0;                                                      \
            for (ptrdiff_t i = lo; i < hi; i++) {                                          \
                FBP_T g = grads[i] + weight_decay * params[i];                             \
                grads[i] = 0;                                                              \
                BODY                                                                       \
            }                                                                              \
        } else {                                                                           \
            for (ptrdiff_t i = lo; i < hi; i++) {                                          \
                FBP_T g = (FBP_T)0 + weight_decay * params[i];                             \
                BODY                                                                       \
            }                                                                              \
        }                                                                                  \
    }

static void FBP_LEVEL_NAME(fbp_optimizer_step)(FBP_T *params, FBP_T *grads, FBP_T *first,
                                                FBP_T *second, ptrdiff_t n, int kind,
                                                FBP_T learning_rate, FBP_T weight_decay,
                                                FBP_T momentum, int nesterov, FBP_T beta1,
                                                FBP_T beta2, FBP_T epsilon, double step,
                                                unsigned char *named, ptrdiff_t row_length)
{
    ptrdiff_t span = named ? row_length : n;
    if (n <= 0 || span <= 0)
        return;
    switch (kind) {
    case FBP_SGD:
        FBP_RULE_LOOP(params[i] -= learning_rate * g;)
        break;
    case FBP_MOMENTUM:   /* v <- mu v + g;  p <- p - lr (g + mu v) (nesterov) or p - lr v */
        FBP_RULE_LOOP(
            FBP_T v = momentum * first[i] + g;
            first[i] = v;
            params[i] -= learning_rate * (nesterov ? g + momentum * v : v);
        )
        break;
    case FBP_ADAM: {
        /* bias-corrected moments; p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).  A sparse
           step calls this once per named row of W1, with the same step: the two
           corrections (two pow calls) are kept per thread for the last arguments
           (fbp_adam_kept). */
        double made[FBP_ADAM_KEPT], *kept = fbp_adam_kept();
        if (kept == NULL) {
            kept = made;
            kept[0] = -1;
        }
        if (step != kept[0] || learning_rate != kept[1] || beta1 != kept[2] || beta2 != kept[3]) {
            kept[4] = learning_rate / (1.0 - pow((double)beta1, step));
            /* times 1 / sqrt(bc2) rather than over sqrt(bc2): one division an element, not two */
            kept[5] = 1.0 / sqrt(1.0 - pow((double)beta2, step));
            kept[0] = step, kept[1] = learning_rate, kept[2] = beta1, kept[3] = beta2;
        }
        FBP_T step_size = (FBP_T)kept[4], inverse_root_correction = (FBP_T)kept[5];
        FBP_RULE_LOOP(
            FBP_T m = beta1 * first[i] + (1 - beta1) * g;
            FBP_T v = beta2 * second[i] + (1 - beta2) * g * g;
            first[i] = m;
            second[i] = v;
            params[i] -= step_size * m / (FBP_MATH_SQRT(v) * inverse_root_correction + epsilon);
        )
        break;
    }
    case FBP_RMSPROP:    /* v <- alpha v + (1 - alpha) g^2;  p <- p - lr g / (sqrt(v) + eps) */
        FBP_RULE_LOOP(
            FBP_T v = beta2 * second[i] + (1 - beta2) * g * g;
            second[i] = v;
            params[i] -= learning_rate * g / (FBP_MATH_SQRT(v) + epsilon);
        )
        break;
    case FBP_ADAGRAD:    /* s <- s + g^2;  p <- p - lr g / (sqrt(s) + eps) */
        FBP_RULE_LOOP(
            FBP_T s = second[i] + g * g;
            second[i] = s;
            params[i] -= learning_rate * g / (FBP_MATH_SQRT(s) + epsilon);
        )
        break;
    }
}
#undef FBP_RULE_LOOP

/* A row of W1 and its state after k steps without a gradient under a linear lazy rule
   (fastbp/_core.pyx, lazy_catch_up, which takes the map's k-th power a..e in double):
   (p, u) -> (a p + b u, c p + d u) with the velocity u, or p -> a p without one; the
   scaled moment o -> e o where there is one.  In double, rounded once to FBP_T; at the
   baseline's SSE2 width the conversions made this 18% of S1's momentum epoch. */
static void FBP_LEVEL_NAME(fbp_linear_catch_up)(
    FBP_T *restrict weights, FBP_T *restrict velocity, FBP_T *restrict scaled, ptrdiff_t n,
    double a, double b, double c, double d, double e)
{
    if (velocity) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const double p = weights[i], u = velocity[i];
            weights[i] = (FBP_T)(a * p + b * u);
            velocity[i] = (FBP_T)(c * p + d * u);
        }
    } else if (a != 1) {
        for (ptrdiff_t i = 0; i < n; i++)
            weights[i] = (FBP_T)(a * weights[i]);
    }
    if (scaled)
        for (ptrdiff_t i = 0; i < n; i++)
            scaled[i] = (FBP_T)(e * scaled[i]);
}

/* Adam on n weights (a row of W1 under sparse input) after k steps in which no batch named
   them, in one go: the derivation is at LazyAdam in fastbp/_core.pyx.  sums: the series'
   coefficients C_0 .. C_(terms - 1) of these k steps (terms: the dtype's
   FBP_ADAM_TERMS_*); step_sizes[s] and roots[s], s = 1..k: lr_s and r_s of each step;
   shrink: one step's decoupled decay (1 without); decays: shrink^k, beta1^k and beta2^k
   (kept per k by the caller: three pow calls a row were 2% of S1's Adam epoch);
   widest: eps times the largest b_s; unit: the series is in powers of -unit / sqrt(v)
   (eps 2^E: the coefficients are C_q / 2^(E q)); middle (or NULL): D / eps and the second series'
   M_0 .. M_(terms - 1), with y = center - sqrt(v) / D.
   Up to FBP_ADAM_DIRECT_STEPS steps, the weights step one step at a time with the dense
   rule's arithmetic (that costs less than the series).  Past that, every weight takes the
   series, in FBP_T, to as many terms as the block's largest eps b_s / sqrt(v) needs for a
   quarter of FBP_T's rounding of the step; a weight with m = 0 takes no step
   (0 / (sqrt(v) + eps)); a weight whose eps b_s / sqrt(v) can exceed `limit` (v near 0 next
   to eps, where even all the terms would be off) is left as it was; such weights of a block
   are gathered, take the second series where |y| < limit (to the terms the largest such
   |y| needs, two bits more: its rest is bounded less tightly), and otherwise step one step
   at a time together.  Every loop over a block's weights vectorises. */
static void FBP_LEVEL_NAME(fbp_adam_catch_up)(
    FBP_T *params, FBP_T *first, FBP_T *second, ptrdiff_t n, const double *sums,
    const double *step_sizes, const double *roots, ptrdiff_t k, double shrink,
    double beta1, double beta2, double epsilon, const double *decays, double widest,
    double unit, double limit, const double *middle, double center)
{
    if (k <= FBP_ADAM_DIRECT_STEPS) {
        FBP_NAME(fbp_adam_steps)(params, first, second, n, step_sizes, roots, k, shrink, beta1,
                                 beta2, epsilon);
        return;
    }
    /* the series' coefficients, each at most C_0 (unless a_s overflows: beta1 well above
       sqrt(beta2)); any not finite in FBP_T with room, and no weight takes the series */
    const FBP_T eps = (FBP_T)unit;
    const double room = (sizeof(FBP_T) == sizeof(float) ? FLT_MAX : DBL_MAX) / 4;
    FBP_T coefficient[FBP_ADAM_TERMS];
    int representable = 1;
    for (int q = 0; q < (int)FBP_ADAM_TERMS_T; q++) {
        representable &= isfinite(sums[q]) && fabs(sums[q]) < room;
        coefficient[q] = representable ? (FBP_T)sums[q] : 0;
    }
    const FBP_T shrink_k = (FBP_T)decays[0];
    const FBP_T decay1 = (FBP_T)decays[1], decay2 = (FBP_T)decays[2];
    const FBP_T far = (FBP_T)widest, near = representable ? (FBP_T)limit : 0;
    /* the second series, made ready when a block first has weights the first leaves
       (few do: 5% of S1's blocks) */
    FBP_T around[FBP_ADAM_TERMS], y_center = (FBP_T)center, y_scale = 0;
    int second_series = -1;
    enum { BLOCK = 256 };
    int later[BLOCK];       /* stepped one by one below (an int, as wide as a float: the
                               loop that sets it vectorises at the floats' full width) */
    FBP_T inverse[BLOCK], x[BLOCK], series[BLOCK];
    for (ptrdiff_t lo = 0; lo < n; lo += BLOCK) {
        const ptrdiff_t size = n - lo < BLOCK ? n - lo : BLOCK;
        FBP_T *weights = params + lo, *moment1 = first + lo, *moment2 = second + lo;
        FBP_T largest = 0;                                 /* eps b_s / sqrt(v) of the series */
        FBP_PRAGMA_SIMD(reduction(max:largest))
        for (ptrdiff_t i = 0; i < size; i++) {
            inverse[i] = (FBP_T)1 / FBP_MATH_SQRT(moment2[i]);   /* inf where v = 0 */
            x[i] = -eps * inverse[i];
            FBP_T y = far * inverse[i];
            largest = moment1[i] != 0 && y < near && y > largest ? y : largest;
        }
        const int terms = FBP_NAME(fbp_series_terms)(largest, 0);
        for (ptrdiff_t i = 0; i < size; i++)
            series[i] = coefficient[terms - 1];
        /* Horner's rule a term at a time over the block (a loop over the weights with the
           terms inside would not vectorise) */
        for (int q = terms - 2; q >= 0; q--)
            for (ptrdiff_t i = 0; i < size; i++)
                series[i] = series[i] * x[i] + coefficient[q];
        int step_by_step = 0;
        FBP_PRAGMA_SIMD(reduction(|:step_by_step))
        for (ptrdiff_t i = 0; i < size; i++) {
            FBP_T p = weights[i], m = moment1[i], v = moment2[i];
            int moving = m != 0, exact = far * inverse[i] < near, left = moving & !exact;
            later[i] = left;
            step_by_step |= left;
            FBP_T step = moving & exact ? m * inverse[i] * series[i] : 0;
            weights[i] = left ? p : shrink_k * p - step;
            moment1[i] = left ? m : m * decay1;
            moment2[i] = left ? v : v * decay2;
        }
        if (!step_by_step)
            continue;
        if (second_series < 0)
            second_series = FBP_NAME(fbp_adam_second_series)(middle, epsilon, around, &y_scale);
        /* the weights left, gathered */
        FBP_T p[BLOCK], m[BLOCK], v[BLOCK];
        ptrdiff_t index[BLOCK], count = 0;
        for (ptrdiff_t i = 0; i < size; i++)
            if (later[i]) {
                index[count] = i;
                p[count] = weights[i];
                m[count] = moment1[i];
                v[count] = moment2[i];
                count++;
            }
        if (second_series) {
            /* x: their y = center - sqrt(v) / D; series: the second series at y */
            FBP_T reach = -1;       /* the largest |y| the series takes; -1: none */
            FBP_PRAGMA_SIMD(reduction(max:reach))
            for (ptrdiff_t j = 0; j < count; j++) {
                x[j] = y_center - FBP_MATH_SQRT(v[j]) * y_scale;
                const FBP_T distance = FBP_MATH_ABS(x[j]);
                reach = distance < near && distance > reach ? distance : reach;
            }
            if (reach >= 0) {
                const int terms = FBP_NAME(fbp_series_terms)(reach, 2);
                for (ptrdiff_t j = 0; j < count; j++)
                    series[j] = around[terms - 1];
                for (int q = terms - 2; q >= 0; q--)
                    for (ptrdiff_t j = 0; j < count; j++)
                        series[j] = series[j] * x[j] + around[q];
                ptrdiff_t kept = 0;     /* the rest, moved to the front for the steps below */
                for (ptrdiff_t j = 0; j < count; j++) {
                    if (FBP_MATH_ABS(x[j]) < near) {
                        weights[index[j]] = shrink_k * p[j] - m[j] * series[j];
                        moment1[index[j]] = m[j] * decay1;
                        moment2[index[j]] = v[j] * decay2;
                    } else {
                        index[kept] = index[j];
                        p[kept] = p[j];
                        m[kept] = m[j];
                        v[kept] = v[j];
                        kept++;
                    }
                }
                count = kept;
            }
        }
        /* the weights neither series takes, stepped together */
        FBP_NAME(fbp_adam_steps)(p, m, v, count, step_sizes, roots, k, shrink, beta1, beta2,
                                 epsilon);
        for (ptrdiff_t j = 0; j < count; j++) {
            weights[index[j]] = p[j];
            moment1[index[j]] = m[j];
            moment2[index[j]] = v[j];
        }
    }
}

/* out[i, :] = sum over row i's stored values of data[k] * W[indices[k], :] (W: n_cols x
   n_out): the first layer's product for a sparse batch, nonzeros x n_out multiply-adds,
   reading only the rows of W the batch names, those of row i + 1 asked for (their first
   lines: FBP_PREFETCH_HEAD_BYTES) while row i's are summed. */
static ptrdiff_t FBP_LEVEL_NAME(fbp_sparse_product)(FBP_T *out, const FBP_T *data,
        const ptrdiff_t *indices, const ptrdiff_t *indptr, ptrdiff_t n_rows, ptrdiff_t n_cols,
        ptrdiff_t nnz, const ptrdiff_t *rows, ptrdiff_t first, ptrdiff_t m, const FBP_T *W,
        ptrdiff_t n_out)
{
    for (ptrdiff_t i = 0; i < m; i++) {
        ptrdiff_t begin, end;
        FBP_NAME(fbp_prefetch_csr_ahead)(data, indices, indptr, n_rows, nnz, rows, first, i, m);
        if (i + 1 < m && FBP_NAME(fbp_csr_range)(indptr, n_rows, nnz,
                                                 rows ? rows[i + 1] : first + i + 1,
                                                 &begin, &end))
            FBP_NAME(fbp_prefetch_rows)(W, indices + begin, end - begin, n_out, n_cols,
                                        FBP_PREFETCH_HEAD_BYTES);
        if (!FBP_NAME(fbp_csr_range)(indptr, n_rows, nnz, rows ? rows[i] : first + i,
                                     &begin, &end))
            return i;
        FBP_T *restrict o = out + i * n_out;
        memset(o, 0, (size_t)n_out * sizeof(FBP_T));
        for (ptrdiff_t k = begin; k < end; k++) {
            ptrdiff_t column = indices[k];
            if ((size_t)column >= (size_t)n_cols)
                return i;
            const FBP_T v = data[k];
            const FBP_T *restrict w = W + column * n_out;
            for (ptrdiff_t j = 0; j < n_out; j++)
                o[j] += v * w[j];
        }
    }
    return -1;
}

/* One row of the first layer's weight gradient for a sparse batch, for a rule that steps
   each row the batch names right away (the lazy rules, _core.pyx sparse_weight_update):
   out = the sum over k of values[k] * delta[positions[k], :], where values are alpha times
   the batch's stored values in that row's column and positions their batch rows, in batch
   order: the sums fbp_sparse_scatter adds into a whole gradient buffer, in the same order,
   with no such buffer. */
static void FBP_LEVEL_NAME(fbp_sparse_row_gradient)(FBP_T *out, const FBP_T *values,
        const ptrdiff_t *positions, ptrdiff_t count, const FBP_T *delta, ptrdiff_t n_out)
{
    FBP_T *restrict o = out;
    memset(o, 0, (size_t)n_out * sizeof(FBP_T));
    for (ptrdiff_t k = 0; k < count; k++) {
        const FBP_T v = values[k];
        const FBP_T *restrict d = delta + positions[k] * n_out;
        for (ptrdiff_t j = 0; j < n_out; j++)
            o[j] += v * d[j];
    }
}

/* G[indices[k], :] += alpha * data[k] * delta[i, :] over row i's stored values: the first
   layer's weight gradient (alpha X^T delta) for a sparse batch, touching only the rows of
   G (n_cols x n_out) the batch names; named (NULL, or a flag per row of G): each of those
   rows' flag set to 1, for fbp_optimizer_step. */
static ptrdiff_t FBP_LEVEL_NAME(fbp_sparse_scatter)(FBP_T *G, const FBP_T *data,
        const ptrdiff_t *indices, const ptrdiff_t *indptr, ptrdiff_t n_rows, ptrdiff_t n_cols,
        ptrdiff_t nnz, const ptrdiff_t *rows, ptrdiff_t first, ptrdiff_t m, const FBP_T *delta,
        ptrdiff_t n_out, FBP_T alpha, unsigned char *named)
{
    for (ptrdiff_t i = 0; i < m; i++) {
        ptrdiff_t begin, end;
        if (!FBP_NAME(fbp_csr_range)(indptr, n_rows, nnz, rows ? rows[i] : first + i,
                                     &begin, &end))
            return i;
        const FBP_T *restrict d = delta + i * n_out;
        for (ptrdiff_t k = begin; k < end; k++) {
            ptrdiff_t column = indices[k];
            if ((size_t)column >= (size_t)n_cols)
                return i;
            if (named)
                named[column] = 1;
            const FBP_T v = alpha * data[k];
            FBP_T *restrict g = G + column * n_out;
            for (ptrdiff_t j = 0; j < n_out; j++)
                g[j] += v * d[j];
        }
    }
    return -1;
}
