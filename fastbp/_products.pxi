# The three products of a training step, in fastbp's own kernels (csrc/products.h) or BLAS
# (included by _core.pyx). A plan holds, per weight layer and product, the instruction set
# its kernel runs with, or 0 for BLAS (PlanData.product_isas); the passes call the three
# wrappers below with it.

# The instruction sets of the own kernels, by the names FASTBP_KERNEL_ISA takes.
KERNEL_ISAS = {"avx2": FBP_ISA_AVX2, "avx512": FBP_ISA_AVX512}
# The products, by the names the plan and the benchmarks use, and their bits.
PRODUCTS = {"forward": 0, "delta": 1, "gradient": 2}


cdef enum:   # the products of a weight layer, in PlanData.product_isas's order
    FORWARD_PRODUCT = 0
    DELTA_PRODUCT = 1
    GRADIENT_PRODUCT = 2


cdef inline int product_isa(const PlanData* plan, int l, int product,
                            const floating* like) noexcept nogil:
    """The instruction set of the own kernel for weight layer l's (1-based) product of
    elements like *like (its type only), or 0: BLAS."""
    cdef int dtype = 1 if floating is double else 0
    return plan.product_isas[(dtype * plan.n_layers + l - 1) * 3 + product]


def product_l2_bytes(value=None):
    """The L2 cache size (bytes) NN's blocks of rows are sized by (csrc/products.h; read
    from the C library when the module loads), after setting it to value if given: for
    tests, which force both orders (0: all rows in one block) on any machine."""
    global fbp_product_l2_bytes
    if value is not None:
        if value < 0:
            raise ValueError(f"product_l2_bytes needs a size >= 0; got {value}")
        fbp_product_l2_bytes = value
    return fbp_product_l2_bytes


product_l2_bytes(fbp_l2_cache_bytes())


def best_kernel_isa():
    """The widest instruction set this CPU runs the own kernels with ("avx512", "avx2"),
    or None where they are not built or the CPU has neither (then every product is BLAS)."""
    cdef int isa = fbp_best_product_isa()
    for name, code in KERNEL_ISAS.items():
        if code == isa:
            return name
    return None


# The levels the element-wise kernels (csrc/elementwise_impl.h), the few-row kernels and
# the softmax blocks are compiled at (csrc/fastbp.h's fbp_level), by the names
# FASTBP_KERNEL_ISA takes, widest first.
KERNEL_LEVELS = {"avx512": FBP_ISA_AVX512, "avx2": FBP_ISA_AVX2, "baseline": FBP_ISA_NONE}


def kernel_levels():
    """The levels this CPU and build run (KERNEL_LEVELS' names), widest first."""
    widest = fbp_widest_level()
    return [name for name, code in KERNEL_LEVELS.items() if code <= widest]


def kernel_level(name=None):
    """The level the element-wise kernels, the few-row kernels and the softmax blocks run
    at (a KERNEL_LEVELS name), as it was before this call, setting it to `name` (one of
    kernel_levels()) if given; for tests and benchmarks, while nothing trains or predicts.
    When fastbp._core loads it starts at the widest this CPU runs, or at the lower one
    FASTBP_KERNEL_ISA names ("avx2", "baseline"): the one switch for the instruction set
    of every kernel, which the product kernels read per plan (fastbp._products)."""
    global fbp_level
    before = next(level for level, code in KERNEL_LEVELS.items() if code == fbp_level)
    if name is not None:
        if name not in kernel_levels():
            raise ValueError(f"kernel_level must be one of {kernel_levels()} on this CPU "
                             f"and build; got {name!r}")
        fbp_level = KERNEL_LEVELS[name]
    return before


def _starting_level():
    """FASTBP_KERNEL_ISA's level, else the widest. A name it refuses is not an error here
    (the import must not fail): the first fit or predict reports it (kernel_isa)."""
    from fastbp._products import requested_level
    try:
        return requested_level() or kernel_levels()[0]
    except ValueError:
        return kernel_levels()[0]


kernel_level(_starting_level())


cdef inline void nn_product(int isa, int m, int n, int k, const floating* a, int lda,
                            const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """c (m x n) = a (m x k) b (k x n), all row-major: the own kernel of isa, or BLAS (0)."""
    if isa:
        fbp_product_nn(isa, m, n, k, a, lda, b, ldb, c, ldc)
    else:
        gemm(False, False, m, n, k, <floating>1, a, lda, b, ldb, <floating>0, c, ldc)


cdef inline void nt_product(int isa, int m, int n, int k, const floating* d, int ldd,
                            const floating* w, int ldw, floating* c, int ldc) noexcept nogil:
    """c (m x n) = d (m x k) w^T, w (n x k): the own kernel of isa, or BLAS (0)."""
    if isa:
        fbp_product_nt(isa, m, n, k, d, ldd, w, ldw, c, ldc)
    else:
        gemm(False, True, m, n, k, <floating>1, d, ldd, w, ldw, <floating>0, c, ldc)


cdef inline void tn_product(int isa, int m, int n, int k, floating alpha, const floating* a,
                            int lda, const floating* d, int ldd, floating beta, floating* c,
                            int ldc) noexcept nogil:
    """c (m x n) = beta c + alpha a^T d, a (k x m), d (k x n): the own kernel of isa, or
    BLAS (0)."""
    if isa:
        fbp_product_tn(isa, m, n, k, alpha, a, lda, d, ldd, beta, c, ldc)
    else:
        gemm(True, False, m, n, k, alpha, a, lda, d, ldd, beta, c, ldc)


cdef int backend_isa(str backend) except -1:
    """The isa code of a backend name: "blas" (0) or one of KERNEL_ISAS, which this CPU
    must run."""
    if backend == "blas":
        return 0
    if backend not in KERNEL_ISAS:
        raise ValueError(f"backend must be 'blas' or one of {sorted(KERNEL_ISAS)}; got "
                         f"{backend!r}")
    cdef int isa = KERNEL_ISAS[backend]
    if isa > fbp_best_product_isa():
        raise ValueError(f"backend {backend!r}: this CPU or build runs the own kernels with "
                         f"{best_kernel_isa() or 'no instruction set'} at most")
    return isa


cdef Py_ssize_t leading_dimension(floating[:, :] matrix, str name) except -1:
    """The row stride in elements of a matrix whose rows are contiguous."""
    if matrix.shape[0] > 1 and matrix.shape[1] > 1 and matrix.strides[1] != sizeof(floating):
        raise ValueError(f"{name}'s rows must be contiguous")
    if matrix.strides[0] % sizeof(floating) or matrix.strides[0] < 0:
        raise ValueError(f"{name}'s row stride must be a positive number of elements")
    if matrix.shape[0] > 1 and matrix.strides[0] // <Py_ssize_t>sizeof(floating) < matrix.shape[1]:
        # (a larger leading dimension in its place would read or write past the buffer)
        raise ValueError(f"{name}'s rows overlap: its row stride is "
                         f"{matrix.strides[0] // <Py_ssize_t>sizeof(floating)} elements, "
                         f"shorter than its {matrix.shape[1]} columns")
    return max(matrix.strides[0] // <Py_ssize_t>sizeof(floating), matrix.shape[1], 1)


def column_sums(floating[:, ::1] delta, floating[::1] target, double alpha, double beta):
    """For tests: target <- beta target + alpha (the sum of delta's rows), as a step makes
    a bias's gradient or update (fbp_column_sums)."""
    if target.shape[0] != delta.shape[1]:
        raise ValueError(f"target has {target.shape[0]} values for delta's {delta.shape[1]} "
                         f"columns")
    if delta.shape[1] == 0:
        return
    fbp_column_sums(&target[0], &delta[0, 0] if delta.shape[0] else NULL, delta.shape[0],
                    delta.shape[1], <floating>alpha, <floating>beta)


def matrix_product(str kind, floating[:, :] a, floating[:, :] b, floating[:, :] c,
                   double alpha=1.0, double beta=0.0, str backend="blas", Py_ssize_t repeat=1,
                   Py_ssize_t chunk_rows=0, Py_ssize_t chunk_columns=0):
    """For tests and benchmarks: one of the step's products, `repeat` times, into c.

    kind "nn": c = a b (a m x k, b k x n); "nt": c = a b^T (b n x k); "tn": c = beta c +
    alpha a^T b (a k x m, b k x n). alpha and beta are for "tn" only (the others are 1, 0
    as in the step). Rows contiguous, any row strides (leading dimensions). backend: "blas"
    (fastbp's gemm) or an instruction set of the own kernels ("avx2", "avx512").
    chunk_rows, chunk_columns (0: whole): the calls a plan cuts the product into, as its
    passes make them: "nn" on BLAS in blocks of rows x columns (Plan.gemm_chunks' forward
    chunks; the kernels take it in one call), "tn" in blocks of chunk_rows rows of c (the
    gradient blocks, either backend)."""
    cdef int isa = backend_isa(backend)
    cdef Py_ssize_t lda = leading_dimension(a, "a"), ldb = leading_dimension(b, "b")
    cdef Py_ssize_t ldc = leading_dimension(c, "c")
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k, i, row, rows, column, columns
    if kind == "nn":
        k = a.shape[1]
        shapes_fit = a.shape[0] == m and b.shape[0] == k and b.shape[1] == n
    elif kind == "nt":
        k = a.shape[1]
        shapes_fit = a.shape[0] == m and b.shape[0] == n and b.shape[1] == k
    elif kind == "tn":
        k = a.shape[0]
        shapes_fit = a.shape[1] == m and b.shape[0] == k and b.shape[1] == n
    else:
        raise ValueError(f"kind must be 'nn', 'nt' or 'tn'; got {kind!r}")
    if not shapes_fit or min(m, n, k) < 1:
        raise ValueError(f"{kind}: shapes {(a.shape[0], a.shape[1])}, "
                         f"{(b.shape[0], b.shape[1])} -> {(m, n)} do not fit (or are empty)")
    if max(m, n, k, lda, ldb, ldc) >= 2**31:
        raise ValueError("matrix_product: dimensions must be below 2**31")
    if (kind != "tn" and (alpha != 1 or beta != 0)):
        raise ValueError(f"{kind}: alpha and beta are 1 and 0 (they are for 'tn')")
    if chunk_rows < 0 or chunk_columns < 0:
        raise ValueError("chunk_rows and chunk_columns must be >= 0")
    cdef Py_ssize_t row_chunk = chunk_rows or m, column_chunk = chunk_columns or n
    with nogil:
        for i in range(repeat):
            if kind == "nn" and isa:
                nn_product(isa, <int>m, <int>n, <int>k, &a[0, 0], <int>lda, &b[0, 0], <int>ldb,
                           &c[0, 0], <int>ldc)
            elif kind == "nn":   # forward_product's BLAS calls
                row = 0
                while row < m:
                    rows = min(row_chunk, m - row)
                    column = 0
                    while column < n:
                        columns = min(column_chunk, n - column)
                        nn_product(0, <int>rows, <int>columns, <int>k, &a[row, 0], <int>lda,
                                   &b[0, column], <int>ldb, &c[row, column], <int>ldc)
                        column += columns
                    row += rows
            elif kind == "nt":
                nt_product(isa, <int>m, <int>n, <int>k, &a[0, 0], <int>lda, &b[0, 0], <int>ldb,
                           &c[0, 0], <int>ldc)
            else:   # run_batch's gradient blocks
                row = 0
                while row < m:
                    rows = min(row_chunk, m - row)
                    tn_product(isa, <int>rows, <int>n, <int>k, <floating>alpha, &a[0, row],
                               <int>lda, &b[0, 0], <int>ldb, <floating>beta, &c[row, 0],
                               <int>ldc)
                    row += rows


def fma_peak(str backend, long n):
    """For benchmarks: n iterations of 10 independent float FMAs of the backend's vector
    width, and n x 8 one-cycle integer adds; returns (seconds of the FMA loop, seconds of
    the add loop), so the core's clock (8 n / add seconds) and its peak multiply-adds per
    cycle (10 n lanes / FMA seconds / clock) come from the same run."""
    import time
    cdef int isa = backend_isa(backend)
    if isa == 0:
        raise ValueError("fma_peak needs an instruction set of the own kernels")
    cdef double start
    cdef float sink
    cdef long ticks
    start = time.perf_counter()
    with nogil:
        sink = fbp_fma_loop(isa, n, 0.5)
    fma_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with nogil:
        ticks = fbp_clock_loop(n)
    add_seconds = time.perf_counter() - start
    if sink != sink or ticks != 8 * n:   # keeps both results alive
        raise RuntimeError("fma_peak: unexpected loop result")
    return fma_seconds, add_seconds
