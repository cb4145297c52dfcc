# Declarations of the element-wise C kernels in csrc/ (see csrc/fastbp.h).
cdef extern from "fastbp.h" nogil:
    int fbp_all_finite_f32(const float* x, Py_ssize_t n) noexcept
    int fbp_all_finite_f64(const double* x, Py_ssize_t n) noexcept
    void fbp_gather_rows_f32(float* dst, const float* src, const Py_ssize_t* rows,
                             Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept
    void fbp_gather_rows_f64(double* dst, const double* src, const Py_ssize_t* rows,
                             Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept
    void fbp_one_hot_f32(float* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                         Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept
    void fbp_one_hot_f64(double* dst, const Py_ssize_t* labels, const Py_ssize_t* rows,
                         Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept
    void fbp_bias_activation_f32(float* z, const float* bias, Py_ssize_t n_rows,
                                 Py_ssize_t n_cols, int activation) noexcept
    void fbp_bias_activation_f64(double* z, const double* bias, Py_ssize_t n_rows,
                                 Py_ssize_t n_cols, int activation) noexcept
    void fbp_activation_backward_f32(float* delta, const float* a, Py_ssize_t n_rows,
                                     Py_ssize_t n_cols, int activation) noexcept
    void fbp_activation_backward_f64(double* delta, const double* a, Py_ssize_t n_rows,
                                     Py_ssize_t n_cols, int activation) noexcept
    double fbp_output_layer_f32(float* z, const float* bias, const float* y, float* delta,
                                Py_ssize_t n_rows, Py_ssize_t n_cols, int activation,
                                int loss, float scale) noexcept
    double fbp_output_layer_f64(double* z, const double* bias, const double* y, double* delta,
                                Py_ssize_t n_rows, Py_ssize_t n_cols, int activation,
                                int loss, double scale) noexcept
    void fbp_column_sums_f32(float* target, const float* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, float alpha, float beta) noexcept
    void fbp_column_sums_f64(double* target, const double* delta, Py_ssize_t n_rows,
                             Py_ssize_t n_cols, double alpha, double beta) noexcept
    int FBP_CCE
    int FBP_MSE
    int FBP_MAE
    int FBP_BCE
