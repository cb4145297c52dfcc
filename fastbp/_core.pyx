# cython: language_level=3
"""The compiled core: forward, backward, optimizer steps and the epoch loop.

How the pieces fit:
- csrc/ holds the element-wise kernels (bias + activation, output loss and delta,
  dropout, optimizer rules, gathers), one C source for float and double;
- `gemm` (_blas.pxd) does every matrix product through scipy's BLAS;
- `Plan` knows the network's shape and where each array lives: the parameters are one
  flat buffer (W1, b1, W2, b2, ...) and the activations, deltas, masks, gradients and
  batch copies are one flat workspace sized for `capacity` rows, so a step allocates
  nothing;
- `Settings` holds the loss and optimizer hyperparameters and the optimizer's step count;
- `run_batch` is one forward + backward pass on m rows: it writes the gradient
  (alpha=1, beta=0), or, for plain SGD, folds the update into the gradient GEMM
  (alpha=-lr, beta=1 - lr * weight_decay);
- the `def` functions (train_epoch, gradients, predict, ...) are thin shims that take
  the arrays, release the GIL once, and loop in C.
The Python layer validates everything before calling in: no bounds checks here.
"""
from cython cimport floating
from libc.math cimport isfinite, sqrt
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from fastbp._blas cimport gemm
from scipy.linalg.cython_blas cimport sgemm
from fastbp._kernels cimport *

import threading

import numpy as np

# The codes the kernels switch on, named; csrc/fastbp.h is their single source.
ACTIVATION_CODES = {"identity": FBP_IDENTITY, "relu": FBP_RELU, "leaky_relu": FBP_LEAKY_RELU,
                    "sigmoid": FBP_SIGMOID, "tanh": FBP_TANH, "softmax": FBP_SOFTMAX,
                    "elu": FBP_ELU, "softplus": FBP_SOFTPLUS, "gelu": FBP_GELU,
                    "swish": FBP_SWISH}
LOSS_CODES = {"mse": FBP_MSE, "mae": FBP_MAE, "categorical_crossentropy": FBP_CCE,
              "binary_crossentropy": FBP_BCE, "huber": FBP_HUBER}
OPTIMIZER_CODES = {"sgd": FBP_SGD, "momentum": FBP_MOMENTUM, "adam": FBP_ADAM,
                   "rmsprop": FBP_RMSPROP, "adagrad": FBP_ADAGRAD}

# train_epoch's status
cpdef enum Status:
    COMPLETED = 0
    DIVERGED = 1
    INTERRUPTED = 2


cdef struct Layout:
    int n_layers
    int* sizes                      # n_layers + 1 widths, input first
    int* activations                # one code per weight layer
    double* dropout_rates           # per weight layer: dropout applied to its output
    Py_ssize_t* weight_offsets      # into the parameter buffer
    int* forward_chunks             # per weight layer: output columns per forward GEMM call
    int* forward_row_chunks         # per weight layer: batch rows per forward GEMM call
    int* gradient_chunks            # per weight layer: rows of W per weight-gradient GEMM call
    Py_ssize_t* bias_offsets
    # into the workspace, indexed by layer l = 1..n_layers (-1: not kept)
    Py_ssize_t* output_offsets      # A_l = f(Z_l)
    Py_ssize_t* preactivation_offsets   # Z_l, for gelu and swish
    Py_ssize_t* dropped_offsets     # A_l * mask_l, the next layer's input under dropout
    Py_ssize_t* mask_offsets
    Py_ssize_t delta_offsets[2]     # two delta buffers, used in turn going backwards
    Py_ssize_t batch_x_offset       # gathered batch of inputs
    Py_ssize_t batch_y_offset       # gathered (or one-hot) batch of targets
    Py_ssize_t batch_weight_offset  # gathered row weights
    Py_ssize_t gradient_offset      # n_params gradient, when the update is not folded
    Py_ssize_t capacity             # rows the workspace holds
    Py_ssize_t n_params


# OpenBLAS's small-matrix kernels (SkylakeX, Cooperlake, SapphireRapids cores) take NN and
# NT products of at most 100^3 multiply-adds and skip the packing of both operands: a W1
# step's forward product runs 1.6x faster as four such calls than as one packed call.
SMALL_GEMM_MAX_MNK = 1000000
SMALL_GEMM_GRAIN = 16       # chunk widths in whole AVX-512 vectors of floats
# Forward products are cut into 16 batch rows by a multiple of 64 output columns (the
# fastest small-kernel shapes measured: docs/performance.md), and only while the whole
# product is below 64 x 10^6 multiply-adds: past that the packed kernel wins.
SMALL_GEMM_FORWARD_ROWS = 16
SMALL_GEMM_FORWARD_COLUMNS = 64
SMALL_GEMM_FORWARD_MAX_MNK = 64000000


cdef int small_gemm_chunk(Py_ssize_t other_dims, int size) noexcept:
    """The widest multiple of the grain that keeps a product of other_dims x chunk under
    the small-kernel limit, or size (one call) when chunks would be too thin or not needed."""
    cdef Py_ssize_t chunk = SMALL_GEMM_MAX_MNK // max(other_dims, 1)
    chunk -= chunk % SMALL_GEMM_GRAIN
    if chunk < SMALL_GEMM_GRAIN or chunk >= size:
        return size
    return <int>chunk


cdef void cut_forward_product(Layout* plan, int l, Py_ssize_t capacity) noexcept:
    """Weight layer l's (0-based) forward product in calls of SMALL_GEMM_FORWARD_ROWS rows
    by a multiple of SMALL_GEMM_FORWARD_COLUMNS columns under the small-kernel limit, when
    that fits (plan.forward_row_chunks, forward_chunks)."""
    cdef Py_ssize_t n_in = plan.sizes[l], n_out = plan.sizes[l + 1]
    cdef Py_ssize_t rows = min(capacity, <Py_ssize_t>SMALL_GEMM_FORWARD_ROWS)
    cdef Py_ssize_t columns = SMALL_GEMM_MAX_MNK // max(rows * n_in, 1)
    if (capacity * n_in * n_out > SMALL_GEMM_FORWARD_MAX_MNK
            or capacity * n_in * n_out <= SMALL_GEMM_MAX_MNK):   # too big, or small already
        return
    if columns >= n_out:
        columns = n_out
    else:
        columns -= columns % SMALL_GEMM_FORWARD_COLUMNS
        if columns < SMALL_GEMM_FORWARD_COLUMNS:
            return
    plan.forward_row_chunks[l] = <int>rows
    plan.forward_chunks[l] = <int>columns


cdef class Plan:
    """The shape of a network and the layout of its parameter and workspace buffers.

    dropout_rates: one rate per weight layer (0 for none; never the output layer);
    with_gradient: reserve room for a full gradient (optimizers other than plain SGD);
    small_gemm_chunks: cut the forward and weight-gradient products into calls small
    enough for OpenBLAS's small-matrix kernels (only where the BLAS has them, one thread).
    """
    cdef Layout layout
    cdef readonly Py_ssize_t n_params, work_size

    def __cinit__(self, layer_sizes, activations, Py_ssize_t capacity, dropout_rates=None,
                  bint with_gradient=False, bint small_gemm_chunks=False):
        cdef int n_layers = len(activations)
        cdef int l
        cdef Py_ssize_t offset = 0, widest = 0
        cdef Layout* plan = &self.layout
        plan.n_layers = n_layers
        plan.capacity = capacity
        plan.sizes = <int*>malloc((n_layers + 1) * sizeof(int))
        plan.activations = <int*>malloc(n_layers * sizeof(int))
        plan.dropout_rates = <double*>malloc(n_layers * sizeof(double))
        plan.weight_offsets = <Py_ssize_t*>malloc(n_layers * sizeof(Py_ssize_t))
        plan.forward_chunks = <int*>malloc(n_layers * sizeof(int))
        plan.forward_row_chunks = <int*>malloc(n_layers * sizeof(int))
        plan.gradient_chunks = <int*>malloc(n_layers * sizeof(int))
        plan.bias_offsets = <Py_ssize_t*>malloc(n_layers * sizeof(Py_ssize_t))
        plan.output_offsets = <Py_ssize_t*>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        plan.preactivation_offsets = <Py_ssize_t*>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        plan.dropped_offsets = <Py_ssize_t*>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        plan.mask_offsets = <Py_ssize_t*>malloc((n_layers + 1) * sizeof(Py_ssize_t))
        if (not plan.sizes or not plan.activations or not plan.dropout_rates
                or not plan.weight_offsets or not plan.forward_chunks
                or not plan.forward_row_chunks
                or not plan.gradient_chunks or not plan.bias_offsets or not plan.output_offsets
                or not plan.preactivation_offsets or not plan.dropped_offsets
                or not plan.mask_offsets):
            raise MemoryError()
        for l in range(n_layers + 1):
            plan.sizes[l] = layer_sizes[l]
        for l in range(n_layers):
            plan.activations[l] = activations[l]
            plan.dropout_rates[l] = dropout_rates[l] if dropout_rates is not None else 0.0
            plan.weight_offsets[l] = offset
            offset += <Py_ssize_t>layer_sizes[l] * layer_sizes[l + 1]
            plan.forward_chunks[l] = plan.sizes[l + 1]
            plan.forward_row_chunks[l] = <int>max(capacity, 1)
            plan.gradient_chunks[l] = plan.sizes[l]
            if small_gemm_chunks:   # W[chunk, :] += A[:, chunk]^T D (capacity rows)
                cut_forward_product(plan, l, capacity)
                plan.gradient_chunks[l] = small_gemm_chunk(capacity * plan.sizes[l + 1],
                                                           plan.sizes[l])
            plan.bias_offsets[l] = offset
            offset += layer_sizes[l + 1]
            widest = max(widest, <Py_ssize_t>layer_sizes[l + 1])
        plan.n_params = self.n_params = offset

        offset = 0
        for l in range(n_layers + 1):
            plan.output_offsets[l] = plan.preactivation_offsets[l] = -1
            plan.dropped_offsets[l] = plan.mask_offsets[l] = -1
        for l in range(1, n_layers + 1):
            plan.output_offsets[l] = offset
            offset += capacity * layer_sizes[l]
            if fbp_needs_preactivation(plan.activations[l - 1]):
                plan.preactivation_offsets[l] = offset
                offset += capacity * layer_sizes[l]
            if plan.dropout_rates[l - 1] > 0:
                plan.dropped_offsets[l] = offset
                offset += capacity * layer_sizes[l]
                plan.mask_offsets[l] = offset
                offset += capacity * layer_sizes[l]
        for l in range(2):
            plan.delta_offsets[l] = offset
            offset += capacity * widest
        plan.batch_x_offset = offset
        offset += capacity * layer_sizes[0]
        plan.batch_y_offset = offset
        offset += capacity * layer_sizes[n_layers]
        plan.batch_weight_offset = offset
        offset += capacity
        plan.gradient_offset = offset if with_gradient else -1
        offset += self.n_params if with_gradient else 0
        self.work_size = offset

    def __dealloc__(self):
        free(self.layout.sizes)
        free(self.layout.activations)
        free(self.layout.dropout_rates)
        free(self.layout.weight_offsets)
        free(self.layout.forward_chunks)
        free(self.layout.forward_row_chunks)
        free(self.layout.gradient_chunks)
        free(self.layout.bias_offsets)
        free(self.layout.output_offsets)
        free(self.layout.preactivation_offsets)
        free(self.layout.dropped_offsets)
        free(self.layout.mask_offsets)

    @property
    def capacity(self):
        return self.layout.capacity

    @property
    def gemm_chunks(self):
        """Per weight layer: (batch rows and output columns per forward call, W rows per
        gradient call)."""
        return [((self.layout.forward_row_chunks[l], self.layout.forward_chunks[l]),
                 self.layout.gradient_chunks[l]) for l in range(self.layout.n_layers)]

    def gradient_blocks(self, int layer, bint stepping):
        """Weight layer `layer`'s (1-based) gradient GEMM calls as run_batch makes them:
        [(offset into the parameter buffer, elements)], one per block of W's rows."""
        cdef Py_ssize_t n_in = self.layout.sizes[layer - 1], n_out = self.layout.sizes[layer]
        cdef Py_ssize_t w = self.layout.weight_offsets[layer - 1], start = 0, rows
        cdef Py_ssize_t block = gradient_block_rows(&self.layout, layer, stepping)
        blocks = []
        while start < n_in:
            rows = min(block, n_in - start)
            blocks.append((w + start * n_out, rows * n_out))
            start += rows
        return blocks

    def parameter_views(self, params):
        """Split a flat parameter-shaped buffer into views: (weights, biases)."""
        weights, biases = [], []
        for l in range(self.layout.n_layers):
            n_in, n_out = self.layout.sizes[l], self.layout.sizes[l + 1]
            start = self.layout.weight_offsets[l]
            weights.append(params[start:start + n_in * n_out].reshape(n_in, n_out))
            start = self.layout.bias_offsets[l]
            biases.append(params[start:start + n_out])
        return weights, biases


cdef struct Hyper:
    int loss
    double loss_parameter           # Huber's delta
    int optimizer
    double learning_rate, weight_decay, momentum, beta1, beta2, epsilon, clip_norm
    bint nesterov, decoupled_weight_decay
    double step                     # optimizer steps taken so far (Adam's t)


cdef class Settings:
    """The loss and optimizer settings of a fit, and the optimizer's step count."""
    cdef Hyper hyper

    def __init__(self, int loss, double loss_parameter=1.0, int optimizer=FBP_SGD,
                 double learning_rate=0.01, double weight_decay=0.0, double momentum=0.0,
                 bint nesterov=False, double beta1=0.9, double beta2=0.999,
                 double epsilon=1e-8, double clip_norm=0.0, bint decoupled_weight_decay=False,
                 double step=0):
        self.hyper = Hyper(loss=loss, loss_parameter=loss_parameter, optimizer=optimizer,
                           learning_rate=learning_rate, weight_decay=weight_decay,
                           momentum=momentum, beta1=beta1, beta2=beta2, epsilon=epsilon,
                           clip_norm=clip_norm, nesterov=nesterov,
                           decoupled_weight_decay=decoupled_weight_decay, step=step)

    @property
    def step(self):
        return self.hyper.step

    @step.setter
    def step(self, double value):
        self.hyper.step = value

    @property
    def learning_rate(self):
        return self.hyper.learning_rate

    @learning_rate.setter
    def learning_rate(self, double value):
        self.hyper.learning_rate = value

    @property
    def state_layout(self):
        """What the optimizer state holds: the folded momentum keeps mu * velocity, every
        other rule torch's buffers; state of one layout means nothing to the other."""
        return "scaled" if self.folded and self.hyper.optimizer == FBP_MOMENTUM else "plain"

    @property
    def folded(self):
        """The update folds into the gradient GEMM (plain SGD, or momentum without
        Nesterov, and no clipping): no gradient buffer is needed."""
        return self.hyper.clip_norm == 0 and (
            self.hyper.optimizer == FBP_SGD
            or (self.hyper.optimizer == FBP_MOMENTUM and not self.hyper.nesterov))


# ---- fused dispatch to the C kernels (Cython cannot overload C functions) ----

cdef inline void bias_activation(floating* z, const floating* bias, floating* preactivation,
                                 Py_ssize_t n_rows, Py_ssize_t n_cols, int activation) noexcept nogil:
    if floating is float:
        fbp_bias_activation_f32(z, bias, preactivation, n_rows, n_cols, activation)
    else:
        fbp_bias_activation_f64(z, bias, preactivation, n_rows, n_cols, activation)


cdef inline void activation_backward(floating* delta, const floating* a,
                                     const floating* preactivation, Py_ssize_t n_rows,
                                     Py_ssize_t n_cols, int activation) noexcept nogil:
    if floating is float:
        fbp_activation_backward_f32(delta, a, preactivation, n_rows, n_cols, activation)
    else:
        fbp_activation_backward_f64(delta, a, preactivation, n_rows, n_cols, activation)


cdef inline double output_layer(floating* z, const floating* bias, floating* preactivation,
                                const floating* y, const floating* row_weights, floating* delta,
                                Py_ssize_t n_rows, Py_ssize_t n_cols, int activation, int loss,
                                floating loss_parameter, floating scale) noexcept nogil:
    if floating is float:
        return fbp_output_layer_f32(z, bias, preactivation, y, row_weights, delta, n_rows,
                                    n_cols, activation, loss, loss_parameter, scale)
    else:
        return fbp_output_layer_f64(z, bias, preactivation, y, row_weights, delta, n_rows,
                                    n_cols, activation, loss, loss_parameter, scale)


cdef inline void column_sums(floating* target, const floating* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, floating alpha, floating beta) noexcept nogil:
    if floating is float:
        fbp_column_sums_f32(target, delta, n_rows, n_cols, alpha, beta)
    else:
        fbp_column_sums_f64(target, delta, n_rows, n_cols, alpha, beta)


cdef inline Py_ssize_t gather_rows(floating* dst, const floating* src, const Py_ssize_t* rows,
                                   Py_ssize_t n_rows, Py_ssize_t n_cols,
                                   Py_ssize_t n_src) noexcept nogil:
    if floating is float:
        return fbp_gather_rows_f32(dst, src, rows, n_rows, n_cols, n_src)
    else:
        return fbp_gather_rows_f64(dst, src, rows, n_rows, n_cols, n_src)


cdef inline Py_ssize_t gather(floating* dst, const floating* src, const Py_ssize_t* rows,
                              Py_ssize_t n, Py_ssize_t n_src) noexcept nogil:
    if floating is float:
        return fbp_gather_f32(dst, src, rows, n, n_src)
    else:
        return fbp_gather_f64(dst, src, rows, n, n_src)


cdef inline Py_ssize_t one_hot(floating* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                               Py_ssize_t n_rows, Py_ssize_t n_cols,
                               Py_ssize_t n_labels) noexcept nogil:
    if floating is float:
        return fbp_one_hot_f32(dst, labels, rows, n_rows, n_cols, n_labels)
    else:
        return fbp_one_hot_f64(dst, labels, rows, n_rows, n_cols, n_labels)


cdef inline void dropout(floating* out, floating* mask, const floating* a, Py_ssize_t n,
                         double rate, uint64_t* random_state) noexcept nogil:
    if floating is float:
        fbp_dropout_f32(out, mask, a, n, rate, random_state)
    else:
        fbp_dropout_f64(out, mask, a, n, rate, random_state)


cdef inline void multiply(floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fbp_multiply_f32(x, y, n)
    else:
        fbp_multiply_f64(x, y, n)


cdef inline bint all_finite_buffer(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fbp_all_finite_f32(x, n)
    else:
        return fbp_all_finite_f64(x, n)


cdef inline double sum_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fbp_sum_squares_f32(x, n)
    else:
        return fbp_sum_squares_f64(x, n)


cdef inline void scale_in_place(floating* x, Py_ssize_t n, floating factor) noexcept nogil:
    if floating is float:
        fbp_scale_f32(x, n, factor)
    else:
        fbp_scale_f64(x, n, factor)


cdef inline void optimizer_step(floating* params, floating* grads, floating* first,
                                floating* second, Py_ssize_t n, const Hyper* hyper,
                                floating weight_decay) noexcept nogil:
    if floating is float:
        fbp_optimizer_step_f32(params, grads, first, second, n, hyper.optimizer,
                               <float>hyper.learning_rate, weight_decay, <float>hyper.momentum,
                               hyper.nesterov, <float>hyper.beta1, <float>hyper.beta2,
                               <float>hyper.epsilon, hyper.step)
    else:
        fbp_optimizer_step_f64(params, grads, first, second, n, hyper.optimizer,
                               hyper.learning_rate, weight_decay, hyper.momentum, hyper.nesterov,
                               hyper.beta1, hyper.beta2, hyper.epsilon, hyper.step)


cdef inline void momentum_step(floating* params, floating* scaled_velocity, Py_ssize_t n,
                               floating learning_rate, floating weight_decay,
                               floating momentum) noexcept nogil:
    if floating is float:
        fbp_momentum_step_f32(params, scaled_velocity, n, learning_rate, weight_decay, momentum)
    else:
        fbp_momentum_step_f64(params, scaled_velocity, n, learning_rate, weight_decay, momentum)


cdef inline double loss_normaliser(int loss, Py_ssize_t n_cols) noexcept nogil:
    """Per-row loss terms times this is the row's share of the mean: CCE sums over the
    outputs, every other loss averages them."""
    return 1.0 if loss == FBP_CCE else 1.0 / n_cols


# ---- forward and backward on one batch ----

cdef inline floating* workspace(floating* work, Py_ssize_t offset) noexcept nogil:
    return work + offset if offset >= 0 else NULL


cdef inline const floating* layer_input(const Layout* plan, floating* work, const floating* x,
                                        int l) noexcept nogil:
    """The input of weight layer l (1-based): A_{l-1}, after dropout when there is one."""
    if l == 1:
        return x
    if plan.dropped_offsets[l - 1] >= 0:
        return work + plan.dropped_offsets[l - 1]
    return work + plan.output_offsets[l - 1]


cdef void forward_product(const Layout* plan, const floating* params, floating* work,
                          const floating* x, int m, int l, floating* out) noexcept nogil:
    """out = A_{l-1} W_l (m rows, before bias and activation), in blocks of rows and
    columns (the plan's forward chunks)."""
    cdef Py_ssize_t n_in = plan.sizes[l - 1], n_out = plan.sizes[l]
    cdef Py_ssize_t chunk = plan.forward_chunks[l - 1], row_chunk = plan.forward_row_chunks[l - 1]
    cdef Py_ssize_t start, columns, row = 0, rows
    cdef const floating* a_in = layer_input(plan, work, x, l)
    cdef const floating* W = params + plan.weight_offsets[l - 1]
    while row < m:
        rows = min(row_chunk, m - row)
        start = 0
        while start < n_out:
            columns = min(chunk, n_out - start)
            gemm(False, False, <int>rows, <int>columns, <int>n_in, <floating>1,
                 a_in + row * n_in, <int>n_in, W + start, <int>n_out, <floating>0,
                 out + row * n_out + start, <int>n_out)
            start += columns
        row += rows


cdef void forward_hidden(const Layout* plan, const floating* params, floating* work,
                         const floating* x, int m, uint64_t* random_state) noexcept nogil:
    """A_l = f(A_{l-1} W_l + b_l) for every layer but the output (dropout when the plan
    has it and random_state is given)."""
    cdef int l
    cdef Py_ssize_t n_out
    cdef floating* out
    for l in range(1, plan.n_layers):
        n_out = plan.sizes[l]
        out = work + plan.output_offsets[l]
        forward_product(plan, params, work, x, m, l, out)
        bias_activation(out, params + plan.bias_offsets[l - 1],
                        workspace(work, plan.preactivation_offsets[l]), m, n_out,
                        plan.activations[l - 1])
        if plan.dropped_offsets[l] >= 0:
            dropout(work + plan.dropped_offsets[l], work + plan.mask_offsets[l], out,
                    <Py_ssize_t>m * n_out, plan.dropout_rates[l - 1], random_state)


cdef void output_logits(const Layout* plan, const floating* params, floating* work,
                        const floating* x, int m, floating* out) noexcept nogil:
    """out = A_{L-1} W_L, before the bias and the output activation."""
    forward_product(plan, params, work, x, m, plan.n_layers, out)


# Elements of W a blocked gradient GEMM + optimizer step covers at once (64 K: with the
# optimizer state, a few hundred KB, well inside L2).
cdef enum:
    STEP_BLOCK_ELEMENTS = 65536


cdef enum Update:
    GRADIENT_ONLY = 0   # target := beta * target + gradient: no step
    FOLDED_SGD = 1      # target = params: W <- (1 - lr wd) W - lr grad, in the GEMM
    FOLDED_MOMENTUM = 2 # target = mu * velocity: + grad in the GEMM (beta 1), then
                        # p -= lr v and the scaled velocity for the next step
    LAYER_STEP = 3      # target = gradient buffer, kept at 0 between steps (the rule resets
                        # what it reads) so the GEMM adds with beta 1; each block's rule runs
                        # as soon as its gradient is ready, while it is still in cache


cdef inline Py_ssize_t gradient_block_rows(const Layout* plan, int l,
                                           bint stepping) noexcept nogil:
    """Rows of W_l (1-based) one weight-gradient GEMM covers: the plan's gradient chunk and,
    when an optimizer rule steps each block right after its GEMM, at most
    STEP_BLOCK_ELEMENTS elements."""
    cdef Py_ssize_t block = plan.gradient_chunks[l - 1]
    if stepping:
        block = min(block, max(<Py_ssize_t>1, STEP_BLOCK_ELEMENTS // plan.sizes[l]))
    return block


cdef double run_batch(const Layout* plan, Hyper* hyper, floating* params, floating* target,
                      floating* first, floating* second, floating* work, const floating* x,
                      const floating* y, const floating* row_weights, int m, floating scale,
                      int update, floating beta, uint64_t* random_state) noexcept nogil:
    """Forward and backward on m rows; returns the (weighted) summed loss terms.

    The gradient is `scale` times that of the summed loss terms; `update` says what
    becomes of it (see Update). For GRADIENT_ONLY, target := beta * target + gradient.
    The delta of layer l-1 is always taken before W_l changes. When the loss is not
    finite nothing is written and no step is counted.
    """
    cdef int L = plan.n_layers
    cdef int l
    cdef Py_ssize_t n_in, n_out, start, rows, block, w
    cdef bint stepping = update == FOLDED_MOMENTUM or update == LAYER_STEP
    cdef floating* delta
    cdef floating* previous_delta
    cdef const floating* a_in
    cdef floating* out = work + plan.output_offsets[L]
    cdef floating alpha = 1, weight_beta = beta, bias_beta = beta

    forward_hidden(plan, params, work, x, m, random_state)
    output_logits(plan, params, work, x, m, out)
    delta = work + plan.delta_offsets[L % 2]
    cdef double loss_sum = output_layer(out, params + plan.bias_offsets[L - 1],
                                        workspace(work, plan.preactivation_offsets[L]), y,
                                        row_weights, delta, m, plan.sizes[L],
                                        plan.activations[L - 1], hyper.loss,
                                        <floating>hyper.loss_parameter, scale)
    if not isfinite(loss_sum):
        return loss_sum
    if update != GRADIENT_ONLY:
        hyper.step += 1
    if update == FOLDED_SGD:
        alpha = <floating>(-hyper.learning_rate)
        weight_beta = <floating>(1.0 - hyper.learning_rate * hyper.weight_decay)
        bias_beta = 1
    elif update == FOLDED_MOMENTUM:
        weight_beta = bias_beta = 1
    elif update == LAYER_STEP:
        weight_beta = bias_beta = 1

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
                multiply(previous_delta, work + plan.mask_offsets[l - 1], m * n_in)
            activation_backward(previous_delta, work + plan.output_offsets[l - 1],
                                workspace(work, plan.preactivation_offsets[l - 1]), m, n_in,
                                plan.activations[l - 2])
        w = plan.weight_offsets[l - 1]
        # A block of W's rows at a time (plan.gradient_chunks); with an optimizer rule each
        # block is stepped right after its GEMM while it and its state are still in L2 (a
        # whole layer and its state may not be).
        block = gradient_block_rows(plan, l, stepping)
        start = 0
        while start < n_in:
            rows = min(block, n_in - start)
            gemm(True, False, <int>rows, <int>n_out, m, alpha, a_in + start, <int>n_in, delta,
                 <int>n_out, weight_beta, target + w + start * n_out, <int>n_out)
            if stepping:
                step_slice(hyper, params, target, first, second, update,
                           w + start * n_out, rows * n_out, True)
            start += rows
        column_sums(target + plan.bias_offsets[l - 1], delta, m, n_out, alpha, bias_beta)
        if update == FOLDED_MOMENTUM or update == LAYER_STEP:
            step_slice(hyper, params, target, first, second, update, plan.bias_offsets[l - 1],
                       n_out, False)
    return loss_sum


cdef inline void step_slice(const Hyper* hyper, floating* params, floating* grads,
                            floating* first, floating* second, int update, Py_ssize_t offset,
                            Py_ssize_t n, bint weights) noexcept nogil:
    """The optimizer's rule on params[offset:offset + n] from grads there (for
    FOLDED_MOMENTUM, grads is the scaled velocity the GEMM just added the gradient to).
    Weight decay applies to weights, not biases."""
    cdef floating weight_decay = <floating>hyper.weight_decay if weights else 0
    if weights and hyper.decoupled_weight_decay:   # p <- p (1 - lr wd), then the rule
        scale_in_place(params + offset, n,
                       <floating>(1.0 - hyper.learning_rate * hyper.weight_decay))
        weight_decay = 0
    if update == FOLDED_MOMENTUM:
        momentum_step(params + offset, grads + offset, n, <floating>hyper.learning_rate,
                      weight_decay, <floating>hyper.momentum)
    else:
        optimizer_step(params + offset, grads + offset, first + offset if first else NULL,
                       second + offset if second else NULL, n, hyper, weight_decay)


cdef void clip_and_update(const Layout* plan, Hyper* hyper, floating* params, floating* grads,
                          floating* first, floating* second) noexcept nogil:
    """One optimizer step from the whole gradient in grads, clipped by its norm first."""
    cdef int l
    # torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (norm + 1e-6))
    cdef double coefficient = hyper.clip_norm / (sqrt(sum_squares(grads, plan.n_params)) + 1e-6)
    if coefficient < 1:
        scale_in_place(grads, plan.n_params, <floating>coefficient)
    hyper.step += 1
    for l in range(plan.n_layers):
        step_slice(hyper, params, grads, first, second, LAYER_STEP, plan.weight_offsets[l],
                   <Py_ssize_t>plan.sizes[l] * plan.sizes[l + 1], True)
        step_slice(hyper, params, grads, first, second, LAYER_STEP, plan.bias_offsets[l],
                   plan.sizes[l + 1], False)


# ---- the Python-callable shims ----

def train_epoch(Plan plan, Settings settings, floating[::1] params, floating[::1] work,
                floating[:, ::1] state, const floating[:, ::1] X, const floating[:, ::1] Y,
                const Py_ssize_t[::1] labels, const floating[::1] row_weights,
                const Py_ssize_t[::1] order, Py_ssize_t batch_size, uint64_t random_seed,
                bint interruptible=False):
    """One epoch of mini-batch training in one nogil call.

    Batches are rows order[0:b], order[b:2b], ... (rows 0:b, b:2b, ... read in place when
    order is empty). Targets are Y's rows, or one-hot rows of `labels` when Y is empty;
    rows are weighted by row_weights unless it is empty. state holds the optimizer's
    moments, (2, n_params), or is empty for plain SGD. interruptible: stop at the next
    batch once SIGINT arrives (only a fit between catch_interrupts and release_interrupts,
    on the main thread). Returns (weighted loss total, weight total, rows trained, status):
    the epoch's mean loss is the ratio of the first two; status is COMPLETED, DIVERGED (the
    batch at `rows trained` had a non-finite loss, nothing was changed by it; or an update
    overflowed: the parameters or the optimizer state are no longer finite) or INTERRUPTED
    (SIGINT, at a batch boundary).

    The arrays are read in place, so they may change between the caller's checks and this
    call, or during it: every index read (order, labels) is checked as it is read, and an
    index out of range raises ValueError, the batches before it having been trained.
    """
    cdef const Layout* layout = &plan.layout
    cdef Hyper* hyper = &settings.hyper
    cdef Py_ssize_t n_samples = X.shape[0]
    cdef Py_ssize_t n_in = layout.sizes[0], n_out = layout.sizes[layout.n_layers]
    cdef Py_ssize_t start = 0, m, i, bad = -1
    cdef int failed_gather = 0      # which gather found an index out of range (GATHERED_*)
    cdef bint use_order = order.shape[0] > 0, use_labels = Y.shape[0] == 0
    cdef bint use_weights = row_weights.shape[0] > 0, clipping = hyper.clip_norm > 0
    cdef floating* p = &params[0]
    cdef floating* w = &work[0]
    cdef floating* batch_x = w + layout.batch_x_offset
    cdef floating* batch_y = w + layout.batch_y_offset
    cdef floating* batch_weights = w + layout.batch_weight_offset
    cdef floating* grads = workspace(w, layout.gradient_offset)
    cdef floating* first = &state[0, 0] if state.shape[0] > 0 else NULL
    cdef floating* second = &state[1, 0] if state.shape[0] > 1 else NULL
    cdef Py_ssize_t first_size = state.shape[0] * state.shape[1]  # the state from `first` on
    cdef const floating* x
    cdef const floating* y
    cdef const floating* weights = NULL
    cdef const Py_ssize_t* rows
    cdef double weight_sum, loss_sum, loss_total = 0.0, weight_total = 0.0
    cdef double normaliser = loss_normaliser(hyper.loss, n_out)
    cdef floating scale
    cdef int status = COMPLETED
    cdef uint64_t random_state = random_seed | 1
    cdef int update = LAYER_STEP
    cdef floating* target = grads
    if grads:   # the rules leave it at 0 after each step
        memset(grads, 0, layout.n_params * sizeof(floating))
    if clipping:            # the norm needs the whole gradient before any step
        update = GRADIENT_ONLY
    elif hyper.optimizer == FBP_SGD:
        update, target = FOLDED_SGD, p
    elif hyper.optimizer == FBP_MOMENTUM and not hyper.nesterov:
        update, target = FOLDED_MOMENTUM, first

    with nogil:
        while start < n_samples:
            if interruptible and fbp_interrupt_requested:
                status = INTERRUPTED
                break
            m = min(batch_size, n_samples - start)
            rows = &order[start] if use_order else NULL
            if use_order:
                bad = gather_rows(batch_x, &X[0, 0], rows, m, n_in, n_samples)
                if bad >= 0:
                    failed_gather = GATHERED_X
                    break
                x = batch_x
            else:
                x = &X[start, 0]
            if use_labels:
                bad = one_hot(batch_y, &labels[0] if use_order else &labels[start], rows, m,
                              n_out, labels.shape[0] if use_order else labels.shape[0] - start)
                if bad >= 0:
                    failed_gather = GATHERED_LABELS
                    break
                y = batch_y
            elif use_order:
                bad = gather_rows(batch_y, &Y[0, 0], rows, m, n_out, Y.shape[0])
                if bad >= 0:
                    failed_gather = GATHERED_Y
                    break
                y = batch_y
            else:
                y = &Y[start, 0]
            if use_weights:
                if use_order:
                    bad = gather(batch_weights, &row_weights[0], rows, m, row_weights.shape[0])
                    if bad >= 0:
                        failed_gather = GATHERED_WEIGHTS
                        break
                    weights = batch_weights
                else:
                    weights = &row_weights[start]
                weight_sum = 0
                for i in range(m):
                    weight_sum += weights[i]
            else:
                weight_sum = m
            if weight_sum > 0:   # a batch whose rows all weigh 0 teaches nothing
                scale = <floating>(normaliser / weight_sum)
                loss_sum = run_batch(layout, hyper, p, target, first, second, w, x, y,
                                     weights, <int>m, scale, update, 1, &random_state)
                if not isfinite(loss_sum):
                    status = DIVERGED
                    break
                if clipping:
                    clip_and_update(layout, hyper, p, grads, first, second)
                loss_total += loss_sum * normaliser
                weight_total += weight_sum
            start += m
        # An update can overflow with a finite loss: in the parameters, or only in the
        # optimizer's state (Adam's g^2 past FLT_MAX), where it would freeze weights silently.
        if bad < 0 and status != DIVERGED and not (
                all_finite_buffer(p, layout.n_params)
                and all_finite_buffer(first if first else p, first_size)):
            status = DIVERGED
    if bad >= 0:
        raise_bad_index(order, labels, start + bad, use_order, failed_gather, n_out)
    return loss_total, weight_total, start, status


cdef enum Gathered:
    GATHERED_X = 1
    GATHERED_LABELS = 2
    GATHERED_Y = 3
    GATHERED_WEIGHTS = 4


cdef raise_bad_index(const Py_ssize_t[::1] order, const Py_ssize_t[::1] labels,
                     Py_ssize_t position, bint use_order, int failed_gather, Py_ssize_t n_out):
    """The ValueError for the index train_epoch found out of range at row `position` of the
    epoch (the arrays may be changing still: this names what it reads now)."""
    cdef Py_ssize_t row = order[position] if use_order else position
    if failed_gather == GATHERED_LABELS and 0 <= row < labels.shape[0]:
        raise ValueError(f"labels[{row}] = {labels[row]} is not a class of this model "
                         f"(0..{n_out - 1}): were the labels changed after the fit checked "
                         f"them?")
    name = {GATHERED_X: "X", GATHERED_LABELS: "labels", GATHERED_Y: "Y",
            GATHERED_WEIGHTS: "row_weights"}[failed_gather]
    raise ValueError(f"row {row} (order[{position}]) is out of range for {name}")


def gradients(Plan plan, Settings settings, const floating[::1] params, floating[::1] grads,
              floating[::1] work, const floating[:, ::1] X, const floating[:, ::1] Y):
    """grads := gradient of the mean loss over all rows of X; returns the mean loss.

    Rows go through in chunks of plan.capacity; each chunk adds its share.
    """
    cdef const Layout* layout = &plan.layout
    cdef Py_ssize_t n_samples = X.shape[0], n_out = layout.sizes[layout.n_layers]
    cdef Py_ssize_t start = 0, m
    cdef floating scale = <floating>(loss_normaliser(settings.hyper.loss, n_out) / n_samples)
    cdef double loss_sum, total = 0.0
    cdef floating beta
    with nogil:
        while start < n_samples:
            m = min(layout.capacity, n_samples - start)
            beta = 0 if start == 0 else 1
            loss_sum = run_batch(layout, &settings.hyper, <floating*>&params[0], &grads[0],
                                 NULL, NULL, &work[0], &X[start, 0], &Y[start, 0], NULL, <int>m,
                                 scale, GRADIENT_ONLY, beta, NULL)
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
    cdef floating* w = &work[0]
    with nogil:
        while start < n_samples:
            m = min(layout.capacity, n_samples - start)
            forward_hidden(layout, p, w, &X[start, 0], <int>m, NULL)
            output_logits(layout, p, w, &X[start, 0], <int>m, &out[start, 0])
            bias_activation(&out[start, 0], p + layout.bias_offsets[L - 1],
                            workspace(w, layout.preactivation_offsets[L]), m,
                            layout.sizes[L], layout.activations[L - 1])
            start += m


def evaluate(Plan plan, Settings settings, const floating[::1] params, floating[::1] work,
             const floating[:, ::1] X, const floating[:, ::1] Y, floating[:, ::1] out):
    """out := the network's output for X; returns the mean loss against Y (no backward)."""
    cdef const Layout* layout = &plan.layout
    cdef int L = layout.n_layers
    cdef Py_ssize_t n_samples = X.shape[0], start = 0, m
    cdef floating* p = <floating*>&params[0]
    cdef floating* w = &work[0]
    cdef double normaliser = loss_normaliser(settings.hyper.loss, layout.sizes[L])
    cdef double total = 0.0
    with nogil:
        while start < n_samples:
            m = min(layout.capacity, n_samples - start)
            forward_hidden(layout, p, w, &X[start, 0], <int>m, NULL)
            output_logits(layout, p, w, &X[start, 0], <int>m, &out[start, 0])
            total += output_layer(&out[start, 0], p + layout.bias_offsets[L - 1],
                                  workspace(w, layout.preactivation_offsets[L]), &Y[start, 0],
                                  NULL, NULL, m, layout.sizes[L], layout.activations[L - 1],
                                  settings.hyper.loss, <floating>settings.hyper.loss_parameter,
                                  <floating>1)
            start += m
    return total * normaliser / n_samples


def output_loss(floating[:, ::1] outputs, const floating[:, ::1] Y, int activation, int loss,
                double loss_parameter, bint want_gradient):
    """The output kernel on plain arrays: outputs (pre-activation, overwritten with the
    activation) -> (mean loss, gradient of the mean loss w.r.t. the pre-activation)."""
    cdef Py_ssize_t n_rows = outputs.shape[0], n_cols = outputs.shape[1]
    cdef floating scale = <floating>(loss_normaliser(loss, n_cols) / n_rows)
    dtype = np.float32 if floating is float else np.float64
    grad = np.empty_like(outputs) if want_gradient else None
    cdef floating[:, ::1] grad_view = grad if want_gradient else outputs
    cdef floating* grad_ptr = &grad_view[0, 0] if want_gradient else NULL
    cdef floating[:, ::1] preactivation
    cdef floating* preactivation_ptr = NULL
    if fbp_needs_preactivation(activation):   # gelu and swish: their gradient needs z
        preactivation = np.empty_like(outputs)
        preactivation_ptr = &preactivation[0, 0]
    cdef floating[::1] bias = np.zeros(n_cols, dtype=dtype)
    cdef double total
    with nogil:
        total = output_layer(&outputs[0, 0], &bias[0], preactivation_ptr, &Y[0, 0],
                             NULL, grad_ptr, n_rows, n_cols, activation, loss,
                             <floating>loss_parameter, scale)
    return total * scale, grad


def gemm_floor(Plan plan, floating[::1] scratch, floating[::1] work,
               const floating[:, ::1] X, Py_ssize_t batch_size, Py_ssize_t n_steps):
    """For benchmarks: n_steps of plain-SGD training's matrix products and nothing else.

    The same gemm calls, shapes, chunks and flags as run_batch with FOLDED_SGD, on
    consecutive batches of X (no gather, no element-wise kernel, no loss); the weight
    products write into scratch (a copy of the parameters) and the deltas are whatever work
    holds. Its speed is what training would reach if everything but BLAS were free.
    """
    cdef const Layout* layout = &plan.layout
    cdef int L = layout.n_layers
    cdef int l, m
    cdef Py_ssize_t n_in, n_out, start_row, rows, step, start = 0, n_samples = X.shape[0]
    cdef floating* p = &scratch[0]
    cdef floating* w = &work[0]
    cdef floating* delta
    cdef const floating* x
    if n_samples < batch_size or batch_size > layout.capacity or layout.n_params != scratch.shape[0]:
        raise ValueError("gemm_floor: X, batch_size or scratch do not fit the plan")
    m = <int>batch_size
    with nogil:
        for step in range(n_steps):
            if start + m > n_samples:
                start = 0
            x = &X[start, 0]
            for l in range(1, L + 1):
                forward_product(layout, p, w, x, m, l, w + layout.output_offsets[l])
            for l in range(L, 0, -1):
                n_in = layout.sizes[l - 1]
                n_out = layout.sizes[l]
                delta = w + layout.delta_offsets[l % 2]
                if l > 1:
                    gemm(False, True, m, <int>n_in, <int>n_out, <floating>1, delta, <int>n_out,
                         p + layout.weight_offsets[l - 1], <int>n_out, <floating>0,
                         w + layout.delta_offsets[(l - 1) % 2], <int>n_in)
                start_row = 0
                while start_row < n_in:
                    rows = min(<Py_ssize_t>layout.gradient_chunks[l - 1], n_in - start_row)
                    gemm(True, False, <int>rows, <int>n_out, m, <floating>-1e-3,
                         layer_input(layout, w, x, l) + start_row, <int>n_in, delta, <int>n_out,
                         <floating>1, p + layout.weight_offsets[l - 1] + start_row * n_out,
                         <int>n_out)
                    start_row += rows
            start += m

def blas_address():
    """The address of the sgemm fastbp calls, to find the library that provides it."""
    return <size_t><void*>sgemm


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


def catch_interrupts():
    """Route SIGINT to the flag that interruptible epochs poll, around a fit on the main
    thread (the only thread Python delivers SIGINT to); pair with release_interrupts()."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("only a fit on the main thread catches SIGINT")
    if fbp_catch_interrupts() != 0:
        raise OSError("could not install the SIGINT handler")


def interrupt_requested():
    """True if SIGINT arrived since the outermost catch_interrupts() (always False off the
    main thread: no fit there is interrupted by SIGINT)."""
    cdef bint requested = fbp_interrupt_requested
    return requested and threading.current_thread() is threading.main_thread()


def release_interrupts():
    """Undo one catch_interrupts(): the outermost restores the previous SIGINT handler and
    clears the flag. True if SIGINT arrived meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("only a fit on the main thread catches SIGINT")
    return fbp_release_interrupts() == 1
