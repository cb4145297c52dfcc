# Benchmark-only code (included by _core.pyx): nothing in training or prediction calls it.


def gemm_floor(Plan plan, floating[::1] scratch, floating[::1] work,
               const floating[:, ::1] X, Py_ssize_t batch_size, Py_ssize_t n_steps):
    """For benchmarks: n_steps of plain-SGD training's matrix products and nothing else.

    The same products (BLAS or own kernels, as the plan says), shapes, chunks and flags as
    run_batch with FOLDED_SGD, on consecutive batches of X (no gather, no element-wise
    kernel, no loss); the weight products write into scratch (a copy of the parameters)
    and the deltas are whatever work holds. Its speed is what training would reach if
    everything but BLAS were free.
    """
    cdef const PlanData* plan_data = &plan.data
    cdef int L = plan_data.n_layers
    cdef int l, m
    cdef Py_ssize_t n_in, n_out, start_row, rows, step, start = 0, n_samples = X.shape[0]
    check_pass("gemm_floor", plan_data, scratch.shape[0], work.shape[0], X.shape[1], True)
    if not 1 <= batch_size <= min(n_samples, plan_data.capacity):
        raise ValueError(f"gemm_floor: batch_size is {batch_size}; X has {n_samples} rows "
                         f"and the plan room for {plan_data.capacity}")
    cdef floating* p = &scratch[0]
    cdef floating* w = &work[0]
    cdef floating* delta
    cdef const floating* x
    m = <int>batch_size
    with nogil:
        for step in range(n_steps):
            if start + m > n_samples:
                start = 0
            x = &X[start, 0]
            for l in range(1, L + 1):
                forward_product(plan_data, p, w, x, m, l, w + plan_data.output_offsets[l])
            for l in range(L, 0, -1):
                n_in = plan_data.sizes[l - 1]
                n_out = plan_data.sizes[l]
                delta = w + plan_data.delta_offsets[l % 2]
                if l > 1:
                    nt_product(product_isa(plan_data, l, DELTA_PRODUCT, p), m, <int>n_in,
                               <int>n_out, delta, <int>n_out, p + plan_data.weight_offsets[l - 1],
                               <int>n_out, w + plan_data.delta_offsets[(l - 1) % 2], <int>n_in)
                start_row = 0
                while start_row < n_in:
                    rows = min(plan_data.gradient_chunks[l - 1], n_in - start_row)
                    tn_product(product_isa(plan_data, l, GRADIENT_PRODUCT, p), <int>rows,
                               <int>n_out, m, <floating>-1e-3,
                               layer_input(plan_data, w, x, l) + start_row, <int>n_in, delta,
                               <int>n_out, <floating>1,
                               p + plan_data.weight_offsets[l - 1] + start_row * n_out,
                               <int>n_out)
                    start_row += rows
            start += m
