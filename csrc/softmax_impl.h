/* fbp_softmax_rows's blocks of FBP_SOFTMAX_ROWS rows for one element type (FBP_T, FBP_NAME)
 * and one vector size (FBP_SM_BYTES), named by FBP_SM and compiled for FBP_SM_TARGET:
 * included by softmax.h, which says how they work. */

#define FBP_SM_LANES ((int)(FBP_SM_BYTES / sizeof(FBP_T)))
/* the vectors that hold one column of a block: its FBP_SOFTMAX_ROWS rows */
#define FBP_SM_STACK (FBP_SOFTMAX_ROWS / FBP_SM_LANES)
/* Blocks of fewer columns are read and written element by element: a tile's transposes
   take lanes x log2(lanes) shuffles (64 for 16 lanes) whatever its columns, a column
   element by element 2 x FBP_SOFTMAX_ROWS moves.  A 16-row block with targets and delta
   (a C harness, best of 20 x 200,000 calls, on the Xeon of docs/performance.md), element
   by element against by tiles: 4 columns 180 against 188 ns (32-byte vectors 200 against
   206), 5 columns 203-209 against 204-214 (221-226 against 225), 6 columns 226-230
   against 211-242 (243 against 230-258), 7 columns 249-256 against 216-218 (264-276
   against 239-243). */
#define FBP_SM_TILE_COLUMNS 5

typedef FBP_T FBP_SM(fbp_sm_vector) __attribute__((vector_size(FBP_SM_BYTES)));
typedef FBP_T FBP_SM(fbp_sm_unaligned)
    __attribute__((vector_size(FBP_SM_BYTES), aligned(sizeof(FBP_T)), may_alias));
typedef FBP_BITS FBP_SM(fbp_sm_bits) __attribute__((vector_size(FBP_SM_BYTES)));

/* The lanes a stage of the transpose takes from two rows x, y (lane l of y is lanes + l):
   in the rows whose bit h is clear (high 0) the first h of every 2h lanes stay and the
   next h come from y's first h; in the others (high 1), x's second h, then y's.  Tables
   of 16 lanes, constants the compiler folds into the shuffles, the first `lanes` used. */
#define FBP_SM_LANE(h, high, l) \
    ((high) ? (((l) & (h)) ? FBP_SM_LANES + (l) : (l) + (h)) \
            : (((l) & (h)) ? FBP_SM_LANES + (l) - (h) : (l)))
#define FBP_SM_LANE_TABLE(h, high) { \
    FBP_SM_LANE(h, high, 0), FBP_SM_LANE(h, high, 1), FBP_SM_LANE(h, high, 2), \
    FBP_SM_LANE(h, high, 3), FBP_SM_LANE(h, high, 4), FBP_SM_LANE(h, high, 5), \
    FBP_SM_LANE(h, high, 6), FBP_SM_LANE(h, high, 7), FBP_SM_LANE(h, high, 8), \
    FBP_SM_LANE(h, high, 9), FBP_SM_LANE(h, high, 10), FBP_SM_LANE(h, high, 11), \
    FBP_SM_LANE(h, high, 12), FBP_SM_LANE(h, high, 13), FBP_SM_LANE(h, high, 14), \
    FBP_SM_LANE(h, high, 15) }
static const FBP_BITS FBP_SM(fbp_sm_stage_lanes)[4][2][16] = {   /* h = 8, 4, 2, 1 */
    {FBP_SM_LANE_TABLE(8, 0), FBP_SM_LANE_TABLE(8, 1)},
    {FBP_SM_LANE_TABLE(4, 0), FBP_SM_LANE_TABLE(4, 1)},
    {FBP_SM_LANE_TABLE(2, 0), FBP_SM_LANE_TABLE(2, 1)},
    {FBP_SM_LANE_TABLE(1, 0), FBP_SM_LANE_TABLE(1, 1)}};
#undef FBP_SM_LANE_TABLE
#undef FBP_SM_LANE

/* One stage of the transpose below: h = 8 >> stage. */
static inline __attribute__((always_inline)) void FBP_SM(fbp_sm_stage)(
    FBP_SM(fbp_sm_vector) *a, const int stage)
{
    typedef FBP_BITS unaligned_bits
        __attribute__((vector_size(FBP_SM_BYTES), aligned(sizeof(FBP_T)), may_alias));
    const int h = 8 >> stage;
    const FBP_SM(fbp_sm_bits) low =
        *(const unaligned_bits *)FBP_SM(fbp_sm_stage_lanes)[stage][0];
    const FBP_SM(fbp_sm_bits) high =
        *(const unaligned_bits *)FBP_SM(fbp_sm_stage_lanes)[stage][1];
#pragma GCC unroll 16
    for (int i = 0; i < FBP_SM_LANES; i++)
        if (!(i & h)) {
            const FBP_SM(fbp_sm_vector) x = a[i], y = a[i + h];
            a[i] = __builtin_shuffle(x, y, low);
            a[i + h] = __builtin_shuffle(x, y, high);
        }
}

/* a[0..lanes-1], the rows of a square tile, become its columns: each stage swaps the two
   off-diagonal h x h blocks of every 2h x 2h block, for h = lanes / 2, ..., 1. */
static inline __attribute__((always_inline)) void FBP_SM(fbp_sm_transpose)(
    FBP_SM(fbp_sm_vector) *a)
{
    if (FBP_SM_LANES > 8)
        FBP_SM(fbp_sm_stage)(a, 0);
    if (FBP_SM_LANES > 4)
        FBP_SM(fbp_sm_stage)(a, 1);
    FBP_SM(fbp_sm_stage)(a, 2);
    FBP_SM(fbp_sm_stage)(a, 3);
}

/* The block's values, a whole number of vectors (FBP_SOFTMAX_ROWS x n_cols), copied from
   `from` to `to`; every tile reads and writes the copy, where a row's vector that passes
   the block's end stays inside (the copy's last vector is 0 beyond). */
static inline __attribute__((always_inline)) void FBP_SM(fbp_sm_copy)(
    FBP_T *to, const FBP_T *from, ptrdiff_t n_cols)
{
    for (ptrdiff_t k = 0; k < FBP_SOFTMAX_ROWS * n_cols; k += FBP_SM_LANES)
        *(FBP_SM(fbp_sm_unaligned) *)(to + k) = *(const FBP_SM(fbp_sm_unaligned) *)(from + k);
}

/* One block of FBP_SOFTMAX_ROWS rows of n_cols <= FBP_SOFTMAX_COLUMNS: fbp_softmax_rows's
   arguments for those rows (target, row_weights and delta from the block's first row, or
   NULL), adding its loss terms to *total in row order. */
FBP_SM_TARGET static void FBP_SM(fbp_softmax_block)(
    FBP_T *block, const FBP_T *bias, ptrdiff_t n_cols, const FBP_T *target,
    const FBP_T *row_weights, FBP_T *delta, FBP_T scale, double *total)
{
    typedef FBP_SM(fbp_sm_vector) vector;
    typedef FBP_SM(fbp_sm_bits) bits;
    typedef FBP_SM(fbp_sm_unaligned) unaligned;
    enum { LANES = FBP_SM_LANES, STACK = FBP_SM_STACK,
           MAX_TILES = FBP_SOFTMAX_COLUMNS / FBP_SM_LANES };
    vector t[FBP_SOFTMAX_COLUMNS][STACK], u[FBP_SOFTMAX_COLUMNS][STACK];
    const int tiles = (int)((n_cols + LANES - 1) / LANES);
    /* the rows as they lie, a vector of zeros past their end: z, then the probabilities */
    FBP_T rows[FBP_SOFTMAX_ROWS * FBP_SOFTMAX_COLUMNS + LANES];
    FBP_T target_rows[FBP_SOFTMAX_ROWS * FBP_SOFTMAX_COLUMNS + LANES];
    FBP_T delta_rows[FBP_SOFTMAX_ROWS * FBP_SOFTMAX_COLUMNS + LANES];
    const ptrdiff_t end = FBP_SOFTMAX_ROWS * n_cols;
    const int by_tiles = n_cols >= FBP_SM_TILE_COLUMNS;
    if (n_cols < 1)   /* (never: said so the compiler knows column 0 is written) */
        return;
    if (!by_tiles)
        for (ptrdiff_t j = 0; j < n_cols; j++)
            for (int r = 0; r < FBP_SOFTMAX_ROWS; r++) {
                t[j][r / LANES][r % LANES] = block[r * n_cols + j] + bias[j];
                if (target)
                    u[j][r / LANES][r % LANES] = target[r * n_cols + j];
            }
    else {
        FBP_SM(fbp_sm_copy)(rows, block, n_cols);
        *(unaligned *)(rows + end) = (vector){0};
        if (target) {
            FBP_SM(fbp_sm_copy)(target_rows, target, n_cols);
            *(unaligned *)(target_rows + end) = (vector){0};
        }
        for (int s = 0; s < STACK; s++)   /* rows s LANES .. (s + 1) LANES - 1, by tiles */
            for (int c = 0; c < tiles; c++) {
                vector a[LANES], b[LANES] = {{0}};   /* b: the targets, when given */
                for (int i = 0; i < LANES; i++) {
                    const ptrdiff_t at = (s * LANES + i) * n_cols + c * LANES;
                    a[i] = *(const unaligned *)(rows + at);
                    if (target)
                        b[i] = *(const unaligned *)(target_rows + at);
                }
                FBP_SM(fbp_sm_transpose)(a);
                if (target)
                    FBP_SM(fbp_sm_transpose)(b);
                for (int l = 0; l < LANES && c * LANES + l < n_cols; l++) {
                    t[c * LANES + l][s] = a[l] + bias[c * LANES + l];
                    if (target)
                        u[c * LANES + l][s] = b[l];
                }
            }
    }
    vector top[STACK], sum_exp[STACK], sum_y[STACK], dot_yz[STACK], weight[STACK];
    for (int s = 0; s < STACK; s++) {
        top[s] = t[0][s];
        sum_exp[s] = sum_y[s] = dot_yz[s] = (vector){0};
        if (row_weights)
            weight[s] = *(const unaligned *)(row_weights + s * LANES);
        else
            weight[s] = (vector){0} + 1;
    }
    for (ptrdiff_t j = 0; j < n_cols; j++)
        for (int s = 0; s < STACK; s++) {   /* top = t > top ? t : top, as row by row */
            const bits above = (bits)(t[j][s] > top[s]);
            top[s] = (vector)((above & (bits)t[j][s]) | (~above & (bits)top[s]));
        }
    for (ptrdiff_t j = 0; j < n_cols; j++)
        for (int s = 0; s < STACK; s++)
            t[j][s] -= top[s];
    if (target) {
        /* each row's dot with its targets in column order, every step one fused
           multiply-add (as row by row), over the block's lanes */
        FBP_T *dots = (FBP_T *)dot_yz;
        for (ptrdiff_t j = 0; j < n_cols; j++) {
            const FBP_T *targets = (const FBP_T *)u[j], *shifted = (const FBP_T *)t[j];
            for (int r = 0; r < FBP_SOFTMAX_ROWS; r++)
                dots[r] = FBP_MATH_FMA(targets[r], shifted[r], dots[r]);
            for (int s = 0; s < STACK; s++)
                sum_y[s] += u[j][s];
        }
    }
    /* the exps over the columns' lanes in one loop (GCC's vectors alias their elements) */
    FBP_T *lanes = (FBP_T *)t;
    for (ptrdiff_t i = 0; i < n_cols * FBP_SOFTMAX_ROWS; i++)
        lanes[i] = FBP_MATH_EXP(lanes[i]);
    for (ptrdiff_t j = 0; j < n_cols; j++)
        for (int s = 0; s < STACK; s++)
            sum_exp[s] += t[j][s];
    if (target) {
        vector logs[STACK];   /* of the sums, in one loop over their lanes */
        FBP_T *log_lanes = (FBP_T *)logs;
        const FBP_T *sum_lanes = (const FBP_T *)sum_exp;
        for (int r = 0; r < FBP_SOFTMAX_ROWS; r++)
            log_lanes[r] = FBP_MATH_LOG_INLINE(sum_lanes[r]);
        double sum = *total;
        for (int s = 0; s < STACK; s++)
            for (int l = 0; l < LANES; l++) {
                const FBP_T w = weight[s][l];
                sum -= w * (double)dot_yz[s][l];
                sum += w * (double)(sum_y[s][l] * logs[s][l]);
            }
        *total = sum;
    }
    for (int s = 0; s < STACK; s++) {
        sum_exp[s] = 1 / sum_exp[s];
        weight[s] = scale * weight[s];
    }
    const int with_delta = target && delta;
    if (!by_tiles) {   /* the probabilities in t, delta in u, then element by element */
        for (ptrdiff_t j = 0; j < n_cols; j++)
            for (int s = 0; s < STACK; s++) {
                t[j][s] *= sum_exp[s];
                if (with_delta)
                    u[j][s] = weight[s] * (t[j][s] - u[j][s]);
            }
        for (int r = 0; r < FBP_SOFTMAX_ROWS; r++)
            for (ptrdiff_t j = 0; j < n_cols; j++) {
                block[r * n_cols + j] = t[j][r / LANES][r % LANES];
                if (with_delta)
                    delta[r * n_cols + j] = u[j][r / LANES][r % LANES];
            }
        return;
    }
    for (int s = 0; s < STACK; s++) {   /* back to rows, a row's tiles in order */
        vector out[MAX_TILES][LANES], out_delta[MAX_TILES][LANES];
        for (int c = 0; c < tiles; c++) {
            for (int l = 0; l < LANES; l++) {
                const ptrdiff_t j = c * LANES + l;
                out[c][l] = j < n_cols ? t[j][s] * sum_exp[s] : (vector){0};
                if (with_delta)
                    out_delta[c][l] = j < n_cols ? weight[s] * (out[c][l] - u[j][s])
                                                 : (vector){0};
            }
            FBP_SM(fbp_sm_transpose)(out[c]);
            if (with_delta)
                FBP_SM(fbp_sm_transpose)(out_delta[c]);
        }
        for (int i = 0; i < LANES; i++)
            for (int c = 0; c < tiles; c++) {   /* a row's lanes past its end: the next's */
                const ptrdiff_t at = (s * LANES + i) * n_cols + c * LANES;
                *(unaligned *)(rows + at) = out[c][i];
                if (with_delta)
                    *(unaligned *)(delta_rows + at) = out_delta[c][i];
            }
    }
    FBP_SM(fbp_sm_copy)(block, rows, n_cols);
    if (with_delta)
        FBP_SM(fbp_sm_copy)(delta, delta_rows, n_cols);
}

#undef FBP_SM_LANES
#undef FBP_SM_STACK
#undef FBP_SM_TILE_COLUMNS
