# Cutting the matrix products for OpenBLAS's small-matrix kernels (included by _core.pyx).
#
# OpenBLAS's small-matrix kernels (SkylakeX, Cooperlake, SapphireRapids cores) take NN and
# NT products of at most 100^3 multiply-adds and skip the packing of both operands: a W1
# step's forward product runs 1.6x faster as four such calls than as one packed call.
# Plan(small_gemm_chunks=True) cuts the products as below; fastbp._threads decides where
# (the BLAS behind scipy's sgemm, found from blas_address(), and one thread).
SMALL_GEMM_MAX_MNK = 1000000
SMALL_GEMM_GRAIN = 16       # chunk widths in whole AVX-512 vectors of floats
# Forward products are cut into 16 batch rows by a multiple of 64 output columns (the
# fastest small-kernel shapes measured: docs/performance.md), and only while the whole
# product is below 64 x 10^6 multiply-adds: past that the packed kernel wins.
SMALL_GEMM_FORWARD_ROWS = 16
SMALL_GEMM_FORWARD_COLUMNS = 64
SMALL_GEMM_FORWARD_MAX_MNK = 64000000


cdef Py_ssize_t small_gemm_chunk(Py_ssize_t other_dims, Py_ssize_t size) noexcept:
    """The widest multiple of the grain that keeps a product of other_dims x chunk under
    the small-kernel limit, or size (one call) when chunks would be too thin or not needed."""
    cdef Py_ssize_t chunk = SMALL_GEMM_MAX_MNK // max(other_dims, 1)
    chunk -= chunk % SMALL_GEMM_GRAIN
    if chunk < SMALL_GEMM_GRAIN or chunk >= size:
        return size
    return chunk


cdef void cut_forward_product(PlanData* plan, Py_ssize_t l, Py_ssize_t capacity) noexcept:
    """Weight layer l's (0-based) forward product in calls of SMALL_GEMM_FORWARD_ROWS rows
    by a multiple of SMALL_GEMM_FORWARD_COLUMNS columns under the small-kernel limit, when
    that fits (plan.forward_row_chunks, forward_chunks)."""
    cdef Py_ssize_t n_in = plan.sizes[l], n_out = plan.sizes[l + 1]
    cdef Py_ssize_t rows = min(capacity, <Py_ssize_t>SMALL_GEMM_FORWARD_ROWS)
    cdef Py_ssize_t columns = SMALL_GEMM_MAX_MNK // max(rows * n_in, 1)
    cdef double multiply_adds = <double>capacity * n_in * n_out   # may pass 2**63
    if (multiply_adds > SMALL_GEMM_FORWARD_MAX_MNK
            or multiply_adds <= SMALL_GEMM_MAX_MNK):   # too big, or small already
        return
    if columns >= n_out:
        columns = n_out
    else:
        columns -= columns % SMALL_GEMM_FORWARD_COLUMNS
        if columns < SMALL_GEMM_FORWARD_COLUMNS:
            return
    plan.forward_row_chunks[l] = rows
    plan.forward_chunks[l] = columns


def blas_address():
    """The address of the sgemm fastbp calls, to find the library that provides it."""
    return <size_t><void*>sgemm
