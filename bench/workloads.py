"""The benchmark workloads W1-W5, P1 and S1 of bench/README.md, and their synthetic data.

Every workload is a classification task: ReLU hidden layers, softmax output, categorical
cross-entropy, plain SGD with learning rate 0.01, a new row order every epoch, the last
partial batch kept.  The data are X ~ N(0, 1) and integer labels from a fixed random linear
"teacher" T (label = argmax of X @ T), so the task is learnable and the same seed gives the
same data on every machine.
"""

import os
from dataclasses import dataclass

import numpy as np

LEARNING_RATE = 0.01
LOSS = "categorical_crossentropy"


@dataclass(frozen=True)
class Workload:
    name: str
    layer_sizes: tuple
    batch_size: int
    n_samples: int
    dtype: str
    stresses: str

    @property
    def n_classes(self):
        return self.layer_sizes[-1]

    @property
    def activations(self):
        """One activation per weight layer: ReLU hidden layers, softmax output."""
        return ["relu"] * (len(self.layer_sizes) - 2) + ["softmax"]

    @property
    def flops_per_sample(self):
        """Multiply-adds x 2 of one training step per sample (forward, two backward GEMMs)."""
        macs = sum(a * b for a, b in zip(self.layer_sizes[:-1], self.layer_sizes[1:]))
        # forward 1x, weight gradient 1x, input delta 1x (none for the first layer)
        first = self.layer_sizes[0] * self.layer_sizes[1]
        return 2 * (3 * macs - first)

    def with_samples(self, n_samples):
        """The same workload on fewer (or more) rows, e.g. to make a benchmark round short."""
        return Workload(self.name, self.layer_sizes, self.batch_size, int(n_samples),
                        self.dtype, self.stresses)


WORKLOADS = {
    "W1": Workload("W1", (784, 128, 10), 32, 60_000, "float32", "MNIST-shaped, small GEMMs"),
    "W2": Workload("W2", (784, 512, 512, 10), 128, 60_000, "float32", "medium"),
    "W3": Workload("W3", (64, 32, 10), 16, 1_797, "float32", "tiny: pure per-step overhead"),
    "W4": Workload("W4", (1024, 4096, 4096, 1024), 256, 8_192, "float32", "GEMM-bound"),
    "W5": Workload("W5", (784, 128, 10), 32, 60_000, "float64", "W1 in double"),
}

# Inference: predict on 100,000 rows of the W1 network (ReLU hidden, identity output,
# i.e. the plain `relu(X @ W0 + b0) @ W1 + b1` chain).
PREDICT = Workload("P1", (784, 128, 10), 100_000, 100_000, "float32",
                   "predict on 100,000 rows of W1 shape")

ALL = dict(WORKLOADS, P1=PREDICT)


# Sparse input: 20,000 rows of 100,000 columns, text-like (scipy.sparse CSR), plain SGD at
# learning rate 0.05. Not in ALL: its data come from make_sparse_data (make_data would
# densify them: 8 GB), and its peers are others (bench/README.md).
S1 = Workload("S1", (100_000, 256, 20), 64, 20_000, "float32",
              "sparse, text-like input (CSR): the first layer on the nonzeros")
S1_LEARNING_RATE = 0.05
S1_ZIPF_EXPONENT = 1.3
S1_DRAWS_PER_ROW = 51   # columns drawn per row: about 27 distinct once duplicates are merged


def worker_environment(env):
    """A copy of env for a worker process started in bench/ (as the scripts start them),
    with the paths the user's command gave relative to where it ran made absolute: from
    bench/ a relative PYTHONPATH or FASTBP_CACHE_DIR named other folders (the workers
    imported another fastbp than the command's, and kept their choices elsewhere)."""
    env = dict(env)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(path) for path in env["PYTHONPATH"].split(os.pathsep))
    folder = env.get("FASTBP_CACHE_DIR", "").strip()
    if folder and not folder.startswith("~"):
        env["FASTBP_CACHE_DIR"] = os.path.abspath(folder)
    return env


def get(name):
    if name.upper() == "S1":
        return S1
    try:
        return ALL[name.upper()]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(ALL)}, S1") from None


def make_sparse_data(workload=S1, seed=0):
    """S1's data: X, a float32 CSR matrix (n_samples, n_in), and int64 labels.

    Each row draws S1_DRAWS_PER_ROW columns from a Zipf law of exponent 1.3 over the
    n_in columns (the k-th most frequent column with probability proportional to
    k^-1.3; which column is k-th is a fixed random permutation), each with a value
    uniform in [0.1, 1.1); a column drawn twice holds the sum (about 27 distinct nonzeros
    a row). Rows are scaled to unit L2 norm. Labels: argmax(X @ T) for a fixed random
    teacher T ~ N(0, 1) of shape (n_in, n_classes). Same (workload, seed), same arrays."""
    import scipy.sparse
    if isinstance(workload, str):
        workload = get(workload)
    rng = np.random.default_rng(seed)
    n_rows, n_in, n_out = workload.n_samples, workload.layer_sizes[0], workload.layer_sizes[-1]
    ranks = np.arange(1, n_in + 1, dtype=np.float64)
    cumulative = np.cumsum(ranks ** -S1_ZIPF_EXPONENT)
    cumulative /= cumulative[-1]
    column_of_rank = rng.permutation(n_in)
    draws = rng.random((n_rows, S1_DRAWS_PER_ROW))
    columns = column_of_rank[np.minimum(np.searchsorted(cumulative, draws), n_in - 1)]
    values = rng.uniform(0.1, 1.1, size=(n_rows, S1_DRAWS_PER_ROW))
    rows = np.repeat(np.arange(n_rows), S1_DRAWS_PER_ROW)
    X = scipy.sparse.coo_matrix((values.ravel(), (rows, columns.ravel())),
                                shape=(n_rows, n_in)).tocsr()   # duplicates summed, sorted
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = scipy.sparse.csr_matrix(scipy.sparse.diags(1.0 / norms) @ X)
    X.sort_indices()
    X = X.astype(np.dtype(workload.dtype))
    teacher = rng.standard_normal((n_in, n_out))
    y = np.asarray(np.argmax(X @ teacher, axis=1)).ravel().astype(np.int64)
    return X, y


def make_data(workload, seed=0):
    """X (n_samples, n_in) ~ N(0, 1) in the workload's dtype, C-contiguous, and int64 labels
    y = argmax(X @ T) for a fixed random teacher T (n_in, n_classes) drawn from the same seed.

    The same (workload, seed) gives the same arrays on every machine (numpy's PCG64 stream)."""
    if isinstance(workload, str):
        workload = get(workload)
    if workload.name == S1.name:
        raise ValueError("S1's data are sparse: make_sparse_data(), not make_data()")
    rng = np.random.default_rng(seed)
    n_in, n_out = workload.layer_sizes[0], workload.layer_sizes[-1]
    dtype = np.dtype(workload.dtype)
    teacher = rng.standard_normal((n_in, n_out)).astype(dtype)
    X = np.empty((workload.n_samples, n_in), dtype=dtype)
    y = np.empty(workload.n_samples, dtype=np.int64)
    # in chunks, drawn straight in the workload's dtype: the peak memory is X and y alone
    step = 8192
    for start in range(0, workload.n_samples, step):
        rows = X[start:start + step]
        rng.standard_normal(out=rows, dtype=dtype)
        np.argmax(rows @ teacher, axis=1, out=y[start:start + step])
    return X, y


def init_params(workload, seed=0):
    """Glorot-uniform weights (n_in, n_out) and zero biases in the workload's dtype, for the
    peers that do not initialise their own (the NumPy loop)."""
    rng = np.random.default_rng(seed + 1)
    weights, biases = [], []
    for n_in, n_out in zip(workload.layer_sizes[:-1], workload.layer_sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        weights.append(rng.uniform(-limit, limit, (n_in, n_out)).astype(workload.dtype))
        biases.append(np.zeros(n_out, dtype=workload.dtype))
    return weights, biases
