# cython: language_level=3
"""The compiled core: forward, backward and the SGD epoch loop.

How the pieces fit:
- csrc/ holds the element-wise kernels (bias + activation, output loss and delta,
  column sums, gathers), one C source for float and double;
- `gemm` (_blas.pxd) does every matrix product through scipy's BLAS;
- `Plan` knows the network's shape and where each array lives: the parameters are one
  flat buffer (W1, b1, W2, b2, ...) and the activations, deltas and batch copies are one
  flat workspace sized for `capacity` rows, so a step allocates nothing;
- `run_batch` is one forward + backward pass on m rows; it either writes gradients
  (alpha=1, beta=0) or folds the SGD update into the gradient GEMM (alpha=-lr, beta=1);
- the `def` functions (train_epoch, gradients, predict, ...) are thin shims that take
  the arrays, release the GIL once, and loop in C.
The Python layer validates everything before calling in: no bounds checks here.
"""
from cython cimport floating
from libc.math cimport isfinite
from libc.stdlib cimport malloc, free

from fastbp._blas cimport gemm
from fastbp._kernels cimport *

import numpy as np

cdef extern from "fastbp.h":
    enum:
        FBP_IDENTITY, FBP_RELU, FBP_LEAKY_RELU, FBP_SIGMOID, FBP_TANH, FBP_SOFTMAX

# The codes the kernels switch on, named; csrc/fastbp.h is their single source.
ACTIVATION_CODES = {"identity": FBP_IDENTITY, "relu": FBP_RELU, "leaky_relu": FBP_LEAKY_RELU,
                    "sigmoid": FBP_SIGMOID, "tanh": FBP_TANH, "softmax": FBP_SOFTMAX}
LOSS_CODES = {"mse": FBP_MSE, "mae": FBP_MAE, "categorical_crossentropy": FBP_CCE,
              "binary_crossentropy": FBP_BCE}


cdef struct Layout:
    int n_layers
    int* sizes                    # n_layers + 1 widths, input first
    int* activations              # one code per weight layer
    Py_ssize_t* weight_offsets    # into the parameter buffer
    Py_ssize_t* bias_offsets
    Py_ssize_t* output_offsets    # A_l for l = 1..n_layers, into the workspace
    Py_ssize_t delta_offsets[2]   # two delta buffers, used in turn going backwards
    Py_ssize_t batch_x_offset     # gathered batch of inputs
    Py_ssize_t batch_y_offset     # gathered (or one-hot) batch of targets
    Py_ssize_t capacity           # rows the workspace holds


cdef class Plan:
    """The shape of a network and the layout of its parameter and workspace buffers."""
    cdef Layout layout
    cdef readonly Py_ssize_t n_params, work_size

    def __cinit__(self, layer_sizes, activations, Py_ssize_t capacity):
        cdef int n_layers = len(activations)
        cdef int l
        cdef Py_ssize_t offset = 0, widest = 0
        self.layout.n_layers = n_layers
        self.layout.capacity = capacity
        self.layout.sizes = <int*>malloc((n_layers + 1) * sizeof(int))
        self.layout.activations = <int*>malloc(n_layers * sizeof(int))
        self.layout.weight_offsets = <Py_ssize_t*>malloc(n_layers * sizeof(Py_ssize_t))
        self.layout.bias_offsets = <Py_ssize_t*>malloc(n_layers * sizeof(Py_ssize_t))
        self.layout.output_offsets = <Py_ssize_t*>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        if (not self.layout.sizes or not self.layout.activations or not self.layout.weight_offsets
                or not self.layout.bias_offsets or not self.layout.output_offsets):
            raise MemoryError()
        for l in range(n_layers + 1):
            self.layout.sizes[l] = layer_sizes[l]
        for l in range(n_layers):
            self.layout.activations[l] = activations[l]
            self.layout.weight_offsets[l] = offset
            offset += <Py_ssize_t>layer_sizes[l] * layer_sizes[l + 1]
            self.layout.bias_offsets[l] = offset
            offset += layer_sizes[l + 1]
            widest = max(widest, <Py_ssize_t>layer_sizes[l + 1])
        self.n_params = offset

        offset = 0
        self.layout.output_offsets[0] = -1          # A_0 is the input itself
        for l in range(1, n_layers + 1):
            self.layout.output_offsets[l] = offset
            offset += capacity * layer_sizes[l]
        for l in range(2):
            self.layout.delta_offsets[l] = offset
            offset += capacity * widest
        self.layout.batch_x_offset = offset
        offset += capacity * layer_sizes[0]
        self.layout.batch_y_offset = offset
        offset += capacity * layer_sizes[n_layers]
        self.work_size = offset

    def __dealloc__(self):
        free(self.layout.sizes)
        free(self.layout.activations)
        free(self.layout.weight_offsets)
        free(self.layout.bias_offsets)
        free(self.layout.output_offsets)

    @property
    def capacity(self):
        return self.layout.capacity

    def parameter_views(self, params):
        """Split the flat parameter buffer into live views: (weights, biases)."""
        weights, biases = [], []
        for l in range(self.layout.n_layers):
            n_in, n_out = self.layout.sizes[l], self.layout.sizes[l + 1]
            start = self.layout.weight_offsets[l]
            weights.append(params[start:start + n_in * n_out].reshape(n_in, n_out))
            start = self.layout.bias_offsets[l]
            biases.append(params[start:start + n_out])
        return weights, biases


# ---- fused dispatch to the C kernels (Cython cannot overload C functions) ----

cdef inline void bias_activation(floating* z, const floating* bias, Py_ssize_t n_rows,
                                 Py_ssize_t n_cols, int activation) noexcept nogil:
    if floating is float:
        fbp_bias_activation_f32(z, bias, n_rows, n_cols, activation)
    else:
        fbp_bias_activation_f64(z, bias, n_rows, n_cols, activation)


cdef inline void activation_backward(floating* delta, const floating* a, Py_ssize_t n_rows,
                                     Py_ssize_t n_cols, int activation) noexcept nogil:
    if floating is float:
        fbp_activation_backward_f32(delta, a, n_rows, n_cols, activation)
    else:
        fbp_activation_backward_f64(delta, a, n_rows, n_cols, activation)


cdef inline double output_layer(floating* z, const floating* bias, const floating* y,
                                floating* delta, Py_ssize_t n_rows, Py_ssize_t n_cols,
                                int activation, int loss, floating scale) noexcept nogil:
    if floating is float:
        return fbp_output_layer_f32(z, bias, y, delta, n_rows, n_cols, activation, loss, scale)
    else:
        return fbp_output_layer_f64(z, bias, y, delta, n_rows, n_cols, activation, loss, scale)


cdef inline void column_sums(floating* target, const floating* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, floating alpha, floating beta) noexcept nogil:
    if floating is float:
        fbp_column_sums_f32(target, delta, n_rows, n_cols, alpha, beta)
    else:
        fbp_column_sums_f64(target, delta, n_rows, n_cols, alpha, beta)


cdef inline void gather_rows(floating* dst, const floating* src, const Py_ssize_t* rows,
                             Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    if floating is float:
        fbp_gather_rows_f32(dst, src, rows, n_rows, n_cols)
    else:
        fbp_gather_rows_f64(dst, src, rows, n_rows, n_cols)


cdef inline void one_hot(floating* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                         Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    if floating is float:
        fbp_one_hot_f32(dst, labels, rows, n_rows, n_cols)
    else:
        fbp_one_hot_f64(dst, labels, rows, n_rows, n_cols)


cdef inline double loss_scale(int loss, Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    """The factor that turns summed loss terms into the mean loss of the conventions."""
    if loss == FBP_CCE:
        return 1.0 / n_rows
    return 1.0 / (<double>n_rows * n_cols)


# ---- forward and backward on one batch ----

cdef inline const floating* layer_input(const Layout* plan, floating* work, const floating* x,
                                        int l) noexcept nogil:
    """A_{l-1}, the input of weight layer l (1-based)."""
    if l == 1:
        return x
    return work + plan.output_offsets[l - 1]


cdef void forward_hidden(const Layout* plan, const floating* params, floating* work,
                         const floating* x, int m) noexcept nogil:
    """A_l = f(A_{l-1} W_l + b_l) for every layer but the output."""
    cdef int l, n_in, n_out
    cdef floating* out
    for l in range(1, plan.n_layers):
        n_in = plan.sizes[l - 1]
        n_out = plan.sizes[l]
        out = work + plan.output_offsets[l]
        gemm(False, False, m, n_out, n_in, <floating>1, layer_input(plan, work, x, l), n_in,
             params + plan.weight_offsets[l - 1], n_out, <floating>0, out, n_out)
        bias_activation(out, params + plan.bias_offsets[l - 1], m, n_out, plan.activations[l - 1])


cdef void output_logits(const Layout* plan, const floating* params, floating* work,
                        const floating* x, int m, floating* out) noexcept nogil:
    """out = A_{L-1} W_L, before the bias and the output activation."""
    cdef int L = plan.n_layers
    cdef int n_in = plan.sizes[L - 1], n_out = plan.sizes[L]
    gemm(False, False, m, n_out, n_in, <floating>1, layer_input(plan, work, x, L), n_in,
         params + plan.weight_offsets[L - 1], n_out, <floating>0, out, n_out)


cdef double run_batch(const Layout* plan, floating* params, floating* target, floating* work,
                      const floating* x, const floating* y, int m, int loss, floating scale,
                      floating alpha, floating beta) noexcept nogil:
    """Forward and backward on m rows; returns the summed loss terms.

    target := beta * target + alpha * gradient, where the gradient is `scale` times that
    of the summed loss terms. With target = params, alpha = -lr and beta = 1 this is the
    SGD step, folded into the gradient GEMM; the delta of layer l-1 is taken before W_l
    changes. When the loss is not finite nothing is written.
    """
    cdef int L = plan.n_layers
    cdef int l, n_in, n_out
    cdef floating* delta
    cdef floating* previous_delta
    cdef const floating* a_in
    cdef floating* out = work + plan.output_offsets[L]

    forward_hidden(plan, params, work, x, m)
    output_logits(plan, params, work, x, m, out)
    delta = work + plan.delta_offsets[L % 2]
    cdef double loss_sum = output_layer(out, params + plan.bias_offsets[L - 1], y, delta, m,
                                        plan.sizes[L], plan.activations[L - 1], loss, scale)
    if not isfinite(loss_sum):
        return loss_sum

    for l in range(L, 0, -1):
        n_in = plan.sizes[l - 1]
        n_out = plan.sizes[l]
        a_in = layer_input(plan, work, x, l)
        delta = work + plan.delta_offsets[l % 2]
        if l > 1:
            previous_delta = work + plan.delta_offsets[(l - 1) % 2]
            gemm(False, True, m, n_in, n_out, <floating>1, delta, n_out,
                 params + plan.weight_offsets[l - 1], n_out, <floating>0, previous_delta, n_in)
            activation_backward(previous_delta, a_in, m, n_in, plan.activations[l - 2])
        gemm(True, False, n_in, n_out, m, alpha, a_in, n_in, delta, n_out, beta,
             target + plan.weight_offsets[l - 1], n_out)
        column_sums(target + plan.bias_offsets[l - 1], delta, m, n_out, alpha, beta)
    return loss_sum


# ---- the Python-callable shims ----

def train_epoch(Plan plan, floating[::1] params, floating[::1] work,
                const floating[:, ::1] X, const floating[:, ::1] Y, const Py_ssize_t[::1] labels,
                const Py_ssize_t[::1] order, bint use_order, bint use_labels, int loss,
                Py_ssize_t batch_size, double learning_rate):
    """One epoch of mini-batch SGD in one nogil call.

    Batches are rows order[0:b], order[b:2b], ... (or rows 0:b, b:2b, ... without
    use_order, read in place). Targets are Y's rows, or one-hot rows of `labels`.
    Returns (sum over batches of mean batch loss * batch rows, rows trained); training
    stops before the first batch whose loss is not finite.
    """
    cdef const Layout* layout = &plan.layout
    cdef Py_ssize_t n_samples = X.shape[0]
    cdef Py_ssize_t n_in = layout.sizes[0], n_out = layout.sizes[layout.n_layers]
    cdef Py_ssize_t start = 0, m
    cdef floating* p = &params[0]
    cdef floating* w = &work[0]
    cdef floating* batch_x = w + layout.batch_x_offset
    cdef floating* batch_y = w + layout.batch_y_offset
    cdef const floating* x
    cdef const floating* y
    cdef const Py_ssize_t* rows
    cdef floating scale
    cdef double loss_sum, total = 0.0
    cdef floating step = <floating>(-learning_rate)

    with nogil:
        while start < n_samples:
            m = min(batch_size, n_samples - start)
            rows = &order[start] if use_order else NULL
            if use_order:
                gather_rows(batch_x, &X[0, 0], rows, m, n_in)
                x = batch_x
            else:
                x = &X[start, 0]
            if use_labels:
                one_hot(batch_y, &labels[0] if use_order else &labels[start], rows, m, n_out)
                y = batch_y
            elif use_order:
                gather_rows(batch_y, &Y[0, 0], rows, m, n_out)
                y = batch_y
            else:
                y = &Y[start, 0]
            scale = <floating>loss_scale(loss, m, n_out)
            loss_sum = run_batch(layout, p, p, w, x, y, <int>m, loss, scale, step, <floating>1)
            if not isfinite(loss_sum):
                break
            total += loss_sum * scale * m
            start += m
    return total, start


def gradients(Plan plan, const floating[::1] params, floating[::1] grads, floating[::1] work,
              const floating[:, ::1] X, const floating[:, ::1] Y, int loss):
    """grads := gradient of the mean loss over all rows of X; returns the mean loss.

    Rows go through in chunks of plan.capacity; each chunk adds its share.
    """
    cdef const Layout* layout = &plan.layout
    cdef Py_ssize_t n_samples = X.shape[0], n_out = layout.sizes[layout.n_layers]
    cdef Py_ssize_t start = 0, m
    cdef floating scale = <floating>loss_scale(loss, n_samples, n_out)
    cdef double loss_sum, total = 0.0
    with nogil:
        while start < n_samples:
            m = min(layout.capacity, n_samples - start)
            loss_sum = run_batch(layout, <floating*>&params[0], &grads[0], &work[0],
                                 &X[start, 0], &Y[start, 0], <int>m, loss, scale,
                                 <floating>1, <floating>(0 if start == 0 else 1))
            total += loss_sum
            if not isfinite(loss_sum):
                break
            start += m
    return total * scale


def predict(Plan plan, const floating[::1] params, floating[::1] work,
            const floating[:, ::1] X, floating[:, ::1] out):
    """out := the network's output for X, in chunks of plan.capacity rows."""
    cdef const Layout* layout = &plan.layout
    cdef int L = layout.n_layers
    cdef Py_ssize_t n_samples = X.shape[0], start = 0, m
    cdef floating* p = <floating*>&params[0]
    with nogil:
        while start < n_samples:
            m = min(layout.capacity, n_samples - start)
            forward_hidden(layout, p, &work[0], &X[start, 0], <int>m)
            output_logits(layout, p, &work[0], &X[start, 0], <int>m, &out[start, 0])
            bias_activation(&out[start, 0], p + layout.bias_offsets[L - 1], m,
                            layout.sizes[L], layout.activations[L - 1])
            start += m


def output_loss(floating[:, ::1] outputs, const floating[:, ::1] Y, int activation, int loss,
                bint want_gradient):
    """The output kernel on plain arrays: outputs (pre-activation, overwritten with the
    activation) -> (mean loss, gradient of the mean loss w.r.t. the pre-activation)."""
    cdef Py_ssize_t n_rows = outputs.shape[0], n_cols = outputs.shape[1]
    cdef floating scale = <floating>loss_scale(loss, n_rows, n_cols)
    grad = np.empty_like(outputs) if want_gradient else None
    cdef floating[:, ::1] grad_view = grad if want_gradient else outputs
    cdef floating* grad_ptr = &grad_view[0, 0] if want_gradient else NULL
    cdef double total
    bias = np.zeros(n_cols, dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] bias_view = bias
    with nogil:
        total = output_layer(&outputs[0, 0], &bias_view[0], &Y[0, 0], grad_ptr, n_rows, n_cols,
                             activation, loss, scale)
    return total * scale, grad


def all_finite(const floating[:, ::1] X):
    """True if X holds no NaN or infinity."""
    cdef Py_ssize_t n = X.shape[0] * X.shape[1]
    cdef int result
    if n == 0:
        return True
    with nogil:
        if floating is float:
            result = fbp_all_finite_f32(&X[0, 0], n)
        else:
            result = fbp_all_finite_f64(&X[0, 0], n)
    return bool(result)
