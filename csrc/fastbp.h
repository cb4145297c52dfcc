/* fastbp element-wise kernels.
 *
 * Everything here works on plain row-major arrays; matrix products are BLAS's job
 * (see fastbp/_core.pyx).  The kernels are written once in kernels_impl.h and
 * instantiated for float (suffix _f32) and double (suffix _f64), because Cython
 * cannot overload C functions.  Each switch on the activation or loss sits outside
 * the loops, so the inner loops are simple enough for the compiler to vectorise.
 */
#ifndef FASTBP_H
#define FASTBP_H

#include <math.h>
#include <stddef.h>
#include <string.h>

/* Activation and loss codes; fastbp/_names.py holds the same numbers. */
enum {
    FBP_IDENTITY = 0,
    FBP_RELU = 1,
    FBP_LEAKY_RELU = 2,
    FBP_SIGMOID = 3,
    FBP_TANH = 4,
    FBP_SOFTMAX = 5
};
enum { FBP_MSE = 0, FBP_MAE = 1, FBP_CCE = 2, FBP_BCE = 3 };

#define FBP_LEAKY_SLOPE 0.01
/* Probabilities are clipped to [eps, 1 - eps] before a log when the loss is not
   fused with its output activation (as Keras does). */
#define FBP_PROB_EPS 1e-7

#define FBP_T float
#define FBP_NAME(name) name##_f32
#define FBP_MATH_EXP expf
#define FBP_MATH_LOG logf
#define FBP_MATH_LOG1P log1pf
#define FBP_MATH_TANH tanhf
#define FBP_MATH_ABS fabsf
#include "kernels_impl.h"
#undef FBP_T
#undef FBP_NAME
#undef FBP_MATH_EXP
#undef FBP_MATH_LOG
#undef FBP_MATH_LOG1P
#undef FBP_MATH_TANH
#undef FBP_MATH_ABS

#define FBP_T double
#define FBP_NAME(name) name##_f64
#define FBP_MATH_EXP exp
#define FBP_MATH_LOG log
#define FBP_MATH_LOG1P log1p
#define FBP_MATH_TANH tanh
#define FBP_MATH_ABS fabs
#include "kernels_impl.h"
#undef FBP_T
#undef FBP_NAME
#undef FBP_MATH_EXP
#undef FBP_MATH_LOG
#undef FBP_MATH_LOG1P
#undef FBP_MATH_TANH
#undef FBP_MATH_ABS

#endif
