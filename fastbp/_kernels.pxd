# Declarations of the element-wise C kernels in csrc/ (see csrc/fastbp.h).
from libc.stdint cimport uint64_t

cdef extern from "fastbp.h" nogil:
    enum:
        FBP_IDENTITY, FBP_RELU, FBP_LEAKY_RELU, FBP_SIGMOID, FBP_TANH, FBP_SOFTMAX,
        FBP_ELU, FBP_SOFTPLUS, FBP_GELU, FBP_SWISH
    enum:
        FBP_MSE, FBP_MAE, FBP_CCE, FBP_BCE, FBP_HUBER
    enum:
        FBP_SGD, FBP_MOMENTUM, FBP_ADAM, FBP_RMSPROP, FBP_ADAGRAD

    int fbp_needs_preactivation(int activation) noexcept
    int fbp_catch_interrupts() noexcept
    int fbp_release_interrupts() noexcept
    volatile int fbp_interrupt_requested

    int fbp_all_finite_f32(const float* x, Py_ssize_t n) noexcept
    int fbp_all_finite_f64(const double* x, Py_ssize_t n) noexcept
    Py_ssize_t fbp_gather_rows_f32(float* dst, const float* src, const Py_ssize_t* rows,
                                   Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t n_src) noexcept
    Py_ssize_t fbp_gather_rows_f64(double* dst, const double* src, const Py_ssize_t* rows,
                                   Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t n_src) noexcept
    Py_ssize_t fbp_gather_f32(float* dst, const float* src, const Py_ssize_t* rows, Py_ssize_t n,
                              Py_ssize_t n_src) noexcept
    Py_ssize_t fbp_gather_f64(double* dst, const double* src, const Py_ssize_t* rows, Py_ssize_t n,
                              Py_ssize_t n_src) noexcept
    Py_ssize_t fbp_one_hot_f32(float* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                               Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t n_labels) noexcept
    Py_ssize_t fbp_one_hot_f64(double* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                               Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t n_labels) noexcept
    void fbp_bias_activation_f32(float* z, const float* bias, float* preactivation,
                                 Py_ssize_t n_rows, Py_ssize_t n_cols, int activation) noexcept
    void fbp_bias_activation_f64(double* z, const double* bias, double* preactivation,
                                 Py_ssize_t n_rows, Py_ssize_t n_cols, int activation) noexcept
    void fbp_activation_backward_f32(float* delta, const float* a, const float* preactivation,
                                     Py_ssize_t n_rows, Py_ssize_t n_cols, int activation) noexcept
    void fbp_activation_backward_f64(double* delta, const double* a, const double* preactivation,
                                     Py_ssize_t n_rows, Py_ssize_t n_cols, int activation) noexcept
    double fbp_output_layer_f32(float* z, const float* bias, float* preactivation, const float* y,
                                const float* row_weights, float* delta, Py_ssize_t n_rows,
                                Py_ssize_t n_cols, int activation, int loss, float loss_parameter,
                                float scale) noexcept
    double fbp_output_layer_f64(double* z, const double* bias, double* preactivation,
                                const double* y, const double* row_weights, double* delta,
                                Py_ssize_t n_rows, Py_ssize_t n_cols, int activation, int loss,
                                double loss_parameter, double scale) noexcept
    void fbp_dropout_f32(float* out, float* mask, const float* a, Py_ssize_t n, double rate,
                         uint64_t* random_state) noexcept
    void fbp_dropout_f64(double* out, double* mask, const double* a, Py_ssize_t n, double rate,
                         uint64_t* random_state) noexcept
    void fbp_multiply_f32(float* x, const float* y, Py_ssize_t n) noexcept
    void fbp_multiply_f64(double* x, const double* y, Py_ssize_t n) noexcept
    void fbp_column_sums_f32(float* target, const float* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, float alpha, float beta) noexcept
    void fbp_column_sums_f64(double* target, const double* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, double alpha, double beta) noexcept
    double fbp_sum_squares_f32(const float* x, Py_ssize_t n) noexcept
    double fbp_sum_squares_f64(const double* x, Py_ssize_t n) noexcept
    void fbp_scale_f32(float* x, Py_ssize_t n, float factor) noexcept
    void fbp_scale_f64(double* x, Py_ssize_t n, double factor) noexcept
    void fbp_optimizer_step_f32(float* params, float* grads, float* first, float* second,
                                Py_ssize_t n, int kind, float learning_rate, float weight_decay,
                                float momentum, int nesterov, float beta1, float beta2,
                                float epsilon, double step) noexcept
    void fbp_optimizer_step_f64(double* params, double* grads, double* first,
                                double* second, Py_ssize_t n, int kind, double learning_rate,
                                double weight_decay, double momentum, int nesterov, double beta1,
                                double beta2, double epsilon, double step) noexcept
    void fbp_momentum_step_f32(float* params, float* scaled_velocity, Py_ssize_t n,
                               float learning_rate, float weight_decay, float momentum) noexcept
    void fbp_momentum_step_f64(double* params, double* scaled_velocity, Py_ssize_t n,
                               double learning_rate, double weight_decay,
                               double momentum) noexcept
