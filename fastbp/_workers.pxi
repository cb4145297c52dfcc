# Row-split training steps (issue 11): train_epoch with n_workers > 1.
#
# The epoch call starts n_workers - 1 threads (pthreads, once per call) and the calling
# thread is worker 0. Each step runs in three phases, with a barrier after each:
#   A. worker 0 alone gathers the batch (the serial path's gather) and draws the whole
#      batch's dropout masks, in the order the serial path draws them;
#   B. worker k runs forward and backward on rows [k m / T, (k + 1) m / T) of the batch,
#      in its own workspace (worker_plan, sized for ceil(batch / T) rows), adding its
#      gradient into its own gradient buffer;
#   C. worker k owns a range of the parameters: it sums the T gradients there in worker
#      order (fbp_reduce, which zeroes them for the next step) and applies the optimizer's
#      rule to that range (with clipping: the norm from the ranges' sums of squares, summed
#      in worker order, after one more barrier).
# So for a fixed n_workers the results do not depend on timing (bit-identical reruns),
# and they agree with one worker to rounding: only the order of the sums changes. BLAS
# runs on one thread in each worker (the trainer sets it). Nothing is allocated per step.

from libc.stdlib cimport calloc

cdef extern from "workers.h" nogil:
    ctypedef struct fbp_barrier:
        pass
    ctypedef struct pthread_t:
        pass
    void fbp_barrier_init(fbp_barrier* barrier, int n)
    void fbp_barrier_wait(fbp_barrier* barrier)
    int fbp_start_workers(pthread_t* threads, int n, void* (*entry)(void*) noexcept nogil,
                          char* contexts, size_t context_size)
    void fbp_join_workers(pthread_t* threads, int n)
    void fbp_abandon_workers(fbp_barrier* barrier, pthread_t* threads, int started)
    void fbp_dropout_masks_f32(float* mask, Py_ssize_t n, double rate, uint64_t* random_state)
    void fbp_dropout_masks_f64(double* mask, Py_ssize_t n, double rate, uint64_t* random_state)
    void fbp_apply_mask_f32(float* out, const float* a, const float* mask, Py_ssize_t n)
    void fbp_apply_mask_f64(double* out, const double* a, const double* mask, Py_ssize_t n)
    void fbp_reduce_f32(float* target, float* const* parts, int n_parts, Py_ssize_t offset,
                        Py_ssize_t n, float alpha, float beta)
    void fbp_reduce_f64(double* target, double* const* parts, int n_parts, Py_ssize_t offset,
                        Py_ssize_t n, double alpha, double beta)


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


cdef inline void reduce_parts(floating* target, floating** parts, int n_parts, Py_ssize_t offset,
                              Py_ssize_t n, floating alpha, floating beta) noexcept nogil:
    if floating is float:
        fbp_reduce_f32(target, parts, n_parts, offset, n, alpha, beta)
    else:
        fbp_reduce_f64(target, parts, n_parts, offset, n, alpha, beta)


# Parameter ranges of the update phase start on multiples of this many elements (64
# bytes of float32): no two workers write one cache line.
cdef enum:
    RANGE_ALIGNMENT = 16


cdef struct SharedEpoch:
    const PlanData* plan            # the fit's plan: the batch buffers and dropout masks
    const PlanData* worker_plan     # each worker's forward/backward workspace
    HyperparameterData* hyper
    void* params
    void* work
    void* worker_work
    Py_ssize_t worker_stride        # elements between two workers' workspaces
    void* first
    void* second
    void* grads                     # the summed gradient (LAYER_STEP, clipping) or NULL
    void** parts                    # each worker's gradient buffer
    const void* X
    const void* Y
    const Py_ssize_t* labels
    const void* row_weights
    const Py_ssize_t* order
    Py_ssize_t n_samples, batch_size
    bint use_order, use_labels, use_weights, interruptible
    int update, n_workers
    uint64_t random_state
    double normaliser
    fbp_barrier barrier
    # the step in progress, set by worker 0 in phase A
    const void* x
    const void* y
    const void* weights
    Py_ssize_t m
    double weight_sum
    bint proceed
    double* losses                  # per worker, phase B
    double* squares                 # per worker, clipping
    # the epoch's results
    double loss_total, weight_total
    Py_ssize_t start, bad
    int status, failed_gather


cdef struct WorkerArgument:
    SharedEpoch* shared
    int index


cdef Py_ssize_t gather_batch(SharedEpoch* s, floating* work, Py_ssize_t m) noexcept nogil:
    """The batch at s.start into the workspace (or read in place): sets s.x, s.y, s.weights
    and s.weight_sum. Returns the batch position of an index out of range (and sets
    s.failed_gather), or -1."""
    cdef const PlanData* plan = s.plan
    cdef Py_ssize_t n_in = plan.sizes[0], n_out = plan.sizes[plan.n_layers], i, bad
    cdef Py_ssize_t start = s.start, n_samples = s.n_samples
    cdef const floating* X = <const floating*>s.X
    cdef const floating* Y = <const floating*>s.Y
    cdef const floating* row_weights = <const floating*>s.row_weights
    cdef const Py_ssize_t* rows = s.order + start if s.use_order else NULL
    cdef floating* batch_x = work + plan.batch_x_offset
    cdef floating* batch_y = work + plan.batch_y_offset
    cdef floating* batch_weights = work + plan.batch_weight_offset
    cdef const floating* weights
    if s.use_order:
        bad = fbp_gather_rows(batch_x, X, rows, m, n_in, n_samples)
        if bad >= 0:
            s.failed_gather = GATHERED_X
            return bad
        s.x = batch_x
    else:
        s.x = X + start * n_in
    if s.use_labels:
        bad = fbp_one_hot(batch_y, s.labels if s.use_order else s.labels + start, rows, m,
                          n_out, n_samples if s.use_order else n_samples - start)
        if bad >= 0:
            s.failed_gather = GATHERED_LABELS
            return bad
        s.y = batch_y
    elif s.use_order:
        bad = fbp_gather_rows(batch_y, Y, rows, m, n_out, n_samples)
        if bad >= 0:
            s.failed_gather = GATHERED_Y
            return bad
        s.y = batch_y
    else:
        s.y = Y + start * n_out
    s.weights = NULL
    s.weight_sum = m
    if s.use_weights:
        if s.use_order:
            bad = fbp_gather(batch_weights, row_weights, rows, m, n_samples)
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


cdef void next_batch(SharedEpoch* s, floating* work) noexcept nogil:
    """Phase A (worker 0): the next batch whose rows weigh more than 0, and its dropout
    masks; s.proceed = 0 at the epoch's end, on SIGINT or an index out of range."""
    cdef const PlanData* plan = s.plan
    cdef Py_ssize_t m
    cdef int l
    s.proceed = False
    while s.start < s.n_samples:
        if s.interruptible and fbp_interrupt_requested:
            s.status = INTERRUPTED
            return
        m = min(s.batch_size, s.n_samples - s.start)
        s.bad = gather_batch(s, work, m)
        if s.bad >= 0:
            return
        if s.weight_sum > 0:   # a batch whose rows all weigh 0 teaches nothing
            s.m = m
            for l in range(1, plan.n_layers):
                if plan.mask_offsets[l] >= 0:
                    dropout_masks(work + plan.mask_offsets[l], m * plan.sizes[l],
                                  plan.dropout_rates[l - 1], &s.random_state)
            s.proceed = True
            return
        s.start += m


cdef double worker_gradient(const PlanData* plan, const HyperparameterData* hyper,
                            const floating* params, floating* grads, floating* work,
                            const floating* x, const floating* y, const floating* row_weights,
                            int m, floating scale, const PlanData* batch_plan,
                            const floating* batch_work, Py_ssize_t first_row) noexcept nogil:
    """Phase B: forward and backward on m rows (the batch's rows from first_row), adding
    `scale` times the gradient of their summed loss terms into grads (beta 1, GRADIENT_ONLY
    of run_batch); dropout multiplies by the masks phase A drew into batch_work. Returns
    the rows' (weighted) summed loss terms; when it is not finite nothing is added."""
    cdef int L = plan.n_layers, l
    cdef Py_ssize_t n_in, n_out, start, rows, block, w
    cdef floating* out
    cdef floating* delta
    cdef floating* previous_delta
    cdef const floating* a_in
    for l in range(1, L):
        n_out = plan.sizes[l]
        out = work + plan.output_offsets[l]
        forward_product(plan, params, work, x, m, l, out)
        fbp_bias_activation(out, params + plan.bias_offsets[l - 1],
                            workspace(work, plan.preactivation_offsets[l]), m, n_out,
                            plan.activations[l - 1])
        if plan.dropped_offsets[l] >= 0:
            apply_mask(work + plan.dropped_offsets[l], out,
                       batch_work + batch_plan.mask_offsets[l] + first_row * n_out,
                       <Py_ssize_t>m * n_out)
    out = work + plan.output_offsets[L]
    output_logits(plan, params, work, x, m, out)
    delta = work + plan.delta_offsets[L % 2]
    cdef double loss_sum = fbp_output_layer(out, params + plan.bias_offsets[L - 1],
                                            workspace(work, plan.preactivation_offsets[L]), y,
                                            row_weights, delta, m, plan.sizes[L],
                                            plan.activations[L - 1], hyper.loss,
                                            <floating>hyper.loss_parameter, scale)
    if not isfinite(loss_sum):
        return loss_sum
    for l in range(L, 0, -1):
        n_in = plan.sizes[l - 1]
        n_out = plan.sizes[l]
        a_in = layer_input(plan, work, x, l)
        delta = work + plan.delta_offsets[l % 2]
        if l > 1:
            previous_delta = work + plan.delta_offsets[(l - 1) % 2]
            gemm(False, True, m, <int>n_in, <int>n_out, <floating>1, delta, <int>n_out,
                 params + plan.weight_offsets[l - 1], <int>n_out, <floating>0, previous_delta,
                 <int>n_in)
            if plan.mask_offsets[l - 1] >= 0:
                fbp_multiply(previous_delta,
                             batch_work + batch_plan.mask_offsets[l - 1] + first_row * n_in,
                             m * n_in)
            fbp_activation_backward(previous_delta, work + plan.output_offsets[l - 1],
                                    workspace(work, plan.preactivation_offsets[l - 1]), m, n_in,
                                    plan.activations[l - 2])
        w = plan.weight_offsets[l - 1]
        block = gradient_block_rows(plan, l, False)
        start = 0
        while start < n_in:
            rows = min(block, n_in - start)
            gemm(True, False, <int>rows, <int>n_out, m, <floating>1, a_in + start, <int>n_in,
                 delta, <int>n_out, <floating>1, grads + w + start * n_out, <int>n_out)
            start += rows
        fbp_column_sums(grads + plan.bias_offsets[l - 1], delta, m, n_out, <floating>1,
                        <floating>1)
    return loss_sum


cdef inline Py_ssize_t range_edge(Py_ssize_t n_params, int k, int n_workers) noexcept nogil:
    """Where worker k's range of the parameters starts (k = n_workers: the end)."""
    if k >= n_workers:
        return n_params
    cdef Py_ssize_t edge = (n_params * k // n_workers) // RANGE_ALIGNMENT * RANGE_ALIGNMENT
    return min(edge, n_params)


cdef void update_piece(SharedEpoch* s, const HyperparameterData* hyper, floating* params,
                       floating** parts, Py_ssize_t offset, Py_ssize_t n,
                       bint weights) noexcept nogil:
    """Phase C on params[offset:offset + n] (inside one weight matrix or one bias): sum the
    workers' gradients there into the update's target and apply the rule, in blocks that
    stay in cache between the two."""
    cdef floating* first = <floating*>s.first
    cdef floating* second = <floating*>s.second
    cdef floating* grads = <floating*>s.grads
    cdef Py_ssize_t done = 0, piece
    cdef floating beta
    while done < n:
        piece = min(<Py_ssize_t>STEP_BLOCK_ELEMENTS, n - done)
        if s.update == FOLDED_SGD:   # W <- (1 - lr wd) W - lr grad, as run_batch folds it
            beta = <floating>(1.0 - hyper.learning_rate * hyper.weight_decay) if weights else 1
            reduce_parts(params, parts, s.n_workers, offset + done, piece,
                         <floating>(-hyper.learning_rate), beta)
        elif s.update == FOLDED_MOMENTUM:
            reduce_parts(first, parts, s.n_workers, offset + done, piece, 1, 1)
            step_slice(hyper, params, first, first, second, FOLDED_MOMENTUM, offset + done,
                       piece, weights)
        else:
            reduce_parts(grads, parts, s.n_workers, offset + done, piece, 1, 1)
            if s.update == LAYER_STEP:
                step_slice(hyper, params, grads, first, second, LAYER_STEP, offset + done,
                           piece, weights)
        done += piece


cdef void for_each_piece(SharedEpoch* s, const HyperparameterData* hyper, floating* params,
                         floating** parts, Py_ssize_t low, Py_ssize_t high,
                         bint stepping) noexcept nogil:
    """Phase C over params[low:high], cut where a weight matrix or a bias begins (weight
    decay applies to weights only). stepping: the update itself, else (clipping) the rule
    alone on the summed gradient."""
    cdef const PlanData* plan = s.plan
    cdef int l
    cdef Py_ssize_t begin, end, a, b
    cdef bint weights
    for l in range(2 * plan.n_layers):
        weights = l % 2 == 0
        if weights:
            begin = plan.weight_offsets[l // 2]
            end = begin + plan.sizes[l // 2] * plan.sizes[l // 2 + 1]
        else:
            begin = plan.bias_offsets[l // 2]
            end = begin + plan.sizes[l // 2 + 1]
        a = max(begin, low)
        b = min(end, high)
        if a >= b:
            continue
        if stepping:
            update_piece(s, hyper, params, parts, a, b - a, weights)
        else:
            step_slice(hyper, params, <floating*>s.grads, <floating*>s.first,
                       <floating*>s.second, LAYER_STEP, a, b - a, weights)


cdef void worker_loop(floating* kind, WorkerArgument* argument) noexcept nogil:
    """One worker's part of the epoch (kind: only selects the element type)."""
    cdef SharedEpoch* s = argument.shared
    cdef int k = argument.index, T = s.n_workers, j
    cdef const PlanData* plan = s.plan
    cdef const PlanData* worker_plan = s.worker_plan
    cdef floating* params = <floating*>s.params
    cdef floating* work = <floating*>s.work
    cdef floating* own = <floating*>s.worker_work + k * s.worker_stride
    cdef floating** parts = <floating**>s.parts
    cdef Py_ssize_t n_params = plan.n_params, n_in = plan.sizes[0]
    cdef Py_ssize_t n_out = plan.sizes[plan.n_layers], row0, row1
    cdef Py_ssize_t low = range_edge(n_params, k, T), high = range_edge(n_params, k + 1, T)
    cdef HyperparameterData hyper
    cdef double loss_sum, squares, coefficient
    cdef const floating* weights
    while True:
        if k == 0:
            next_batch(s, work)
        fbp_barrier_wait(&s.barrier)
        if not s.proceed:
            return
        row0 = s.m * k // T
        row1 = s.m * (k + 1) // T
        s.losses[k] = 0
        if row1 > row0:
            weights = <const floating*>s.weights + row0 if s.weights != NULL else NULL
            s.losses[k] = worker_gradient(
                worker_plan, s.hyper, params, parts[k], own,
                <const floating*>s.x + row0 * n_in, <const floating*>s.y + row0 * n_out,
                weights, <int>(row1 - row0), <floating>(s.normaliser / s.weight_sum), plan,
                work, row0)
        fbp_barrier_wait(&s.barrier)
        loss_sum = 0
        for j in range(T):
            loss_sum += s.losses[j]
        if not isfinite(loss_sum):   # every worker sees the same sum: all stop here
            if k == 0:
                s.status = DIVERGED
            return
        hyper = s.hyper[0]
        hyper.step += 1
        if s.update == GRADIENT_ONLY:   # clipping: the norm of the whole summed gradient
            for_each_piece(s, &hyper, params, parts, low, high, True)
            s.squares[k] = fbp_sum_squares(<floating*>s.grads + low, high - low)
            fbp_barrier_wait(&s.barrier)
            squares = 0
            for j in range(T):
                squares += s.squares[j]
            # torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (norm + 1e-6))
            coefficient = hyper.clip_norm / (sqrt(squares) + 1e-6)
            if coefficient < 1:
                fbp_scale(<floating*>s.grads + low, high - low, <floating>coefficient)
            for_each_piece(s, &hyper, params, parts, low, high, False)
        else:
            for_each_piece(s, &hyper, params, parts, low, high, True)
        fbp_barrier_wait(&s.barrier)
        if k == 0:
            s.hyper.step += 1
            s.loss_total += loss_sum * s.normaliser
            s.weight_total += s.weight_sum
            s.start += s.m


cdef void* worker_entry_float(void* argument) noexcept nogil:
    worker_loop(<float*>NULL, <WorkerArgument*>argument)
    return NULL


cdef void* worker_entry_double(void* argument) noexcept nogil:
    worker_loop(<double*>NULL, <WorkerArgument*>argument)
    return NULL


cdef int check_workers(const PlanData* plan, Plan worker_plan, Py_ssize_t worker_work_size,
                       int n_workers, Py_ssize_t batch_size, int update) except -1:
    """The worker plan describes the fit's network, has room for a worker's rows and a
    gradient, and the worker workspace for n_workers of it."""
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
    if wp.gradient_offset < 0:
        raise ValueError("train_epoch: the worker plan needs room for a gradient")
    if (update == LAYER_STEP or update == GRADIENT_ONLY) and plan.gradient_offset < 0:
        raise ValueError("train_epoch: this optimizer needs a plan with room for the gradient")
    if worker_work_size < n_workers * worker_stride(wp):
        raise ValueError(f"train_epoch: the worker workspace holds {worker_work_size} values; "
                         f"{n_workers} workers need {n_workers * worker_stride(wp)}")
    return 0


cdef inline Py_ssize_t worker_stride(const PlanData* worker_plan) noexcept nogil:
    return (worker_plan.work_size + RANGE_ALIGNMENT - 1) // RANGE_ALIGNMENT * RANGE_ALIGNMENT


def worker_workspace_size(Plan worker_plan, int n_workers):
    """Elements of the workspace n_workers row-split workers need (train_epoch's
    worker_work): one worker_plan workspace each, on 64-byte boundaries."""
    return n_workers * worker_stride(&worker_plan.data)


cdef parallel_epoch(SharedEpoch* s, floating* kind):
    """Runs the epoch on s.n_workers workers: worker 0 on this thread (the GIL released),
    the others on threads started here and joined before it returns."""
    cdef int T = s.n_workers, k, started
    cdef Py_ssize_t n_params = s.plan.n_params
    cdef pthread_t* threads = <pthread_t*>calloc(T, sizeof(pthread_t))
    cdef WorkerArgument* arguments = <WorkerArgument*>calloc(T, sizeof(WorkerArgument))
    cdef void** parts = <void**>calloc(T, sizeof(void*))
    cdef double* numbers = <double*>calloc(2 * T, sizeof(double))
    if not (threads and arguments and parts and numbers):
        free(threads); free(arguments); free(parts); free(numbers)
        raise MemoryError()
    for k in range(T):
        arguments[k].shared = s
        arguments[k].index = k
        parts[k] = <floating*>s.worker_work + k * s.worker_stride \
            + s.worker_plan.gradient_offset
        memset(parts[k], 0, n_params * sizeof(floating))
    s.parts = parts
    s.losses = numbers
    s.squares = numbers + T
    fbp_barrier_init(&s.barrier, T)
    with nogil:
        if floating is float:
            started = fbp_start_workers(threads, T, worker_entry_float, <char*>arguments,
                                        sizeof(WorkerArgument))
        else:
            started = fbp_start_workers(threads, T, worker_entry_double, <char*>arguments,
                                        sizeof(WorkerArgument))
        if started == 0:
            worker_loop(<floating*>NULL, &arguments[0])
            fbp_join_workers(threads, T)
        else:   # the threads that did start stop at the first barrier
            s.proceed = False
            fbp_abandon_workers(&s.barrier, threads, started)
    free(threads); free(arguments); free(parts); free(numbers)
    if started != 0:   # pthread_create fails only when the process is out of threads
        raise RuntimeError(f"could not start {T} training threads (only {started}); the "
                           f"process is out of threads")


cdef tuple train_epoch_on_workers(
        const PlanData* plan, HyperparameterData* hyper, Plan worker_plan,
        floating[::1] worker_work, int n_workers, floating* params, floating* work,
        floating* first, floating* second, floating* grads, const floating[:, ::1] X,
        const floating[:, ::1] Y, const Py_ssize_t[::1] labels,
        const floating[::1] row_weights, const Py_ssize_t[::1] order, Py_ssize_t batch_size,
        uint64_t random_seed, bint interruptible, int update, int state_rows):
    """train_epoch's loop on n_workers row-split workers (its arguments checked, the
    worker plan and workspace checked here); returns what train_epoch returns."""
    if worker_plan is None or worker_work is None:
        raise ValueError("train_epoch: n_workers > 1 needs a worker plan and workspace")
    check_workers(plan, worker_plan, worker_work.shape[0], n_workers, batch_size, update)
    cdef SharedEpoch s
    memset(&s, 0, sizeof(SharedEpoch))
    s.plan = plan
    s.worker_plan = &worker_plan.data
    s.hyper = hyper
    s.params, s.work, s.worker_work = params, work, &worker_work[0]
    s.worker_stride = worker_stride(&worker_plan.data)
    s.first, s.second, s.grads = first, second, grads
    s.X = &X[0, 0]
    s.use_labels = Y.shape[0] == 0
    s.Y = NULL if s.use_labels else &Y[0, 0]
    s.use_order = order.shape[0] > 0
    s.order = &order[0] if s.use_order else NULL
    s.labels = &labels[0] if s.use_labels else NULL
    s.use_weights = row_weights.shape[0] > 0
    s.row_weights = &row_weights[0] if s.use_weights else NULL
    s.n_samples, s.batch_size = X.shape[0], batch_size
    s.interruptible = interruptible
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
