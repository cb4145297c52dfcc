"""The systems fastbp is compared with, each behind one small interface.

A training runner is built from a workload and its data and has ``run(epochs)``, which trains
that many epochs (a new row order each epoch, last partial batch kept); a predict runner has
``predict()``, which runs the model's forward pass over all of its rows.  ``versions()`` names
the library versions a runner used.

Runners import their library lazily: a missing optional library raises ``Unavailable``.
Keep to one library per process when comparing at more than one thread (bench/README.md):
compare.py runs every runner in a subprocess of its own.
"""

import warnings

import numpy as np

from workloads import LEARNING_RATE, LOSS, init_params

TRAIN_PEERS = ("fastbp", "numpy", "torch", "sklearn")
PREDICT_PEERS = ("fastbp", "numpy", "torch")


class Unavailable(Exception):
    """The peer's library is not installed (or not importable) in this environment."""


def _import(name):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as exc:
        raise Unavailable(f"{name} is not importable: {exc}") from exc


# ----------------------------------------------------------------------------- fastbp

class FastbpTrain:
    name = "fastbp"
    optimizer = "sgd"     # the variants below train the same network with another rule

    def __init__(self, workload, X, y, threads=1, seed=0):
        self.fastbp = _import("fastbp")
        self.workload, self.X, self.y = workload, X, y
        self.threads = threads or None  # 0 -> fastbp's default thread setting
        self.model = self.fastbp.MLP(list(workload.layer_sizes), workload.activations,
                                     dtype=workload.dtype, seed=seed)
        self.seed = seed
        self.calls = 0

    def trainer(self, epochs):
        self.calls += 1
        return self.fastbp.Trainer(LOSS, optimizer=self.make_optimizer(), epochs=epochs,
                                   batch_size=self.workload.batch_size, shuffle=True,
                                   seed=self.seed + self.calls, n_threads=self.threads)

    def make_optimizer(self):
        return self.fastbp.optimizers.SGD(LEARNING_RATE)

    def run(self, epochs):
        # one fit of `epochs` epochs: per-fit overhead (validation, workspace) is paid once
        self.trainer(epochs).fit(self.model, self.X, self.y)

    def versions(self):
        return {"fastbp": getattr(self.fastbp, "__version__", "?"), "numpy": np.__version__}

    def thread_choice(self):
        """(row workers, BLAS threads, split) the fits ran on: at the default, the
        measured choice (kept from the first fit, so asking measures nothing)."""
        from fastbp import _threads
        wl = self.workload
        return _threads.fit_threads(self.model.layer_sizes, self.model._codes,
                                    wl.batch_size, wl.dtype, self.threads)

    def gemm_floor(self):
        """A function running `epochs` epochs' worth of this workload's plain-SGD matrix
        products alone (fastbp._core.gemm_floor): the speed fastbp would reach if gathering,
        activations, the loss and everything else but BLAS cost nothing. None where the
        fit splits its steps across row workers: the products alone on as many BLAS threads
        are another way to use the threads, not a floor of the fit's (W1 on 2 threads
        showed "813%" of it)."""
        from fastbp import _core, _threads
        model, wl = self.model, self.workload
        workers, blas, _ = _threads.fit_threads(wl.layer_sizes, model._codes, wl.batch_size,
                                                wl.dtype, self.threads)
        if workers > 1:
            return None
        threads = blas                 # the fit's threads, all on BLAS as the fit's are
        plan, work = model._workspace(wl.batch_size, n_threads=threads)   # as fit's plan
        work[:] = 0
        scratch = model._params.copy()
        X = self.X[: max(wl.batch_size, min(len(self.X), 64 * wl.batch_size))]
        steps_per_epoch = -(-wl.n_samples // wl.batch_size)

        def run(epochs):
            with _threads.blas_threads(threads):
                _core.gemm_floor(plan, scratch, work, X, wl.batch_size,
                                 epochs * steps_per_epoch)
        return run


class FastbpMomentumTrain(FastbpTrain):
    """fastbp with SGD + momentum 0.9 (issue 4: within 10% of plain SGD's throughput)."""
    name = "fastbp-momentum"

    def make_optimizer(self):
        return self.fastbp.optimizers.SGD(LEARNING_RATE, momentum=0.9)


class FastbpAdamTrain(FastbpTrain):
    """fastbp with Adam (issue 4: within 20% of plain SGD's throughput)."""
    name = "fastbp-adam"

    def make_optimizer(self):
        return self.fastbp.optimizers.Adam(0.001)


class FastbpPredict:
    name = "fastbp"

    def __init__(self, workload, X, threads=1, seed=0):
        fastbp = _import("fastbp")
        self.fastbp, self.X = fastbp, X
        self.threads = threads or None  # 0 -> fastbp's default thread setting
        # ReLU hidden layers, identity output: the plain X @ W + b chain
        self.model = fastbp.MLP(list(workload.layer_sizes), "relu", dtype=workload.dtype,
                                seed=seed)

    def predict(self):
        return self.model.predict(self.X, n_threads=self.threads)

    def versions(self):
        return {"fastbp": getattr(self.fastbp, "__version__", "?"), "numpy": np.__version__}


# ----------------------------------------------------------------------------- NumPy

class NumpyTrain:
    """The best plain-NumPy loop we know: every buffer allocated once, BLAS through np.matmul
    with out=, in-place element-wise ops, the fused softmax + CCE gradient, the batch gathered
    with np.take(out=), and ufunc methods rather than their slower Python wrappers
    (np.add.reduce over np.sum).

    The output delta is (p - onehot(y)) * (learning_rate / m): because back-propagation is
    linear in the delta, every weight gradient A^T delta computed from it is already the SGD
    step, so no separate scaling pass is needed.  The one-hot targets, pre-scaled by
    learning_rate / batch_size, are gathered per batch like X.  Each layer's input delta is
    computed with its W before W is updated; ReLU'(Z) is sign(A), A = relu(Z) >= 0.
    """

    name = "numpy"

    def __init__(self, workload, X, y, threads=1, seed=0):
        self.workload, self.X = workload, X
        y = np.asarray(y, dtype=np.intp)
        dt = np.dtype(workload.dtype)
        B, sizes = workload.batch_size, workload.layer_sizes
        self.W, self.b = init_params(workload, seed)
        # one-hot targets times learning_rate / batch_size (a partial batch rescales its rows)
        self.targets = np.zeros((workload.n_samples, sizes[-1]), dt)
        self.targets[np.arange(workload.n_samples), y] = LEARNING_RATE / B
        self.buffers = {
            "x": np.empty((B, sizes[0]), dt),
            "t": np.empty((B, sizes[-1]), dt),
            "acts": [np.empty((B, n), dt) for n in sizes[1:]],       # Z, then act(Z) in place
            "deltas": [np.empty((B, n), dt) for n in sizes[1:-1]],   # hidden-layer deltas
            "masks": [np.empty((B, n), dt) for n in sizes[1:-1]],    # ReLU'(Z) = sign(A)
            "rowmax": np.empty((B, 1), dt),
            "rowsum": np.empty((B, 1), dt),
        }
        self.gW = [np.empty_like(w) for w in self.W]
        self.gb = [np.empty_like(b) for b in self.b]
        self.views = {}
        self.perm = np.arange(workload.n_samples, dtype=np.intp)
        self.rng = np.random.default_rng(seed)

    def _views(self, m):
        """The first m rows of every buffer, made once per distinct batch size."""
        v = self.views.get(m)
        if v is None:
            b = self.buffers
            v = self.views[m] = (b["x"][:m], b["t"][:m], [a[:m] for a in b["acts"]],
                                 [d[:m] for d in b["deltas"]], [k[:m] for k in b["masks"]],
                                 b["rowmax"][:m], b["rowsum"][:m])
        return v

    def step(self, idx):
        m = idx.shape[0]
        x, t, acts, deltas, masks, mx, s = self._views(m)
        W, b, gW, gb = self.W, self.b, self.gW, self.gb
        last = len(W) - 1
        np.take(self.X, idx, axis=0, out=x)
        np.take(self.targets, idx, axis=0, out=t)
        a = x
        for l in range(last + 1):
            z = acts[l]
            np.matmul(a, W[l], out=z)
            np.add(z, b[l], out=z)
            if l < last:
                np.maximum(z, 0, out=z)
            a = z
        # softmax + CCE, fused: delta = (softmax(z) - onehot(y)) * lr / m, in place in z
        np.maximum.reduce(a, axis=1, keepdims=True, out=mx)
        np.subtract(a, mx, out=a)
        np.exp(a, out=a)
        np.add.reduce(a, axis=1, keepdims=True, out=s)
        scale = LEARNING_RATE / m
        np.divide(scale, s, out=s)
        np.multiply(a, s, out=a)
        if m != self.workload.batch_size:
            np.multiply(t, self.workload.batch_size / m, out=t)
        np.subtract(a, t, out=a)
        delta = a
        for l in range(last, -1, -1):
            a_prev = x if l == 0 else acts[l - 1]
            if l > 0:  # input delta with the old W, then times ReLU'
                d_prev = deltas[l - 1]
                np.matmul(delta, W[l].T, out=d_prev)
                np.sign(a_prev, out=masks[l - 1])
                np.multiply(d_prev, masks[l - 1], out=d_prev)
            np.matmul(a_prev.T, delta, out=gW[l])
            np.subtract(W[l], gW[l], out=W[l])
            np.add.reduce(delta, axis=0, out=gb[l])
            np.subtract(b[l], gb[l], out=b[l])
            if l > 0:
                delta = d_prev

    def run(self, epochs):
        n, B = self.workload.n_samples, self.workload.batch_size
        perm, step = self.perm, self.step
        for _ in range(epochs):
            self.rng.shuffle(perm)
            for start in range(0, n, B):
                step(perm[start:start + B])

    def versions(self):
        return {"numpy": np.__version__}


class NumpyPredict:
    """The plain NumPy chain: relu(X @ W0 + b0) @ W1 + b1 (identity output)."""

    name = "numpy"

    def __init__(self, workload, X, threads=1, seed=0):
        self.X = X
        self.W, self.b = init_params(workload, seed)

    def predict(self):
        a = self.X
        last = len(self.W) - 1
        for l, (w, b) in enumerate(zip(self.W, self.b)):
            a = a @ w + b
            if l < last:
                np.maximum(a, 0, out=a)
        return a

    def versions(self):
        return {"numpy": np.__version__}


# ----------------------------------------------------------------------------- PyTorch

def _torch_model(torch, workload, seed):
    torch.manual_seed(seed)
    sizes = workload.layer_sizes
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    dtype = getattr(torch, workload.dtype)
    return torch.nn.Sequential(*layers).to(dtype)


class TorchTrain:
    """nn.Sequential of Linear + ReLU, CrossEntropyLoss (softmax + CCE fused), optim.SGD,
    torch.randperm batches gathered by indexing."""

    name = "torch"

    def __init__(self, workload, X, y, threads=1, seed=0):
        torch = self.torch = _import("torch")
        if threads:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
        self.workload = workload
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        self.model = _torch_model(torch, workload, seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=0.0)
        self.loss = torch.nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(seed)

    def run(self, epochs):
        torch, model, opt, loss_fn = self.torch, self.model, self.opt, self.loss
        X, y = self.X, self.y
        n, B = self.workload.n_samples, self.workload.batch_size
        for _ in range(epochs):
            perm = torch.randperm(n, generator=self.gen)
            for start in range(0, n, B):
                idx = perm[start:start + B]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(X[idx]), y[idx])
                loss.backward()
                opt.step()

    def versions(self):
        return {"torch": self.torch.__version__, "numpy": np.__version__}


class TorchPredict:
    name = "torch"

    def __init__(self, workload, X, threads=1, seed=0):
        torch = self.torch = _import("torch")
        if threads:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
        self.X = torch.from_numpy(X)
        self.model = _torch_model(torch, workload, seed).eval()

    def predict(self):
        with self.torch.inference_mode():
            return self.model(self.X)

    def versions(self):
        return {"torch": self.torch.__version__, "numpy": np.__version__}


# ----------------------------------------------------------------------------- scikit-learn

class SklearnTrain:
    """MLPClassifier(solver="sgd"), plain SGD (no momentum, no L2, constant rate), no early
    stopping; warm_start=True so each fit(max_iter=k) trains k more epochs of the same model.
    Its per-epoch loss computation and per-fit validation are part of what it costs."""

    name = "sklearn"

    def __init__(self, workload, X, y, threads=1, seed=0):
        sklearn = self.sklearn = _import("sklearn")
        from sklearn.neural_network import MLPClassifier
        self.X, self.y = X, y
        self.clf = MLPClassifier(
            hidden_layer_sizes=tuple(workload.layer_sizes[1:-1]), activation="relu",
            solver="sgd", alpha=0.0, batch_size=workload.batch_size,
            learning_rate="constant", learning_rate_init=LEARNING_RATE, momentum=0.0,
            nesterovs_momentum=False, shuffle=True, random_state=seed, tol=0.0,
            n_iter_no_change=10**9, early_stopping=False, warm_start=True, max_iter=1)
        self.n_classes_seen = int(np.unique(y).size)
        del sklearn

    def run(self, epochs):
        from sklearn.exceptions import ConvergenceWarning
        self.clf.set_params(max_iter=epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.X, self.y)

    def versions(self):
        return {"sklearn": self.sklearn.__version__, "numpy": np.__version__}


TRAIN = {"fastbp": FastbpTrain, "numpy": NumpyTrain, "torch": TorchTrain,
         "sklearn": SklearnTrain, "fastbp-momentum": FastbpMomentumTrain,
         "fastbp-adam": FastbpAdamTrain}
PREDICT = {"fastbp": FastbpPredict, "numpy": NumpyPredict, "torch": TorchPredict}
