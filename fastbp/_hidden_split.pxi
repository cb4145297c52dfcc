# Steps split by the hidden layer's units (issue 11): train_epoch(..., split_hidden=True)
# with n_workers = T > 1, for a network of one hidden layer (W1: n_in x n_h, W2: n_h x
# n_out). Included by _core.pyx after _workers.pxi, whose threads, barrier, phase A
# (next_batch) and gathers it shares.
#
# Worker k owns the hidden units [k n_h / T, (k + 1) n_h / T): W1's columns of them, their
# biases and W2's rows of them, so that no weight ever leaves its worker's core (in the
# row split every worker reads all of W1 and W2 each step, half of them written by the
# other core in the step before). W1's columns are interleaved in its rows, so each worker
# trains a packed copy of its columns (and of their gradient and optimizer state), taken
# at the epoch's start and written back at its end: stepped in place, each worker's W1
# products ran 1.7x slower than alone on a 2-core Xeon (the cores' prefetchers pull the
# other worker's half rows). Each worker also gathers the whole batch itself: its inputs
# then never cross between cores either, and a step needs one barrier (each worker's
# gather of the whole batch took about 10 us of W1's 60 us step on that Xeon, the rows
# coming from memory; asking for the next batch's rows ahead, all at once or spread over
# W1's update, moved that time into the update and saved none):
#   H1. worker k gathers the batch's inputs and targets into its own buffers;
#   H2. it computes its units for all the batch's rows (X W1[:, own] + b1[own], the
#       activation, dropout with the masks phase A drew) and its partial output product
#       (those units times W2's rows of them; worker 0 adds b2 to its own); worker 0 then
#       sets up the next batch (phase A) (barrier);
#   H3. every worker sums the partials in worker order (so each holds the same bits), takes
#       the output layer's loss and delta, and its units' delta (with W2 of before the
#       step); it steps W2's rows and W1's columns of its units and their biases (worker
#       0 also b2).
# With one barrier a worker may be a step ahead of another (in H1 or H2 of step t + 1
# while the other is in H3 of step t): so what one writes and another reads comes in
# copies used in turn. The partials and the gathers' bad-index slots, written before the
# step's barrier and read after it, take two (the step's parity); phase A's batch
# (BatchStep), row weights and dropout masks take three (the step's slot): worker 0 sets
# up step t + 2 in its H2 of step t + 1, while another worker may still read step t's.
# The sums run in a fixed order, so a fixed T gives bit-identical runs, and other counts
# agree to rounding.
# Clipping (a norm over the whole gradient) is not offered here: the row split takes it.


cdef int hidden_packed_arrays(const HyperparameterData* hyper) noexcept nogil:
    """How many of W1's arrays a worker packs its columns of: the weights, the gradient
    buffer where the rule steps from one (LAYER_STEP), and the rule's first and second
    state (the others' targets are the weights or the first state: gradient_target)."""
    return 1 + (update_kind(hyper) == LAYER_STEP) + uses_first_moment(hyper.optimizer) \
        + uses_second_moment(hyper.optimizer)


cdef void hidden_layout(HiddenLayout* layout, const PlanData* plan, Py_ssize_t rows,
                        int n_workers, int n_packed) noexcept nogil:
    """split_hidden's buffers for batches of up to `rows` rows on n_workers workers, each
    packing n_packed of W1's arrays (hidden_packed_arrays)."""
    cdef Py_ssize_t n_in = plan.sizes[0], n_h = plan.sizes[1], n_out = plan.sizes[2]
    cdef Py_ssize_t width = (n_h + n_workers - 1) // n_workers   # the most units a worker owns
    cdef Py_ssize_t masks = rows * n_h if plan.mask_offsets[1] >= 0 else 0
    cdef Py_ssize_t at = 0, here = 0
    cdef int parity, which
    for which in range(3):
        layout.weights[which] = at
        at += rows
        layout.masks[which] = at
        at += masks
    layout.zeros = at
    at += n_out
    layout.first_worker = at
    layout.x = here
    here += rows * n_in
    layout.y = here
    here += rows * n_out
    layout.out = here
    here += rows * width
    layout.pre = here if plan.preactivation_offsets[1] >= 0 else -1
    here += rows * width if layout.pre >= 0 else 0
    layout.dropped = here if plan.dropped_offsets[1] >= 0 else -1
    here += rows * width if layout.dropped >= 0 else 0
    layout.delta = here
    here += rows * width
    for parity in range(2):
        layout.partial[parity] = here
        here += rows * n_out
    layout.z = here
    here += rows * n_out
    layout.z_pre = here if plan.preactivation_offsets[2] >= 0 else -1
    here += rows * n_out if layout.z_pre >= 0 else 0
    layout.z_delta = here
    here += rows * n_out
    for which in range(n_packed):   # W1's columns, of the weights and the rule's arrays
        layout.columns[which] = here
        here += n_in * width
    layout.per_worker = here
    layout.size = at + n_workers * here


cdef void hidden_update(SharedEpoch* s, const HyperparameterData* hyper, floating* params,
                        floating* grads, floating* first, floating* second, int l,
                        Py_ssize_t offset, Py_ssize_t n_rows, Py_ssize_t n_cols,
                        const floating* a_in, Py_ssize_t lda, const floating* delta,
                        int m) noexcept nogil:
    """H3: the gradient of whole rows of W_l (n_rows x n_cols at `offset` in params, and
    in its gradient and state arrays) from the batch's m rows (a_in^T delta, a_in's
    columns the rows, delta m x n_cols) into the update's target, and the rule on it, in
    blocks as update_part steps them."""
    cdef floating alpha, beta
    cdef floating* target = gradient_target(hyper, s.update, params, grads, first, &alpha,
                                            &beta)
    cdef bint rule = s.update != FOLDED_SGD
    gradient_blocks(hyper, s.update, rule,
                    product_isa(s.worker_plan_data, l, GRADIENT_PRODUCT, params),
                    False, gradient_block_rows(s.plan, l, rule), params, target, first, second,
                    offset, 0, n_rows, n_cols, a_in, lda, delta, m, alpha, beta, NULL)


cdef void pack_columns(floating* packed, floating* matrix, Py_ssize_t n_rows,
                       Py_ssize_t row_length, Py_ssize_t low, Py_ssize_t width,
                       bint back) noexcept nogil:
    """Columns [low, low + width) of a row-major matrix into packed (n_rows x width), or
    back from it."""
    cdef Py_ssize_t r
    for r in range(n_rows):
        if back:
            memcpy(matrix + r * row_length + low, packed + r * width, width * sizeof(floating))
        else:
            memcpy(packed + r * width, matrix + r * row_length + low, width * sizeof(floating))


cdef void hidden_bias_update(SharedEpoch* s, const HyperparameterData* hyper,
                             floating* params, Py_ssize_t offset, const floating* delta,
                             Py_ssize_t n, int m) noexcept nogil:
    """H3: n biases at `offset` from the column sums of delta (m x n)."""
    cdef int update = s.update
    cdef floating alpha, weight_beta   # (biases do not decay: beta 1)
    cdef floating* target = gradient_target(hyper, update, params, <floating*>s.grads,
                                            <floating*>s.first, &alpha, &weight_beta)
    fbp_column_sums(target + offset, delta, m, n, alpha, 1)
    if update != FOLDED_SGD:
        step_slice(hyper, params, target, <floating*>s.first, <floating*>s.second, update,
                   offset, n, False)


cdef void publish_batch(SharedEpoch* s) noexcept nogil:
    """Worker 0, after phase A: the batch it set up, in its slot."""
    cdef BatchStep* step = &s.steps[s.slot]
    step.proceed = s.proceed
    step.m, step.start, step.weight_sum = s.m, s.start, s.weight_sum
    step.weights, step.masks = s.weights, s.masks


cdef void hidden_loop(floating* kind, WorkerArgument* argument) noexcept nogil:
    """One worker's part of a split_hidden epoch (kind: only selects the element type);
    see the top of this file."""
    cdef SharedEpoch* s = argument.shared
    cdef int k = argument.index, T = s.n_workers, j, m, parity = 0
    cdef int slot = 1   # phase A's first
    cdef const PlanData* plan = s.plan
    cdef const HiddenLayout* layout = &s.hidden
    cdef floating* params = <floating*>s.params
    cdef floating* work = <floating*>s.work
    cdef floating* store = <floating*>s.deltas     # the worker workspace
    cdef floating* mine = store + layout.first_worker + k * layout.per_worker
    cdef Py_ssize_t n_in = plan.sizes[0], n_h = plan.sizes[1], n_out = plan.sizes[2]
    cdef Py_ssize_t low, high, width, start, row0, r
    owned_inputs(n_h, k, T, &low, &high)
    width = high - low
    cdef Py_ssize_t b1 = plan.bias_offsets[0] + low
    cdef Py_ssize_t w2 = plan.weight_offsets[1] + low * n_out, b2 = plan.bias_offsets[1]
    cdef floating* out = mine + layout.out
    cdef floating* pre = mine + layout.pre if layout.pre >= 0 else NULL
    cdef floating* dropped = mine + layout.dropped if layout.dropped >= 0 else NULL
    cdef floating* units = dropped if dropped != NULL else out   # W2's input
    cdef floating* delta = mine + layout.delta
    cdef floating* z = mine + layout.z
    cdef floating* z_pre = mine + layout.z_pre if layout.z_pre >= 0 else NULL
    cdef floating* z_delta = mine + layout.z_delta
    # W1's columns of this worker's units, packed, and of the arrays the rule uses
    # (hidden_packed_arrays: the gradient buffer only where the rule steps from it)
    cdef floating* sources[4]
    cdef floating* packed[4]
    cdef int n_packed = 0
    sources[0] = params
    sources[1] = <floating*>s.grads if s.update == LAYER_STEP else NULL
    sources[2], sources[3] = <floating*>s.first, <floating*>s.second
    for j in range(4):
        packed[j] = NULL
        if sources[j] != NULL:
            packed[j] = mine + layout.columns[n_packed]
            n_packed += 1
            pack_columns(packed[j], sources[j] + plan.weight_offsets[0], n_in, n_h, low,
                         width, False)
    # the kernels chosen at this worker's shapes (n_in x its units x n_out on the whole
    # batch: _threads.row_workspace), which the worker plan holds
    cdef const PlanData* shapes = s.worker_plan_data
    cdef int forward_1 = product_isa(shapes, 1, FORWARD_PRODUCT, params)
    cdef int forward_2 = product_isa(shapes, 2, FORWARD_PRODUCT, params)
    cdef int delta_2 = product_isa(shapes, 2, DELTA_PRODUCT, params)
    # this worker's copy: worker 0 moves s.hyper.step while the others may still read
    cdef HyperparameterData hyper = s.hyper[0]
    cdef double loss_sum, weight_sum
    cdef const BatchStep* step
    cdef const floating* weights
    cdef const floating* masks
    cdef floating* x
    cdef floating* y
    fbp_timing_mark(k, -1)
    cdef Waiting waiting
    waiting.short_waits, waiting.penalty = 0, 0
    if k == 0:
        next_batch(s, work)
        publish_batch(s)
    fbp_barrier_wait(&s.barrier)
    waiting.began = fbp_seconds()
    while True:
        # H1. the batch phase A set up in this step's slot, gathered whole
        step = &s.steps[slot]
        if not step.proceed:
            break
        m, start = <int>step.m, step.start
        weights, weight_sum = <const floating*>step.weights, step.weight_sum
        masks = <const floating*>step.masks
        x = mine + layout.x if s.use_order else <floating*>s.X + start * n_in
        y = mine + layout.y if s.use_order or s.use_labels \
            else <floating*>s.Y + start * n_out
        fbp_timing_mark(k, 0)
        # from row k m / T on, then the rows before it: the workers start apart, so that
        # each finds the rows another has fetched already in the shared cache
        row0 = k * m // T
        s.bads[parity * T + k] = gather_rows(s, x, y, start, row0, m,
                                             &s.faileds[parity * T + k])
        if s.bads[parity * T + k] < 0 and row0 > 0:
            s.bads[parity * T + k] = gather_rows(s, x, y, start, 0, row0,
                                                 &s.faileds[parity * T + k])
        fbp_timing_mark(k, 1)
        # H2. this worker's units for every row, and its partial output product
        if s.bads[parity * T + k] < 0:
            nn_product(forward_1, m, <int>width, <int>n_in, x, <int>n_in, packed[0],
                       <int>width, out, <int>width)
            fbp_bias_activation(out, params + b1, pre, m, width, plan.activations[0])
            if dropped != NULL:
                for r in range(m):
                    apply_mask(dropped + r * width, out + r * width, masks + r * n_h + low,
                               width)
            nn_product(forward_2, m, <int>n_out, <int>width, units, <int>width,
                       params + w2, <int>n_out, mine + layout.partial[parity], <int>n_out)
            if k == 0:   # b2 here: the output layer then reads no parameter worker 0 steps
                for r in range(m):
                    fbp_add(mine + layout.partial[parity] + r * n_out, params + b2, n_out)
        fbp_timing_mark(k, 9)
        if k == 0:
            s.start = start + m
            next_batch(s, work)
            publish_batch(s)
            fbp_timing_mark(k, 5)
        wait_at_barrier(s, &waiting)
        fbp_timing_mark(k, 6)
        if stopped_by_bad_index(s, k, parity):
            if k == 0:   # as if phase A had not run: the epoch stops at this batch
                s.start = start
            break
        # H3. the output layer on every worker, from the partials summed in worker order
        memcpy(z, store + layout.first_worker + layout.partial[parity],
               m * n_out * sizeof(floating))
        for j in range(1, T):
            fbp_add(z, store + layout.first_worker + j * layout.per_worker
                    + layout.partial[parity], m * n_out)
        loss_sum = fbp_output_layer(z, store + layout.zeros, z_pre, y, weights, z_delta, m,
                                    n_out, plan.activations[1], hyper.loss,
                                    <floating>hyper.loss_parameter,
                                    <floating>(s.normaliser / weight_sum))
        if not isfinite(loss_sum):   # every worker has the same sum: all stop here
            if k == 0:
                s.status, s.start, s.bad = DIVERGED, start, -1
            break
        hyper.step += 1
        # this worker's units' delta, with W2 of before the step
        nt_product(delta_2, m, <int>width, <int>n_out, z_delta, <int>n_out, params + w2,
                   <int>n_out, delta, <int>width)
        if dropped != NULL:
            for r in range(m):
                fbp_multiply(delta + r * width, masks + r * n_h + low, width)
        fbp_activation_backward(delta, out, pre, m, width, plan.activations[0])
        hidden_update(s, &hyper, params, <floating*>s.grads, <floating*>s.first,
                      <floating*>s.second, 2, w2, width, n_out, units, width, z_delta, m)
        hidden_update(s, &hyper, packed[0], packed[1], packed[2], packed[3], 1, 0, n_in,
                      width, x, n_in, delta, m)
        hidden_bias_update(s, &hyper, params, b1, delta, width, m)
        if k == 0:
            hidden_bias_update(s, &hyper, params, b2, z_delta, n_out, m)
            s.hyper.step += 1
            add_batch_loss(&hyper, &s.loss_total, &s.weight_total, loss_sum, s.normaliser,
                           weight_sum, m)
        fbp_timing_mark(k, 10)
        parity = 1 - parity
        slot = (slot + 1) % 3
    for j in range(4):   # the trained columns back where the model keeps them
        if packed[j] != NULL:
            pack_columns(packed[j], sources[j] + plan.weight_offsets[0], n_in, n_h, low,
                         width, True)
