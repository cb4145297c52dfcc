"""fastbp's own product kernels (csrc/products.h, issue 12) against a float64 product.

Each of the three products of a step (nn: A W, nt: D W^T, tn: beta C + alpha A^T D) in
each instruction set this CPU runs, both dtypes, on every edge of the register block
(6 rows by 2 vectors with AVX2, 4 with AVX-512; a narrower last panel: 12 rows of one
vector, or of two with AVX-512, 6 of three), of the chunks of k (128) and of the column
tail (a partial vector, read and written through masks), with odd leading dimensions and
unaligned starts: the result equals the float64 product to rounding, and nothing outside
C's view is written.
"""
import numpy as np
import pytest

from fastbp import _core

# every instruction set this CPU runs (an AVX-512 CPU runs both)
ISAS = {"avx512": ["avx2", "avx512"], "avx2": ["avx2"], None: []}[_core.best_kernel_isa()]
BACKENDS = ISAS + ["blas"]
ROWS = 6                                   # the register block's rows
TALL = 12                                  # ... in a panel of one vector
VECTOR_BYTES = {"avx2": 32, "avx512": 64, "blas": 64}
VECTORS = {"avx2": 2, "avx512": 4, "blas": 4}
CHUNK = 128                                # k per chunk of the column tail and NT's panels


def block_width(backend, dtype):
    """Columns of the register block."""
    return VECTORS[backend] * VECTOR_BYTES[backend] // np.dtype(dtype).itemsize


def embedded(rng, rows, cols, dtype, fill=None):
    """A rows x cols view with an odd leading dimension, starting one element into a
    larger array (so unaligned), and that array (to check what lies outside the view)."""
    big = rng.standard_normal((rows + 1, cols + 3)).astype(dtype)
    if fill is not None:
        big[:] = fill
    return big[1:, 1:cols + 1], big


def expected_and_bound(kind, a, b, c0, alpha, beta):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if kind == "nn":
        return a64 @ b64, np.abs(a64) @ np.abs(b64), a.shape[1]
    if kind == "nt":
        return a64 @ b64.T, np.abs(a64) @ np.abs(b64.T), a.shape[1]
    c64 = c0.astype(np.float64) if beta != 0 else 0.0
    product = a64.T @ b64
    magnitude = abs(alpha) * (np.abs(a64.T) @ np.abs(b64)) + abs(beta) * np.abs(c64)
    return alpha * product + beta * c64, magnitude, a.shape[0] + 2


def check(kind, backend, dtype, m, n, k, alpha=1.0, beta=0.0, seed=0, b_contiguous=False):
    """C's product equals the float64 one to rounding, nothing outside C's view written;
    returns C. b_contiguous: NN's B in a contiguous array (its rows at stride n)."""
    rng = np.random.default_rng(seed)
    if kind == "nn":
        a, _ = embedded(rng, m, k, dtype)
        b = rng.standard_normal((k, n)).astype(dtype) if b_contiguous \
            else embedded(rng, k, n, dtype)[0]
    elif kind == "nt":
        a, _ = embedded(rng, m, k, dtype)
        b, _ = embedded(rng, n, k, dtype)
    else:
        a, _ = embedded(rng, k, m, dtype)
        b, _ = embedded(rng, k, n, dtype)
    c, c_big = embedded(rng, m, n, dtype, fill=np.nan if beta == 0 else None)
    if beta != 0:
        c[:] = rng.standard_normal((m, n))
    c0 = c.copy()
    outside = c_big.copy()
    outside[1:, 1:n + 1] = 0
    _core.matrix_product(kind, a, b, c, alpha, beta, backend)
    expected, magnitude, terms = expected_and_bound(kind, a, b, c0, alpha, beta)
    bound = 1.01 * terms * np.finfo(dtype).eps * magnitude + np.finfo(dtype).tiny
    error = np.abs(c.astype(np.float64) - expected)
    assert np.all(error <= bound), \
        f"{kind} {backend} {np.dtype(dtype).name} m={m} n={n} k={k}: error {error.max()}"
    after = c_big.copy()
    after[1:, 1:n + 1] = 0
    np.testing.assert_array_equal(after, outside)   # nothing written outside C (NaN == NaN)
    return c


def sizes_to(limit):
    return list(range(1, limit + 1))


KINDS = ["nn", "nt", "tn"]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_row_count(kind, dtype, backend):
    """Whole panels at every row count to four register blocks and one more: the rows go
    in blocks as even as they come (7 rows: 3 + 4; 25: 5 + 5 + 5 + 5 + 5), so every block
    height up to ROWS, alone and after others."""
    for m in sizes_to(4 * ROWS + 1):
        check(kind, backend, dtype, m, 2 * block_width(backend, dtype) + 3, 37, seed=m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_narrow_panels_every_row_count(kind, dtype, backend):
    """A last panel narrower than the register block (an output layer of a few columns
    is one): one vector, or two with AVX-512, in blocks of up to TALL rows as even as
    they come, or three vectors (AVX-512), each whole or with a partial last vector, alone
    or after whole panels, at every row count to two blocks and one more."""
    lanes = VECTOR_BYTES[backend] // np.dtype(dtype).itemsize
    width = block_width(backend, dtype)
    narrow = [v * lanes + extra for v in range(VECTORS[backend]) for extra in (-3, 0)
              if v * lanes + extra > 0]
    for n in narrow + [width + n for n in narrow[:2]]:
        for m in sizes_to(2 * TALL + 1):
            check(kind, backend, dtype, m, n, 11, alpha=-0.5 if kind == "tn" else 1.0,
                  beta=1.0 if kind == "tn" else 0.0, seed=m * 131 + n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_column_count(kind, dtype, backend):
    for n in sizes_to(2 * block_width(backend, dtype) + 1):
        check(kind, backend, dtype, 7, n, 19, seed=n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_inner_sizes_around_the_chunks(kind, dtype, backend):
    width = block_width(backend, dtype)
    for k in [1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1]:
        for n in (width - 1, width, width + 5):   # the tail's chunks, whole panels
            check(kind, backend, dtype, 13, n, k, seed=k + n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.01, 0.0), (-0.01, 1.0),
                                         (0.5, 0.999), (1.0, 1.0), (2.0, -3.0)])
def test_weight_gradient_alpha_beta(alpha, beta, dtype, backend):
    width = block_width(backend, dtype)
    for m, n, k in [(1, 1, 1), (ROWS, width, 32), (ROWS + 1, width + 1, 33),
                    (2 * ROWS - 1, 2 * width - 1, CHUNK + 1), (31, 10, 32)]:
        check("tn", backend, dtype, m, n, k, alpha, beta, seed=m * n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_shapes(backend, dtype):
    """The products of W1 (784-128-10, 32 rows) and of a 128-row 512-wide layer."""
    for kind, m, n, k in [("nn", 32, 128, 784), ("nn", 32, 10, 128), ("nt", 32, 128, 10),
                          ("tn", 784, 128, 32), ("tn", 128, 10, 32), ("nn", 128, 512, 784),
                          ("nt", 128, 512, 512), ("tn", 512, 512, 128)]:
        check(kind, backend, dtype, m, n, k, -0.01 if kind == "tn" else 1.0,
              1.0 if kind == "tn" else 0.0)


def test_backends_and_shapes_refused():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    c = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="backend"):
        _core.matrix_product("nn", a, b, c, backend="sse9")
    with pytest.raises(ValueError, match="kind"):
        _core.matrix_product("xx", a, b, c)
    with pytest.raises(ValueError, match="do not fit"):
        _core.matrix_product("nt", a, b, c)
    with pytest.raises(ValueError, match="contiguous"):
        _core.matrix_product("nn", np.ones((4, 3), np.float32).T, b, c)
    with pytest.raises(ValueError, match="alpha"):
        _core.matrix_product("nn", a, b, c, alpha=2.0)
    np.testing.assert_array_equal(c, 0)


@pytest.mark.parametrize("backend", ["blas", "own"])
@pytest.mark.parametrize("operand", ["a", "c"])
def test_matrices_whose_rows_overlap_are_refused(operand, backend):
    """A matrix whose row stride is shorter than its row (a sliding window of one buffer)
    was given its row length as leading dimension instead: x = 1..5 seen as 3 x 3 times
    the identity gave [[1, 2, 3], [4, 5, 0], [6.9e-44, 0, 1.4e-45]], read past the buffer
    (and an overlapping c would be written past it)."""
    if backend == "own":
        if not _core.best_kernel_isa():
            pytest.skip("this CPU or build has no own kernels")
        backend = _core.best_kernel_isa()
    x = np.arange(1, 6, dtype=np.float32)
    window = np.lib.stride_tricks.as_strided(x, (3, 3), (4, 4))
    a = window if operand == "a" else np.eye(3, dtype=np.float32)
    c = window if operand == "c" else np.zeros((3, 3), np.float32)
    before = x.copy()
    with pytest.raises(ValueError, match="rows overlap"):
        _core.matrix_product("nn", a, np.eye(3, dtype=np.float32), c, backend=backend)
    np.testing.assert_array_equal(x, before)


def test_the_best_isa_is_available():
    """This CPU's best instruction set is one the kernels take; a CPU without AVX2 and FMA
    (or a build without the kernels) has none and runs every product in BLAS."""
    best = _core.best_kernel_isa()
    assert best in (None, "avx2", "avx512")
    if best is None:
        with pytest.raises(ValueError, match="no instruction set"):
            _core.matrix_product("nn", np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)),
                                 backend="avx2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_calls_as_plans_make_them(backend, dtype):
    """matrix_product's chunks (a plan's forward blocks, its gradient blocks) give the
    whole product to rounding."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((23, 41)).astype(dtype)
    b = rng.standard_normal((41, 37)).astype(dtype)
    whole = np.empty((23, 37), dtype)
    _core.matrix_product("nn", a, b, whole, backend=backend)
    cut = np.full((23, 37), np.nan, dtype)
    _core.matrix_product("nn", a, b, cut, backend=backend, chunk_rows=16, chunk_columns=16)
    np.testing.assert_allclose(cut, whole, rtol=1e-5, atol=1e-5)
    d = rng.standard_normal((23, 37)).astype(dtype)
    c0 = rng.standard_normal((41, 37)).astype(dtype)
    whole, cut = c0.copy(), c0.copy()
    _core.matrix_product("tn", a, d, whole, -0.5, 0.9, backend)
    _core.matrix_product("tn", a, d, cut, -0.5, 0.9, backend, chunk_rows=7)
    np.testing.assert_allclose(cut, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk"):
        _core.matrix_product("tn", a, d, cut, -0.5, 0.9, backend, chunk_rows=-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_column(backend, dtype):
    """NN with one contiguous column (an output layer of one unit) takes dot products of
    A's rows: every row count to two register blocks and one more, every k to two vectors
    and one more, and across the chunks; a strided column takes the general path."""
    lanes = VECTOR_BYTES[backend] // np.dtype(dtype).itemsize
    for m in sizes_to(2 * ROWS + 1):
        for k in sizes_to(2 * lanes + 1) + [CHUNK + 1, 3 * CHUNK + 5]:
            check("nn", backend, dtype, m, 1, k, seed=m * k, b_contiguous=True)
    for m in (1, ROWS + 1):
        check("nn", backend, dtype, m, 1, 2 * lanes + 1, seed=m)


@pytest.mark.parametrize("backend", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_of_rows_give_the_same_bits(backend, dtype):
    """NN takes A in blocks of rows when A is large against the L2 cache and B is small
    (csrc/products.h, fbp_prod_nn_rows): forced here on any machine by the cache size it
    is told, each block count (one strip of rows, several, a partial last block) gives
    the bits of one block, and those equal the float64 product to rounding."""
    saved = _core.product_l2_bytes()
    width = block_width(backend, dtype)
    k = 37
    row_bytes = k * np.dtype(dtype).itemsize
    try:
        for n in (1 + 2, width, 2 * width + 3):
            for strips in (1, 2, -(-n // (4 * ROWS)) + 1):
                rows = ROWS * max(strips, -(-n // (4 * ROWS)))   # n x k within L2 / 2
                for m in (2 * rows + 1, 3 * rows, 5 * rows + ROWS - 1):
                    _core.product_l2_bytes(0)
                    whole = check("nn", backend, dtype, m, n, k, seed=m + n)
                    _core.product_l2_bytes(8 * row_bytes * rows)
                    blocked = check("nn", backend, dtype, m, n, k, seed=m + n)
                    np.testing.assert_array_equal(blocked, whole)
    finally:
        _core.product_l2_bytes(saved)
    with pytest.raises(ValueError, match=">= 0"):
        _core.product_l2_bytes(-1)
    assert _core.product_l2_bytes() == saved >= 0
