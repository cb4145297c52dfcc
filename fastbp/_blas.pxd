# BLAS for row-major arrays, through scipy's Cython BLAS (no link-time dependency).
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "fork_guard.h" nogil:
    # A fork waits for the products that may run on several BLAS threads (csrc/fork_guard.h).
    void fbp_set_pass_blas_threads(int n_threads)
    bint fbp_product_begin()
    void fbp_product_end()
    int fbp_install_fork_guard()


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C(m x n) := alpha * op(A) . op(B) + beta * C.

    A row-major matrix is its transpose in column-major order, so this is the Fortran
    product C^T := alpha * op(B)^T . op(A)^T + beta * C^T: swap the operands, no copies.
    """
    cdef char trans_first = b'T' if trans_b else b'N'
    cdef char trans_second = b'T' if trans_a else b'N'
    cdef bint counted = fbp_product_begin()
    if floating is float:
        sgemm(&trans_first, &trans_second, &n, &m, &k, &alpha, <float*>b, &ldb,
              <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&trans_first, &trans_second, &n, &m, &k, &alpha, <double*>b, &ldb,
              <double*>a, &lda, &beta, c, &ldc)
    if counted:
        fbp_product_end()
