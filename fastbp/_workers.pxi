# Row-split training steps (issue 11): train_epoch with n_workers > 1.
#
# The epoch call starts n_workers - 1 threads (pthreads, once per call) and the calling
# thread is worker 0. Worker k owns rows [k C, (k + 1) C) of each batch, C =
# ceil(batch_size / T), in the fit's own workspace (a view of the fit's plan shifted by
# k C rows, with the forward chunks of a plan of C rows: worker_plan). Each step runs in
# three phases, with a barrier after B and after C:
#   A. worker 0 alone gathers the batch's row weights (their sum scales every row's
#      gradient) and draws the whole batch's dropout masks, in the order the serial path
#      draws them: for the first batch before the epoch's first barrier, for each next
#      one at the end of its phase C of the step before (phase C reads neither the masks
#      nor the row weights; each worker keeps the step's batch size, inputs and weight sum
#      from before the barrier), so it costs no barrier of its own;
#   B. worker k gathers its rows of the inputs and targets (an index out of range found
#      by any worker stops them all after the barrier), runs forward on its rows, then
#      the output delta and every hidden layer's delta backwards (all with the weights of
#      before the step), each layer's delta kept for the whole batch in worker_work;
#   C. worker k owns rows [k n / T, (k + 1) n / T) of each W (n: its rows) and the bias of
#      every T-th layer: it makes that part's weight gradient from all the batch's rows in
#      the serial step's GEMM (A^T D, into the update's target as the serial step does:
#      the parameters for plain SGD, the scaled velocity for momentum, else the gradient
#      buffer) and applies the optimizer's rule to it while it is in cache. With
#      clipping, the norm comes from the parts' sums of squares, summed in worker order,
#      after one more barrier.
# No worker writes another's part and every sum runs in a fixed order, so for a fixed
# n_workers the results do not depend on timing (bit-identical reruns), and they agree
# with one worker to rounding. A worker writes only its part of W, once: no per-worker
# gradient, no reduction pass. BLAS runs on one thread in each worker (the trainer sets
# it). Nothing is allocated per step.

from libc.stdlib cimport calloc

cdef extern from "workers.h" nogil:
    ctypedef struct fbp_barrier:
        pass
    ctypedef struct pthread_t:
        pass
    void fbp_barrier_init(fbp_barrier* barrier, int n)
    void fbp_barrier_wait(fbp_barrier* barrier)
    int fbp_barrier_wait_spinning(fbp_barrier* barrier, double spin_seconds)
    int fbp_start_workers(pthread_t* threads, int n, void* (*entry)(void*) noexcept nogil,
                          char* contexts, size_t context_size)
    void fbp_join_workers(pthread_t* threads, int n)
    void fbp_abandon_workers(fbp_barrier* barrier, pthread_t* threads, int started)
    Py_ssize_t fbp_claim_chunk(Py_ssize_t* next)
    double fbp_seconds()
    int fbp_affinity_count()
    ctypedef struct fbp_pool:
        pass
    void fbp_pool_for_this_process(fbp_pool* pool)
    int fbp_pool_run(fbp_pool* pool, void (*run)(void*, int) noexcept nogil, void* job,
                     int workers)
    void fbp_timing_mark(int k, int phase)
    void fbp_timing_report(int n, long steps)
    void fbp_dropout_masks_f32(float* mask, Py_ssize_t n, double rate, uint64_t* random_state)
    void fbp_dropout_masks_f64(double* mask, Py_ssize_t n, double rate, uint64_t* random_state)
    void fbp_apply_mask_f32(float* out, const float* a, const float* mask, Py_ssize_t n)
    void fbp_apply_mask_f64(double* out, const double* a, const double* mask, Py_ssize_t n)


# A thread waiting at a barrier between two phases of a step spins up to this long before
# it sleeps on the futex (the row-split workers less: wait_at_barrier): waking a sleeping
# thread takes tens of microseconds, more on a virtual machine, and when the phases of a
# split step are uneven by more than a short spin (one core slowed by other work), the two
# threads fell into sleeping in turn, each waking the other late at every barrier: on this
# project's 2-core KVM guest, W1's row-split step waited 46 us a step on each worker (the
# median over 21 epochs, 16 of them in that state) with a spin of 500 pauses (a few
# microseconds), against 6 us with a 1 ms spin (1 of 21), under load from other work. A
# barrier left waiting longer (the epoch's end, a partner that lost its core) still sleeps.
cdef double WAIT_SPIN_SECONDS = 0.001


cdef inline double wait_spin_seconds(int n_threads) noexcept nogil:
    """WAIT_SPIN_SECONDS where n_threads fit the CPUs this process may run on, else 0 (a
    short spin only): a spinning thread would hold the core of the one it waits for."""
    cdef int cpus = fbp_affinity_count()
    return WAIT_SPIN_SECONDS if cpus == 0 or n_threads <= cpus else 0


def barrier_spin_seconds(int n_threads, seconds=None):
    """How long a thread of n_threads waiting at a barrier spins before it sleeps; with
    `seconds`, WAIT_SPIN_SECONDS is set to it first (for tests and benchmarks)."""
    global WAIT_SPIN_SECONDS
    if seconds is not None:
        WAIT_SPIN_SECONDS = float(seconds)
    return wait_spin_seconds(n_threads)


cdef inline void dropout_masks(floating* mask, Py_ssize_t n, double rate,
                               uint64_t* random_state) noexcept nogil:
    if floating is float:
        fbp_dropout_masks_f32(mask, n, rate, random_state)
    else:
        fbp_dropout_masks_f64(mask, n, rate, random_state)


cdef inline void apply_mask(floating* out, const floating* a, const floating* mask,
                            Py_ssize_t n) noexcept nogil:
    if floating is float:
        fbp_apply_mask_f32(out, a, mask, n)
    else:
        fbp_apply_mask_f64(out, a, mask, n)


cdef struct HiddenLayout:
    # split_hidden's buffers, as offsets into the worker workspace (_hidden_split.pxi)
    Py_ssize_t weights[3], masks[3]     # phase A's row weights and first-layer dropout
                                        # masks, by the step's slot (BatchStep)
    Py_ssize_t zeros        # the output layer's bias there: zeros (b2 is in worker 0's part)
    Py_ssize_t first_worker, per_worker     # worker k's block: first_worker + k per_worker
    # within a worker's block (-1: not needed): its copy of the batch's inputs and targets,
    # its units' outputs (and preactivations, after dropout, delta) for every row of the
    # batch, its partial output product (by parity), its copy of the summed output (and
    # preactivation, delta), and its columns of W1 and of the rule's arrays, packed (n_in x
    # its units; hidden_packed_arrays of them)
    Py_ssize_t x, y, out, pre, dropped, delta, partial[2], z, z_pre, z_delta, columns[4]
    Py_ssize_t size         # the whole


cdef struct BatchStep:   # a step's batch as phase A set it up (split_hidden: by slot)
    const void* weights
    const void* masks
    Py_ssize_t m, start
    double weight_sum
    bint proceed


cdef enum:   # what phase A and the gathers write for a batch (batch_buffer)
    BATCH_X = 0
    BATCH_Y = 1
    BATCH_WEIGHTS = 2
    BATCH_MASKS = 3      # the first layer's dropout masks (split_hidden only)


cdef struct SharedEpoch:
    const PlanData* plan            # the fit's plan: the batch buffers and dropout masks
    const PlanData* worker_plan_data    # the forward chunks of a worker's C rows
    PlanData* views                 # per worker: the fit's plan shifted to its rows
    Py_ssize_t rows_per_worker      # C
    HyperparameterData* hyper
    void* params
    void* work
    void* deltas                    # every layer's delta for T C rows (worker_work; with
                                    # split_hidden, its buffers: HiddenLayout)
    void* first
    void* second
    void* grads                     # the summed gradient (LAYER_STEP, clipping) or NULL
    bint split_inputs               # the first layer's forward product split by its inputs
    void* partials                  # then: workers 1..T-1's partial products (T C rows each)
    bint split_hidden               # the hidden layer split by its units (_hidden_split.pxi)
    HiddenLayout hidden             # then: where its buffers lie in the worker workspace
    int slot                        # then: which of the three batch slots phase A fills
    BatchStep steps[3]              # then: the batches phase A set up, by slot
    const void* X
    const void* Y
    const Py_ssize_t* labels
    const void* row_weights
    const Py_ssize_t* order
    Py_ssize_t n_samples, batch_size   # X's rows (every index read is checked against)
    Py_ssize_t n_rows                  # the rows the epoch trains (order's, or X's)
    bint use_order, use_labels, use_weights, interruptible
    int update, n_workers
    uint64_t random_state
    double normaliser
    fbp_barrier barrier
    double spin_seconds             # at the barrier, before sleeping
    bint flush_subnormals           # each worker's float mode (fbp_float_mode_enter)
    # the step in progress, set by worker 0 in phase A
    const void* x
    const void* y
    const void* weights
    const void* masks               # split_hidden: the first layer's dropout masks
    Py_ssize_t m
    double weight_sum
    bint proceed
    double* losses                  # per worker, phase B
    double* squares                 # per worker, clipping
    Py_ssize_t* bads                # per worker: its gather's bad index (-1: none); phase B
                                    # in [0, T), phase B0 in [T, 2T): a worker may write
                                    # B's while another still reads B0's
    int* faileds                    # per worker: which gather found it (the same places)
    # the epoch's results
    double loss_total, weight_total
    Py_ssize_t start, bad
    int status, failed_gather


cdef struct WorkerArgument:
    SharedEpoch* shared
    int index


cdef inline floating* batch_buffer(SharedEpoch* s, floating* work, int which) noexcept nogil:
    """Where the next batch's inputs, targets, row weights (or, split_hidden, first-layer
    dropout masks) go: the plan's batch buffers; with split_hidden the row weights and
    masks go to s.slot's in the worker workspace (the steps under way read the other two),
    and each worker gathers its own inputs and targets (NULL here)."""
    cdef const PlanData* plan = s.plan
    if s.split_hidden:
        if which == BATCH_WEIGHTS:
            return <floating*>s.deltas + s.hidden.weights[s.slot]
        if which == BATCH_MASKS:
            return <floating*>s.deltas + s.hidden.masks[s.slot]
        return NULL
    if which == BATCH_X:
        return work + plan.batch_x_offset
    if which == BATCH_Y:
        return work + plan.batch_y_offset
    if which == BATCH_WEIGHTS:
        return work + plan.batch_weight_offset
    return NULL


cdef Py_ssize_t gather_weights(SharedEpoch* s, floating* work, Py_ssize_t m) noexcept nogil:
    """Phase A's part of the batch at s.start: where its inputs and targets will be (the
    workspace's batch buffers, or read in place; with split_hidden each worker has its
    own), its row weights and their sum. Returns the batch position of an index out of
    range (and sets s.failed_gather), or -1."""
    cdef const PlanData* plan = s.plan
    cdef Py_ssize_t i, bad, start = s.start
    cdef const floating* row_weights = <const floating*>s.row_weights
    cdef floating* batch_weights = batch_buffer(s, work, BATCH_WEIGHTS)
    cdef const floating* weights
    s.x = <const floating*>batch_buffer(s, work, BATCH_X) if s.use_order \
        else <const floating*>s.X + start * plan.sizes[0]
    s.y = <const floating*>batch_buffer(s, work, BATCH_Y) if s.use_order or s.use_labels \
        else <const floating*>s.Y + start * plan.sizes[plan.n_layers]
    s.masks = batch_buffer(s, work, BATCH_MASKS)
    s.weights = NULL
    s.weight_sum = m
    if s.use_weights:
        if s.use_order:
            bad = fbp_gather(batch_weights, row_weights, s.order + start, m, s.n_samples)
            if bad >= 0:
                s.failed_gather = GATHERED_WEIGHTS
                return bad
            weights = batch_weights
        else:
            weights = row_weights + start
        s.weights = weights
        s.weight_sum = 0
        for i in range(m):
            s.weight_sum += weights[i]
    return -1


cdef Py_ssize_t gather_rows(SharedEpoch* s, floating* x, floating* y, Py_ssize_t batch_start,
                            Py_ssize_t row0, Py_ssize_t row1, int* failed) noexcept nogil:
    """Phase B's part of the gather, by each worker for its rows [row0, row1) of the
    batch at batch_start: the inputs (unless split_inputs: first_partial has them) and
    targets (or one-hot labels) into the step's batch buffers x and y. Returns the batch
    position of an index out of range (and sets *failed), or -1."""
    cdef const PlanData* plan = s.plan
    cdef Py_ssize_t n_in = plan.sizes[0], n_out = plan.sizes[plan.n_layers], bad
    cdef Py_ssize_t start = batch_start + row0, n_samples = s.n_samples, m = row1 - row0
    cdef const Py_ssize_t* rows = s.order + start if s.use_order else NULL
    if s.use_order and not s.split_inputs:
        bad = fbp_gather_rows(x + row0 * n_in, <const floating*>s.X,
                              rows, m, n_in, n_samples)
        if bad >= 0:
            failed[0] = GATHERED_X
            return row0 + bad
    if s.use_labels:
        bad = fbp_one_hot(y + row0 * n_out,
                          s.labels if s.use_order else s.labels + start, rows, m, n_out,
                          n_samples if s.use_order else n_samples - start)
        if bad >= 0:
            failed[0] = GATHERED_LABELS
            return row0 + bad
    elif s.use_order:
        bad = fbp_gather_rows(y + row0 * n_out, <const floating*>s.Y,
                              rows, m, n_out, n_samples)
        if bad >= 0:
            failed[0] = GATHERED_Y
            return row0 + bad
    return -1


cdef inline void owned_inputs(Py_ssize_t n_in, int k, int T, Py_ssize_t* low,
                              Py_ssize_t* high) noexcept nogil:
    """The rows [low, high) of a weight matrix with n_in rows that worker k of T steps
    (update_part), and, split_inputs, the first layer's inputs it multiplies."""
    low[0] = n_in * k // T
    high[0] = n_in * (k + 1) // T


cdef Py_ssize_t first_partial(SharedEpoch* s, floating* params, floating* work, int k,
                              int m, const floating* x, int* failed) noexcept nogil:
    """Phase B0 of split_inputs, worker k: its columns of the batch's inputs (gathered
    here when shuffled) times its rows of W1, for all m rows: worker 0's into the first
    layer's outputs, the others' into the partial products (finish_first adds them up).
    Returns the batch position of an index out of range (and sets *failed), or -1."""
    cdef const PlanData* plan = s.plan
    cdef int T = s.n_workers
    cdef Py_ssize_t n_in = plan.sizes[0], n_out = plan.sizes[1], low, high, bad
    owned_inputs(n_in, k, T, &low, &high)
    if s.use_order:
        bad = fbp_gather_columns(work + plan.batch_x_offset, <const floating*>s.X,
                                 s.order + s.start, m, n_in, low, high - low, s.n_samples)
        if bad >= 0:
            failed[0] = GATHERED_X
            return bad
    cdef floating* out = work + plan.output_offsets[1] if k == 0 else \
        <floating*>s.partials + (k - 1) * s.rows_per_worker * T * n_out
    # the kernel chosen at this product's shape: the worker plan's first forward product,
    # which the workers of a network of more than one layer never run at the worker plan's
    # own shape (_threads.row_workspace)
    nn_product(product_isa(s.worker_plan_data if plan.n_layers > 1 else plan, 1,
                           FORWARD_PRODUCT, params), m, <int>n_out, <int>(high - low),
               x + low, <int>n_in, params + plan.weight_offsets[0] + low * n_out, <int>n_out,
               out, <int>n_out)
    return -1


cdef void finish_first(SharedEpoch* s, floating* out, Py_ssize_t row0, Py_ssize_t rows) noexcept nogil:
    """Phase B of split_inputs: the first layer's product for the batch's rows [row0,
    row0 + rows) (out: worker 0's partial there) = the partials summed in worker order."""
    cdef int T = s.n_workers, j
    cdef Py_ssize_t n_out = s.plan.sizes[1], stride = s.rows_per_worker * T * n_out
    for j in range(1, T):
        fbp_add(out, <const floating*>s.partials + (j - 1) * stride + row0 * n_out,
                rows * n_out)


cdef void next_batch(SharedEpoch* s, floating* work) noexcept nogil:
    """Phase A (worker 0): the next batch whose rows weigh more than 0 (gather_weights),
    and its dropout masks; s.proceed = 0 at the epoch's end, on SIGINT or an index out of
    range."""
    cdef const PlanData* plan = s.plan
    cdef Py_ssize_t m
    cdef int l
    s.proceed = False
    if s.split_hidden:   # the next slot: the steps under way still read the other two
        s.slot = (s.slot + 1) % 3
    while s.start < s.n_rows:
        if s.interruptible and fbp_interrupt_requested:
            s.status = INTERRUPTED
            return
        m = min(s.batch_size, s.n_rows - s.start)
        s.bad = gather_weights(s, work, m)
        if s.bad >= 0:
            return
        if s.weight_sum > 0:   # a batch whose rows all weigh 0 teaches nothing
            s.m = m
            for l in range(1, plan.n_layers):
                if plan.mask_offsets[l] >= 0:
                    dropout_masks(batch_buffer(s, work, BATCH_MASKS) if s.split_hidden
                                  else work + plan.mask_offsets[l], m * plan.sizes[l],
                                  plan.dropout_rates[l - 1], &s.random_state)
            s.proceed = True
            return
        s.start += m


cdef inline Py_ssize_t delta_offset(const PlanData* plan, Py_ssize_t rows, int l) noexcept nogil:
    """Where the delta of layer l (1-based) of `rows` rows starts in the delta store."""
    cdef Py_ssize_t offset = 0
    cdef int i
    for i in range(1, l):
        offset += rows * plan.sizes[i]
    return offset


cdef double worker_deltas(const PlanData* view, const HyperparameterData* hyper,
                          const floating* params, floating* work, floating* deltas,
                          Py_ssize_t delta_rows, Py_ssize_t first_row, const floating* x,
                          const floating* y, const floating* row_weights, int m,
                          floating scale, SharedEpoch* split) noexcept nogil:
    """Phase B on m rows of the batch from first_row (view: the fit's plan shifted to
    them): forward (the first layer's product from phase B0's partials when split is
    given; dropout multiplies by the masks phase A drew for these rows), the
    output layer's loss and delta (`scale` times the gradient of the summed loss terms),
    and every layer's delta backwards into the delta store (delta_rows rows a layer).
    Returns the rows' (weighted) summed loss terms."""
    cdef int L = view.n_layers, l
    cdef Py_ssize_t n_in, n_out
    cdef floating* out
    cdef floating* previous_delta
    for l in range(1, L):
        n_out = view.sizes[l]
        out = work + view.output_offsets[l]
        if l == 1 and split != NULL:
            finish_first(split, out, first_row, m)
        else:
            forward_product(view, params, work, x, m, l, out)
        fbp_bias_activation(out, params + view.bias_offsets[l - 1],
                            workspace(work, view.preactivation_offsets[l]), m, n_out,
                            view.activations[l - 1])
        if view.dropped_offsets[l] >= 0:
            apply_mask(work + view.dropped_offsets[l], out, work + view.mask_offsets[l],
                       <Py_ssize_t>m * n_out)
    out = work + view.output_offsets[L]
    output_logits(view, params, work, x, m, out)
    cdef double loss_sum = fbp_output_layer(
        out, params + view.bias_offsets[L - 1], workspace(work, view.preactivation_offsets[L]),
        y, row_weights,
        deltas + delta_offset(view, delta_rows, L) + first_row * view.sizes[L], m,
        view.sizes[L], view.activations[L - 1], hyper.loss, <floating>hyper.loss_parameter,
        scale)
    if not isfinite(loss_sum):
        return loss_sum
    for l in range(L, 1, -1):   # the delta of layer l - 1, with W_l of before the step
        n_in = view.sizes[l - 1]
        n_out = view.sizes[l]
        previous_delta = deltas + delta_offset(view, delta_rows, l - 1) + first_row * n_in
        if few_rows_here(view, params + view.weight_offsets[l - 1], m, n_in, n_out):
            fbp_few_rows_delta(previous_delta,
                               deltas + delta_offset(view, delta_rows, l) + first_row * n_out,
                               params + view.weight_offsets[l - 1], m, n_in, n_out)
        else:
            nt_product(product_isa(view, l, DELTA_PRODUCT, params), m, <int>n_in, <int>n_out,
                       deltas + delta_offset(view, delta_rows, l) + first_row * n_out,
                       <int>n_out, params + view.weight_offsets[l - 1], <int>n_out,
                       previous_delta, <int>n_in)
        if view.mask_offsets[l - 1] >= 0:
            fbp_multiply(previous_delta, work + view.mask_offsets[l - 1], m * n_in)
        fbp_activation_backward(previous_delta, work + view.output_offsets[l - 1],
                                workspace(work, view.preactivation_offsets[l - 1]), m, n_in,
                                view.activations[l - 2])
    return loss_sum


cdef inline floating* gradient_target(const HyperparameterData* hyper, int update,
                                     floating* params, floating* grads, floating* first,
                                     floating* alpha, floating* weight_beta) noexcept nogil:
    """Where a step's weight-gradient GEMM adds the gradient (see Update), and its alpha and
    (for weights; biases take 1) beta: the parameters themselves for plain SGD (W <- (1 -
    lr wd) W - lr grad, as run_batch folds it), the scaled velocity for momentum, else the
    gradient buffer (alpha and beta 1)."""
    alpha[0] = weight_beta[0] = 1
    if update == FOLDED_SGD:
        alpha[0] = <floating>(-hyper.learning_rate)
        weight_beta[0] = <floating>(1.0 - hyper.learning_rate * hyper.weight_decay)
        return params
    return first if update == FOLDED_MOMENTUM else grads


cdef void update_part(SharedEpoch* s, const HyperparameterData* hyper, floating* params,
                      int k, int l, int m, const floating* x, bint stepping,
                      double* squares) noexcept nogil:
    """Phase C of worker k in weight layer l: the weight gradient of its rows of W_l
    (and of b_l when it owns it) from all the batch's m rows (inputs x), into the
    update's target, and the rule on it (stepping), or (clipping: squares given) the
    gradient alone, its sum of squares added to squares."""
    cdef const PlanData* plan = s.plan
    cdef int T = s.n_workers, update = s.update
    cdef Py_ssize_t n_in = plan.sizes[l - 1], n_out = plan.sizes[l]
    cdef Py_ssize_t low, high
    owned_inputs(n_in, k, T, &low, &high)
    cdef Py_ssize_t w = plan.weight_offsets[l - 1], b = plan.bias_offsets[l - 1]
    cdef floating* first = <floating*>s.first
    cdef floating* second = <floating*>s.second
    cdef floating* delta = <floating*>s.deltas \
        + delta_offset(plan, s.rows_per_worker * T, l)
    cdef const floating* a_in = layer_input(plan, <floating*>s.work, x, l)
    cdef floating alpha, weight_beta, bias_beta = 1
    cdef floating* target = gradient_target(hyper, update, params, <floating*>s.grads, first,
                                            &alpha, &weight_beta)
    cdef bint rule = stepping and update != FOLDED_SGD
    gradient_blocks(hyper, update, rule, product_isa(plan, l, GRADIENT_PRODUCT, params),
                    few_rows_here(plan, params + w, m, n_in, n_out),
                    gradient_block_rows(plan, l, rule), params, target, first, second, w, low,
                    high, n_out, a_in, n_in, delta, m, alpha, weight_beta, squares)
    if (l - 1) % T != k:
        return
    fbp_column_sums(target + b, delta, m, n_out, alpha, bias_beta)
    if rule:
        step_slice(hyper, params, target, first, second, update, b, n_out, False)
    elif squares != NULL:
        squares[0] += fbp_sum_squares(target + b, n_out)


cdef void step_part(SharedEpoch* s, const HyperparameterData* hyper, floating* params,
                    int k, int l, double norm) noexcept nogil:
    """Clipping, after the norm (the whole gradient's): scale worker k's part of layer l's
    gradient (clip_scale) and apply the rule to it."""
    cdef const PlanData* plan = s.plan
    cdef int T = s.n_workers
    cdef Py_ssize_t n_in = plan.sizes[l - 1], n_out = plan.sizes[l]
    cdef Py_ssize_t low, high
    owned_inputs(n_in, k, T, &low, &high)
    cdef Py_ssize_t w = plan.weight_offsets[l - 1] + low * n_out, b = plan.bias_offsets[l - 1]
    cdef floating* grads = <floating*>s.grads
    clip_scale(hyper, norm, grads + w, (high - low) * n_out)
    step_slice(hyper, params, grads, <floating*>s.first, <floating*>s.second, LAYER_STEP, w,
               (high - low) * n_out, True)
    if (l - 1) % T == k:
        clip_scale(hyper, norm, grads + b, n_out)
        step_slice(hyper, params, grads, <floating*>s.first, <floating*>s.second, LAYER_STEP,
                   b, n_out, False)


cdef struct Waiting:
    double began        # when this worker's part of the phase under way began
    int short_waits     # waits still to come with the short spin only
    int penalty         # the short waits after the next wait that sleeps


cdef enum:
    FIRST_PENALTY = 8           # short waits after a long spin that ended asleep, doubling
    LAST_PENALTY = 1024         # up to this while they keep ending so


cdef inline void wait_at_barrier(SharedEpoch* s, Waiting* waiting) noexcept nogil:
    """Waits at the step's barrier. It spins up to twice as long as this worker's part of
    the phase took (at most s.spin_seconds) before it sleeps: the others do as much work,
    so one that is later than that has most likely lost its core. A long spin that still
    ended asleep is what threads of other processes taking the cores look like (more
    threads than cores, which the affinity mask does not show): a spinner would keep its
    partner from a core, so the next waits spin briefly only, FIRST_PENALTY of them, twice
    as many after each such spin up to LAST_PENALTY, one fewer after each long spin that
    met the others in time."""
    cdef double now = fbp_seconds()
    if spins_long(waiting):
        after_long_spin(waiting, fbp_barrier_wait_spinning(
            &s.barrier, min(s.spin_seconds, 2 * (now - waiting.began))))
    else:
        fbp_barrier_wait_spinning(&s.barrier, 0)
    waiting.began = fbp_seconds()


cdef inline bint spins_long(Waiting* waiting) noexcept nogil:
    """Whether the next wait may spin long (else it is one of the brief ones)."""
    if waiting.short_waits > 0:
        waiting.short_waits -= 1
        return False
    return True


cdef inline void after_long_spin(Waiting* waiting, bint slept) noexcept nogil:
    if slept:
        waiting.penalty = min(max(2 * waiting.penalty, <int>FIRST_PENALTY), <int>LAST_PENALTY)
        waiting.short_waits = waiting.penalty
    elif waiting.penalty > 0:
        waiting.penalty -= 1


def barrier_spins(slept):
    """For tests: for waits whose long spins end asleep or not as `slept` says in turn,
    whether each wait spins long (True) or briefly (False), as wait_at_barrier decides."""
    cdef Waiting waiting
    waiting.short_waits, waiting.penalty = 0, 0
    spins, outcomes = [], iter(slept)
    while True:
        if not spins_long(&waiting):
            spins.append(False)
            continue
        outcome = next(outcomes, None)
        if outcome is None:
            return spins
        spins.append(True)
        after_long_spin(&waiting, bool(outcome))


cdef inline bint stopped_by_bad_index(SharedEpoch* s, int k, int phase) noexcept nogil:
    """After a gather's barrier: whether a worker met an index out of range in the gather
    of `phase` (0: B, 1: B0; split_hidden: the step's parity) (worker 0 then records the
    first worker's, as every worker sees it)."""
    cdef int j, first = phase * s.n_workers
    for j in range(first, first + s.n_workers):
        if s.bads[j] >= 0:
            if k == 0:
                s.bad, s.failed_gather = s.bads[j], s.faileds[j]
            return True
    return False


cdef void worker_loop(floating* kind, WorkerArgument* argument) noexcept nogil:
    """One worker's part of the epoch (kind: only selects the element type). Two barriers
    a step: after phase B, and after phase C, during which worker 0 also sets up the next
    batch (phase A: the step reads what phase A writes only before the first barrier);
    split_inputs adds phase B0 (first_partial) and its barrier before phase B."""
    cdef SharedEpoch* s = argument.shared
    if s.split_hidden:
        hidden_loop(kind, argument)
        return
    cdef int k = argument.index, T = s.n_workers, j, l, m
    cdef Py_ssize_t start
    cdef const PlanData* plan = s.plan
    cdef floating* params = <floating*>s.params
    cdef floating* work = <floating*>s.work
    cdef Py_ssize_t C = s.rows_per_worker
    cdef Py_ssize_t n_in = plan.sizes[0], n_out = plan.sizes[plan.n_layers], row0, row1
    # this worker's copy: worker 0 moves s.hyper.step while the others may still read
    cdef HyperparameterData hyper = s.hyper[0]
    cdef double loss_sum, squares, norm, weight_sum
    cdef const floating* weights
    cdef const floating* x
    cdef const floating* y
    fbp_timing_mark(k, -1)
    cdef Waiting waiting
    waiting.short_waits, waiting.penalty = 0, 0     # (began: after the first barrier)
    if k == 0:
        next_batch(s, work)
    fbp_barrier_wait(&s.barrier)     # (the others have nothing to do before it)
    waiting.began = fbp_seconds()
    while s.proceed:
        # the step's batch as phase A left it: worker 0 rewrites these in phase C
        m = <int>s.m
        x, y = <const floating*>s.x, <const floating*>s.y
        weights, weight_sum = <const floating*>s.weights, s.weight_sum
        start = s.start
        fbp_timing_mark(k, 0)
        if s.split_inputs:
            s.bads[T + k] = first_partial(s, params, work, k, m, x, &s.faileds[T + k])
            fbp_timing_mark(k, 7)
            wait_at_barrier(s, &waiting)
            fbp_timing_mark(k, 8)
            if stopped_by_bad_index(s, k, 1):
                return
        row0 = min(k * C, m)
        row1 = min(row0 + C, m)
        s.losses[k] = 0
        s.bads[k] = gather_rows(s, <floating*>x, <floating*>y, start, row0, row1,
                                &s.faileds[k]) if row1 > row0 else -1
        fbp_timing_mark(k, 1)
        if s.bads[k] < 0 and row1 > row0:
            s.losses[k] = worker_deltas(
                &s.views[k], s.hyper, params, work, <floating*>s.deltas, C * T, row0,
                x + row0 * n_in, y + row0 * n_out,
                weights + row0 if weights != NULL else NULL, <int>(row1 - row0),
                <floating>(s.normaliser / weight_sum), s if s.split_inputs else NULL)
        fbp_timing_mark(k, 2)
        wait_at_barrier(s, &waiting)
        fbp_timing_mark(k, 3)
        if stopped_by_bad_index(s, k, 0):
            return
        loss_sum = 0
        for j in range(T):
            loss_sum += s.losses[j]
        if not isfinite(loss_sum):   # every worker sees the same sum: all stop here
            if k == 0:
                s.status = DIVERGED
            return
        hyper.step += 1
        if s.update == GRADIENT_ONLY:   # clipping: the norm of the whole gradient first
            squares = 0
            for l in range(1, plan.n_layers + 1):
                update_part(s, &hyper, params, k, l, m, x, False, &squares)
            s.squares[k] = squares
            wait_at_barrier(s, &waiting)
            squares = 0
            for j in range(T):
                squares += s.squares[j]
            norm = gradient_norm(squares, <floating*>s.grads, plan.n_params)
            if squares == INFINITY:
                # (every worker read every part for the norm: none scales its own before)
                wait_at_barrier(s, &waiting)
            for l in range(1, plan.n_layers + 1):
                step_part(s, &hyper, params, k, l, norm)
        else:
            for l in range(plan.n_layers, 0, -1):
                update_part(s, &hyper, params, k, l, m, x, True, NULL)
        fbp_timing_mark(k, 4)
        if k == 0:
            s.hyper.step += 1
            add_batch_loss(&hyper, &s.loss_total, &s.weight_total, loss_sum, s.normaliser,
                           weight_sum, m)
            s.start = start + m
            next_batch(s, work)
            fbp_timing_mark(k, 5)
        wait_at_barrier(s, &waiting)
        fbp_timing_mark(k, 6)


cdef void* worker_entry_float(void* argument) noexcept nogil:
    fbp_float_mode_enter((<WorkerArgument*>argument).shared.flush_subnormals)
    worker_loop(<float*>NULL, <WorkerArgument*>argument)
    return NULL


cdef void* worker_entry_double(void* argument) noexcept nogil:
    fbp_float_mode_enter((<WorkerArgument*>argument).shared.flush_subnormals)
    worker_loop(<double*>NULL, <WorkerArgument*>argument)
    return NULL


cdef int check_workers(const PlanData* plan, const HyperparameterData* hyper,
                       Plan worker_plan, Py_ssize_t worker_work_size, int n_workers,
                       Py_ssize_t batch_size, int update, bint split_inputs,
                       bint split_hidden) except -1:
    """The worker plan describes the fit's network with room for a worker's rows, and the
    worker workspace holds every layer's delta for n_workers of them (and split_inputs,
    the partial products; split_hidden: its own buffers, for a network it can split)."""
    cdef const PlanData* wp = &worker_plan.data
    cdef int l
    if not 2 <= n_workers <= 1024:
        raise ValueError(f"train_epoch: n_workers is {n_workers}; it must be in 1..1024")
    if wp.n_layers != plan.n_layers:
        raise ValueError("train_epoch: the worker plan has another number of layers")
    for l in range(plan.n_layers + 1):
        if wp.sizes[l] != plan.sizes[l]:
            raise ValueError("train_epoch: the worker plan has other layer widths")
    for l in range(plan.n_layers):
        if wp.activations[l] != plan.activations[l] \
                or (wp.dropout_rates[l] > 0) != (plan.dropout_rates[l] > 0):
            raise ValueError("train_epoch: the worker plan has other activations or dropout")
    if wp.capacity * n_workers < batch_size:
        raise ValueError(f"train_epoch: the worker plan holds {wp.capacity} rows; "
                         f"{n_workers} workers need {-(-batch_size // n_workers)}")
    if (update == LAYER_STEP or update == GRADIENT_ONLY) and plan.gradient_offset < 0:
        raise ValueError("train_epoch: this optimizer needs a plan with room for the gradient")
    if wp.capacity > plan.capacity:
        raise ValueError(f"train_epoch: the worker plan holds {wp.capacity} rows, more than "
                         f"the plan's {plan.capacity}")
    if split_inputs and plan.sizes[0] < n_workers:
        raise ValueError(f"train_epoch: split_inputs needs at least as many inputs as "
                         f"workers; the network has {plan.sizes[0]} for {n_workers}")
    if split_hidden:
        if split_inputs:
            raise ValueError("train_epoch: split_inputs and split_hidden exclude each other")
        if plan.n_layers != 2:
            raise ValueError(f"train_epoch: split_hidden needs one hidden layer; the network "
                             f"has {plan.n_layers - 1}")
        if plan.sizes[1] < n_workers:
            raise ValueError(f"train_epoch: split_hidden needs at least as many hidden units "
                             f"as workers; the network has {plan.sizes[1]} for {n_workers}")
        if update == GRADIENT_ONLY:
            raise ValueError("train_epoch: split_hidden does not clip (the row split does)")
    cdef Py_ssize_t needed = workspace_size(&worker_plan.data, hyper, n_workers, split_inputs,
                                            split_hidden)
    if worker_work_size < needed:
        raise ValueError(f"train_epoch: the worker workspace holds {worker_work_size} values; "
                         f"{n_workers} workers need {needed}")
    return 0


cdef inline Py_ssize_t delta_store_size(const PlanData* worker_plan,
                                        int n_workers) noexcept nogil:
    return delta_offset(worker_plan, worker_plan.capacity * n_workers,
                        worker_plan.n_layers + 1)


cdef inline Py_ssize_t partials_size(const PlanData* worker_plan, int n_workers) noexcept nogil:
    """split_inputs: the first layer's partial products of workers 1..n_workers-1."""
    return (n_workers - 1) * worker_plan.capacity * n_workers * worker_plan.sizes[1]


def worker_workspace_size(Plan worker_plan, int n_workers, bint split_inputs=False,
                          bint split_hidden=False, Hyperparameters hyperparameters=None):
    """Elements of the workspace n_workers row-split workers need (train_epoch's
    worker_work): every layer's delta for n_workers x worker_plan.capacity rows, and,
    split_inputs, the first layer's partial products; split_hidden: its own buffers
    (hidden_layout) instead, with room for the arrays the rule of `hyperparameters` uses
    (None: any rule's)."""
    return workspace_size(&worker_plan.data,
                          NULL if hyperparameters is None else &hyperparameters.data,
                          n_workers, split_inputs, split_hidden)


cdef Py_ssize_t workspace_size(const PlanData* worker_plan, const HyperparameterData* hyper,
                               int n_workers, bint split_inputs,
                               bint split_hidden) noexcept nogil:
    """worker_workspace_size (hyper NULL: room for any rule)."""
    cdef HiddenLayout layout
    if split_hidden and worker_plan.n_layers == 2:
        hidden_layout(&layout, worker_plan, worker_plan.capacity * n_workers, n_workers,
                      4 if hyper == NULL else hidden_packed_arrays(hyper))
        return layout.size
    return delta_store_size(worker_plan, n_workers) \
        + (partials_size(worker_plan, n_workers) if split_inputs else 0)


cdef inline Py_ssize_t shifted(Py_ssize_t offset, Py_ssize_t shift) noexcept nogil:
    return offset + shift if offset >= 0 else -1


cdef parallel_epoch(SharedEpoch* s, floating* kind):
    """Runs the epoch on s.n_workers workers: worker 0 on this thread (the GIL released),
    the others on threads started here and joined before it returns."""
    cdef int T = s.n_workers, k, started
    cdef pthread_t* threads = <pthread_t*>calloc(T, sizeof(pthread_t))
    cdef WorkerArgument* arguments = <WorkerArgument*>calloc(T, sizeof(WorkerArgument))
    cdef double* numbers = <double*>calloc(2 * T, sizeof(double))
    cdef int L = s.plan.n_layers, l
    cdef PlanData* views = <PlanData*>calloc(T, sizeof(PlanData))
    cdef Py_ssize_t* offsets = <Py_ssize_t*>calloc(4 * T * (L + 1), sizeof(Py_ssize_t))
    cdef Py_ssize_t shift
    cdef Py_ssize_t* bads = <Py_ssize_t*>calloc(2 * T, sizeof(Py_ssize_t))
    cdef int* faileds = <int*>calloc(2 * T, sizeof(int))
    if not (threads and arguments and numbers and views and offsets and bads and faileds):
        free(threads); free(arguments); free(numbers); free(views); free(offsets)
        free(bads); free(faileds)
        raise MemoryError(f"train_epoch: no memory for the bookkeeping of {T} row workers")
    s.bads, s.faileds = bads, faileds
    for k in range(T):
        arguments[k].shared = s
        arguments[k].index = k
        # worker k's view: the fit's arrays from row k C, the worker plan's forward chunks
        views[k] = s.worker_plan_data[0]
        views[k].output_offsets = offsets + (4 * k) * (L + 1)
        views[k].preactivation_offsets = offsets + (4 * k + 1) * (L + 1)
        views[k].dropped_offsets = offsets + (4 * k + 2) * (L + 1)
        views[k].mask_offsets = offsets + (4 * k + 3) * (L + 1)
        for l in range(L + 1):
            shift = k * s.rows_per_worker * s.plan.sizes[l]
            views[k].output_offsets[l] = shifted(s.plan.output_offsets[l], shift)
            views[k].preactivation_offsets[l] = shifted(s.plan.preactivation_offsets[l], shift)
            views[k].dropped_offsets[l] = shifted(s.plan.dropped_offsets[l], shift)
            views[k].mask_offsets[l] = shifted(s.plan.mask_offsets[l], shift)
    s.views = views
    s.losses = numbers
    s.squares = numbers + T
    fbp_barrier_init(&s.barrier, T)
    s.spin_seconds = wait_spin_seconds(T)
    cdef long first_step = <long>s.hyper.step
    cdef unsigned float_mode
    with nogil:
        float_mode = fbp_float_mode_enter(s.flush_subnormals)
        if floating is float:
            started = fbp_start_workers(threads, T, worker_entry_float, <char*>arguments,
                                        sizeof(WorkerArgument))
        else:
            started = fbp_start_workers(threads, T, worker_entry_double, <char*>arguments,
                                        sizeof(WorkerArgument))
        if started == 0:
            worker_loop(<floating*>NULL, &arguments[0])
            fbp_join_workers(threads, T)
            fbp_timing_report(T, <long>s.hyper.step - first_step)
        else:   # the threads that did start stop at the first barrier
            s.proceed = False
            fbp_abandon_workers(&s.barrier, threads, started)
        fbp_float_mode_restore(float_mode)
    free(threads); free(arguments); free(numbers); free(views); free(offsets)
    free(bads); free(faileds)
    if started != 0:   # pthread_create fails only when the process is out of threads
        raise ThreadsUnavailable(f"could not start {T} training threads (only {started}); "
                                 f"the process is out of threads")


cdef tuple train_epoch_on_workers(
        const PlanData* plan, HyperparameterData* hyper, Plan worker_plan,
        floating[::1] worker_work, int n_workers, floating* params, floating* work,
        floating* first, floating* second, floating* grads, const floating[:, ::1] X,
        const floating[:, ::1] Y, const Py_ssize_t[::1] labels,
        const floating[::1] row_weights, const Py_ssize_t[::1] order, Py_ssize_t batch_size,
        uint64_t random_seed, bint interruptible, int update, int state_rows,
        bint split_inputs, bint split_hidden, bint flush_subnormals):
    """train_epoch's loop on n_workers row-split workers (its arguments checked, the
    worker plan and workspace checked here); returns what train_epoch returns."""
    if worker_plan is None or worker_work is None:
        raise ValueError("train_epoch: n_workers > 1 needs a worker plan and workspace")
    check_workers(plan, hyper, worker_plan, worker_work.shape[0], n_workers, batch_size,
                  update, split_inputs, split_hidden)
    cdef SharedEpoch s
    memset(&s, 0, sizeof(SharedEpoch))
    s.plan = plan
    s.worker_plan_data = &worker_plan.data
    s.rows_per_worker = worker_plan.data.capacity
    s.hyper = hyper
    s.params, s.work, s.deltas = params, work, &worker_work[0]
    s.first, s.second, s.grads = first, second, grads
    s.split_inputs = split_inputs
    s.partials = &worker_work[delta_store_size(&worker_plan.data, n_workers)] \
        if split_inputs else NULL
    s.split_hidden = split_hidden
    if split_hidden:
        hidden_layout(&s.hidden, &worker_plan.data, worker_plan.data.capacity * n_workers,
                      n_workers, hidden_packed_arrays(hyper))
        memset(&worker_work[s.hidden.zeros], 0, plan.sizes[2] * sizeof(floating))
    s.X = &X[0, 0]
    s.use_labels = Y.shape[0] == 0
    s.Y = NULL if s.use_labels else &Y[0, 0]
    s.use_order = order.shape[0] > 0
    s.order = &order[0] if s.use_order else NULL
    s.labels = &labels[0] if s.use_labels else NULL
    s.use_weights = row_weights.shape[0] > 0
    s.row_weights = &row_weights[0] if s.use_weights else NULL
    s.n_samples, s.batch_size = X.shape[0], batch_size
    s.n_rows = order.shape[0] if s.use_order else X.shape[0]
    s.interruptible = interruptible
    s.flush_subnormals = flush_subnormals
    s.update, s.n_workers = update, n_workers
    s.random_state = random_seed | 1
    s.normaliser = loss_normaliser(hyper.loss, plan.sizes[plan.n_layers])
    s.status = COMPLETED
    s.bad = -1
    parallel_epoch(&s, params)
    cdef floating* state_start = first if first != NULL else second
    with nogil:
        # An update can overflow with a finite loss (see train_epoch).
        if s.bad < 0 and s.status != DIVERGED and not (
                fbp_all_finite(params, plan.n_params)
                and fbp_all_finite(state_start if state_rows else params,
                                   state_rows * plan.n_params)):
            s.status = DIVERGED
    if s.bad >= 0:
        raise_bad_index(order, labels, s.start + s.bad, s.use_order, s.failed_gather,
                        plan.sizes[plan.n_layers])
    return s.loss_total, s.weight_total, s.start, s.status


# predict on row workers: the chunks of a pass are independent, so T workers (this thread
# and T - 1 helpers kept between calls) each claim chunks of rows and run them whole, on
# one BLAS thread each, in a workspace of their own; nothing is shared but the chunk
# counter. Every
# chunk is computed as the one-worker pass computes it (the same plan and calls), so the
# output is bit-identical whatever the number of workers. A kept pass (Predictor.run)
# may claim chunks smaller than the plan's (see there) and checks X and its outputs.

cdef struct PredictShared:
    const PlanData* plan
    const void* params
    void* work                  # n_workers workspaces of work_size elements
    Py_ssize_t work_size
    const void* X
    void* out
    Py_ssize_t n_samples
    Py_ssize_t chunk_rows       # rows a claim takes (plan.capacity at most)
    bint kept                   # forward_kept's pass (checks included), not predict_chunk's
    Py_ssize_t next_chunk       # claimed with fbp_claim_chunk


cdef struct PredictArgument:
    PredictShared* shared
    int index
    bint not_finite             # a kept pass met a non-finite X or output in its chunks


cdef void predict_worker(floating* kind, PredictArgument* argument) noexcept nogil:
    """One worker's chunks of a predict pass (kind: only selects the element type). A
    kept pass's claim may be a piece of a chunk of plan.capacity rows: its products then
    run in the kernels of the whole chunk, the few-row kernels only for a chunk of at most
    plan.few_rows rows (the one-thread pass's last), which model.kept_chunks claims
    whole; so each row gets the one-thread bits."""
    cdef PredictShared* s = argument.shared
    cdef const PlanData* plan = s.plan
    cdef PlanData no_few_rows = plan[0]   # the plan for a piece of a larger chunk
    no_few_rows.few_rows = 0
    cdef floating* work = <floating*>s.work + argument.index * s.work_size
    cdef Py_ssize_t start, m, chunk
    cdef const floating* x
    cdef floating* out
    while not argument.not_finite:
        start = fbp_claim_chunk(&s.next_chunk) * s.chunk_rows
        if start >= s.n_samples:
            return
        m = min(s.chunk_rows, s.n_samples - start)
        x = <const floating*>s.X + start * plan.sizes[0]
        out = <floating*>s.out + start * plan.sizes[plan.n_layers]
        if s.kept:
            # the rows of the one-thread pass's chunk this claim lies in
            chunk = min(plan.capacity, s.n_samples - start // plan.capacity * plan.capacity)
            argument.not_finite = not forward_kept(
                &no_few_rows if chunk > plan.few_rows else plan, <const floating*>s.params,
                work, x, m, out)
        else:
            predict_chunk(plan, <const floating*>s.params, work, x, <int>m, out, NULL)


cdef void predict_job_float(void* arguments, int index) noexcept nogil:
    predict_worker(<float*>NULL, &(<PredictArgument*>arguments)[index])


cdef void predict_job_double(void* arguments, int index) noexcept nogil:
    predict_worker(<double*>NULL, &(<PredictArgument*>arguments)[index])


# The helper threads of predict's shared passes, kept between calls (csrc/workers.h).
cdef fbp_pool predict_pool


def predict_on_workers(Plan plan, const floating[::1] params, floating[::1] work,
                       const floating[:, ::1] X, floating[:, ::1] out, int n_workers):
    """predict (dense X) with its chunks shared among n_workers threads, each on one BLAS
    thread (the caller sets that) in its own workspace: work holds n_workers workspaces
    of plan.work_size. out is bit-identical to predict's with the same plan."""
    cdef const PlanData* plan_data = &plan.data
    if not 1 <= n_workers <= 1024:
        raise ValueError(f"predict_on_workers: n_workers is {n_workers}; it must be in "
                         f"1..1024")
    check_pass("predict", plan_data, params.shape[0], work.shape[0] // n_workers,
               X.shape[1], False)
    check_targets("predict", plan_data, "out", out.shape[0], out.shape[1], X.shape[0])
    share_predict(plan_data, &params[0], &work[0], work.shape[0] // n_workers,
                  &X[0, 0] if X.shape[0] > 0 else NULL,
                  &out[0, 0] if out.shape[0] > 0 else NULL, X.shape[0], plan_data.capacity,
                  False, n_workers)


cdef bint share_predict(const PlanData* plan, const floating* params, floating* work,
                        Py_ssize_t work_size, const floating* X, floating* out,
                        Py_ssize_t n_samples, Py_ssize_t chunk_rows, bint kept,
                        int n_workers) except -1:
    """The pass over n_samples rows of X on n_workers threads (this one and helpers of
    the kept pool; this one alone when another thread's pass holds the pool), claiming
    chunk_rows rows at a time (at most plan.capacity), each worker in its own workspace
    of work_size elements: predict_chunk's pass, or forward_kept's when kept.
    Returns False when a kept pass met a non-finite X or output (out then unspecified).
    The arguments are the caller's to check."""
    cdef PredictShared s
    memset(&s, 0, sizeof(PredictShared))
    s.plan = plan
    s.params = params
    s.work = work
    s.work_size = work_size
    s.X = X
    s.out = out
    s.n_samples = n_samples
    s.chunk_rows = chunk_rows
    s.kept = kept
    cdef int T = n_workers, k, ran
    cdef bint finite = True
    cdef PredictArgument* arguments = <PredictArgument*>calloc(T, sizeof(PredictArgument))
    if not arguments:
        raise MemoryError(f"predict: no memory for the bookkeeping of {T} threads")
    for k in range(T):
        arguments[k].shared = &s
        arguments[k].index = k
    fbp_pool_for_this_process(&predict_pool)   # with the GIL held (see there)
    with nogil:
        if floating is float:
            ran = fbp_pool_run(&predict_pool, predict_job_float, arguments, T)
        else:
            ran = fbp_pool_run(&predict_pool, predict_job_double, arguments, T)
        if ran == 0:   # the pool is busy with another thread's pass: this one alone
            predict_worker(<floating*>NULL, &arguments[0])
    for k in range(T):
        finite = finite and not arguments[k].not_finite
    free(arguments)
    return finite
