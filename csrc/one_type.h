/* The kernels for one element type, included by fastbp.h once for float and once for
 * double, with FBP_T (the type), FBP_NAME (its suffix: _f32, _f64) and the FBP_MATH_*
 * functions of that type defined; undefines them after, for the next type. */
#include "softmax.h"
#include "kernels_impl.h"
/* elementwise_impl.h once per level (fastbp.h, FBP_LEVELS), each for its instruction set */
#ifdef FBP_LEVELS
#pragma GCC push_options
#pragma GCC target("avx512f")
#define FBP_LEVEL_NAME(name) FBP_PASTE(FBP_NAME(name), _avx512)
#include "elementwise_impl.h"
#undef FBP_LEVEL_NAME
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FBP_LEVEL_NAME(name) FBP_PASTE(FBP_NAME(name), _avx2)
#include "elementwise_impl.h"
#undef FBP_LEVEL_NAME
#pragma GCC pop_options
#define FBP_LEVEL_NAME(name) FBP_PASTE(FBP_NAME(name), _baseline)
#else
#define FBP_LEVEL_NAME(name) FBP_NAME(name)
#endif
#include "elementwise_impl.h"
#undef FBP_LEVEL_NAME
#include "few_rows.h"
#include "products.h"
#undef FBP_T
#undef FBP_BITS
#undef FBP_NAME
#undef FBP_MATH_EXP
#undef FBP_MATH_FMA
#undef FBP_MATH_LOG_INLINE
#undef FBP_MATH_EXPM1
#undef FBP_MATH_LOG
#undef FBP_MATH_LOG1P
#undef FBP_MATH_TANH
#undef FBP_MATH_ERFC
#undef FBP_MATH_SQRT
#undef FBP_MATH_ABS
