/* fastbp element-wise kernels.
 *
 * Everything here works on plain row-major arrays; matrix products are BLAS's job
 * (see fastbp/_core.pyx).  The kernels are written once in kernels_impl.h and
 * instantiated for float (suffix _f32) and double (suffix _f64), because C cannot
 * overload functions; fastbp/_kernels.pxd.tp declares each once for Cython, with one
 * fused-type wrapper that picks the instance.  Each switch on the activation or loss
 * sits outside the loops, so the inner loops are simple enough for the compiler to
 * vectorise.
 */
#ifndef FASTBP_H
#define FASTBP_H

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* `#pragma omp simd` where the build has -fopenmp-simd (no OpenMP runtime is linked):
   it lets a loop with a float reduction vectorise. */
#define FBP_PRAGMA(text) _Pragma(#text)
#define FBP_PRAGMA_SIMD(clauses) FBP_PRAGMA(omp simd clauses)

/* The instruction sets kernels are compiled for (fastbp._core.KERNEL_ISAS names the two
   past the baseline): the own product kernels' (products.h) and the levels below. */
enum { FBP_ISA_NONE = 0, FBP_ISA_AVX2 = 1, FBP_ISA_AVX512 = 2 };

/* The element-wise kernels whose loops vectorise (elementwise_impl.h: the passes over whole
   parameter buffers, the activation and loss passes, the lazy rules' catch-ups, the sparse
   first layer), the few-row kernels (few_rows.h) and the softmax blocks (softmax.h) are
   compiled once per level where the build can (FBP_LEVELS): baseline x86-64 (FBP_ISA_NONE),
   AVX2 with FMA and AVX-512F, each instance for its set, and run at fbp_level, which fastbp._core
   sets when it loads: the widest level this CPU runs (fbp_widest_level), or a lower one
   FASTBP_KERNEL_ISA names, so that every level's code runs and is tested on any machine
   that has it (_core.kernel_level).  The rest stay at the baseline: the gathers are
   memcpy, dropout's generator is serial, and the column sums and scalings are small next
   to the GEMMs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
    && !defined(FASTBP_NO_MULTIVERSION)
#define FBP_LEVELS 1
#elif defined(__clang__) && defined(__x86_64__)
/* (the levels are made with GCC's target pragmas; README.md, "Set up") */
#warning "fastbp: built by clang, the core has its baseline x86-64 kernels only (no AVX2 or AVX-512 levels: 1.5-2x slower on small batches); build with GCC (CC=gcc) for them"
#endif
static int fbp_level = FBP_ISA_NONE;

static inline int fbp_widest_level(void)
{
#ifdef FBP_LEVELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return FBP_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FBP_ISA_AVX2;
#endif
    return FBP_ISA_NONE;
}

#define FBP_PASTE_TOKENS(a, b) a##b
#define FBP_PASTE(a, b) FBP_PASTE_TOKENS(a, b)

/* Calls `name`'s instance of level fbp_level (name_avx512, name_avx2, name_baseline). */
#define FBP_AT_LEVEL(name, ...)                                                   \
    (fbp_level >= FBP_ISA_AVX512 ? name##_avx512(__VA_ARGS__)                    \
     : fbp_level == FBP_ISA_AVX2 ? name##_avx2(__VA_ARGS__) : name##_baseline(__VA_ARGS__))

/* The activation, loss and optimizer codes the kernels switch on, with the names Python
   uses for them: defined here only.  Each list expands into an enum (FBP_RELU = 1, ...,
   then FBP_N_ACTIVATIONS) and a table of names indexed by code, which fastbp/_core.pyx
   turns into ACTIVATION_CODES, LOSS_CODES and OPTIMIZER_CODES. */
#define FBP_ACTIVATIONS(X) \
    X(FBP_IDENTITY, "identity") X(FBP_RELU, "relu") X(FBP_LEAKY_RELU, "leaky_relu") \
    X(FBP_SIGMOID, "sigmoid") X(FBP_TANH, "tanh") X(FBP_SOFTMAX, "softmax") \
    X(FBP_ELU, "elu") X(FBP_SOFTPLUS, "softplus") X(FBP_GELU, "gelu") X(FBP_SWISH, "swish")
#define FBP_LOSSES(X) \
    X(FBP_MSE, "mse") X(FBP_MAE, "mae") X(FBP_CCE, "categorical_crossentropy") \
    X(FBP_BCE, "binary_crossentropy") X(FBP_HUBER, "huber")
#define FBP_OPTIMIZERS(X) \
    X(FBP_SGD, "sgd") X(FBP_MOMENTUM, "momentum") X(FBP_ADAM, "adam") \
    X(FBP_RMSPROP, "rmsprop") X(FBP_ADAGRAD, "adagrad")

#define FBP_CODE(code, name) code,
#define FBP_CODE_NAME(code, name) name,
enum { FBP_ACTIVATIONS(FBP_CODE) FBP_N_ACTIVATIONS };
enum { FBP_LOSSES(FBP_CODE) FBP_N_LOSSES };
enum { FBP_OPTIMIZERS(FBP_CODE) FBP_N_OPTIMIZERS };
/* Adam's rows of W1 under sparse input (fbp_adam_catch_up; LazyAdam in fastbp/_core.pyx):
   the most terms of each series by which they catch up, for float32 and float64 rows (so
   that a ratio of 0.55 reaches a quarter of the dtype's rounding, two bits more: 0.55^32 <
   2^-26, 0.55^72 < 2^-57) and at most, and up to how many missed steps they step one at a
   time instead (a step costs a square root and a division a weight, about what 4-8 terms
   of the series cost with its own root and division). */
enum { FBP_ADAM_TERMS_FLOAT = 32, FBP_ADAM_TERMS_DOUBLE = 72, FBP_ADAM_TERMS = 72,
       FBP_ADAM_DIRECT_STEPS = 4 };
static const char *const fbp_activation_names[] = { FBP_ACTIVATIONS(FBP_CODE_NAME) };
static const char *const fbp_loss_names[] = { FBP_LOSSES(FBP_CODE_NAME) };
static const char *const fbp_optimizer_names[] = { FBP_OPTIMIZERS(FBP_CODE_NAME) };
#undef FBP_CODE
#undef FBP_CODE_NAME

/* 1 for the activations whose derivative needs the pre-activation z, not only f(z). */
static inline int fbp_needs_preactivation(int activation)
{
    return activation == FBP_GELU || activation == FBP_SWISH;
}

#define FBP_LEAKY_SLOPE 0.01
/* Probabilities are clipped to [eps, 1 - eps] before a log when the loss is not
   fused with its output activation (as Keras does). */
#define FBP_PROB_EPS 1e-7

/* Ctrl-C during a fit.  A signal handler is process-wide, so there is one handler and one
   flag per process; what keeps them from leaking into other fits is who may touch them:
   - only fits on Python's main thread (where Python itself delivers SIGINT) install the
     handler, and only their epochs read the flag (train_epoch's `interruptible`); a fit on
     any other thread never sees it, whatever happened before or meanwhile;
   - fbp_catch_interrupts / fbp_release_interrupts run with the GIL held, on the main thread
     (fastbp/_core.pyx checks), so the nesting depth and the saved action need no lock;
   - the flag is cleared when the outermost fit starts and again when it ends, so a Ctrl-C
     is reported once, by the fit it interrupted. */
static volatile sig_atomic_t fbp_interrupt_requested = 0;

static void fbp_on_interrupt(int signal_number)
{
    (void)signal_number;
    fbp_interrupt_requested = 1;
}

static struct sigaction fbp_previous_action;
static int fbp_handler_installed = 0;
static int fbp_handler_depth = 0;      /* fits nested in callbacks share one handler */

/* Route SIGINT to the flag, unless SIGINT is ignored (a background job's): then nothing
   changes.  Returns -1 if sigaction fails. */
static inline int fbp_catch_interrupts(void)
{
    struct sigaction action;
    if (fbp_handler_depth++ > 0)
        return 0;
    fbp_interrupt_requested = 0;
    if (sigaction(SIGINT, NULL, &fbp_previous_action) != 0) {
        fbp_handler_depth = 0;
        return -1;
    }
    if (fbp_previous_action.sa_handler == SIG_IGN)
        return 0;
    memset(&action, 0, sizeof action);
    action.sa_handler = fbp_on_interrupt;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGINT, &action, NULL) != 0) {
        fbp_handler_depth = 0;
        return -1;
    }
    fbp_handler_installed = 1;
    return 0;
}

/* In a child forked by a thread other than the one holding SIGINT: no fit there will
   release it, so the handler the fit found is put back and the count and flag cleared. */
static inline void fbp_forget_interrupts(void)
{
    if (fbp_handler_installed)
        sigaction(SIGINT, &fbp_previous_action, NULL);
    fbp_handler_installed = 0;
    fbp_handler_depth = 0;
    fbp_interrupt_requested = 0;
}

/* How many fbp_catch_interrupts are in force (fits nested in callbacks, passes in fits). */
static inline int fbp_interrupt_depth(void)
{
    return fbp_handler_depth;
}

/* Undo one fbp_catch_interrupts; returns 1 if SIGINT arrived since the outermost one
   (the flag is cleared when that outermost fit ends), else 0.  Restoring the action saved
   by sigaction itself cannot fail.  An action set during the fit (signal.signal in a
   callback) is the caller's: kept, not replaced by the one the fit found. */
static inline int fbp_release_interrupts(void)
{
    int requested = fbp_interrupt_requested != 0;
    struct sigaction current;
    if (fbp_handler_depth == 0 || --fbp_handler_depth > 0)
        return requested;
    if (fbp_handler_installed) {
        fbp_handler_installed = 0;
        if (sigaction(SIGINT, NULL, &current) != 0 || current.sa_handler == fbp_on_interrupt)
            sigaction(SIGINT, &fbp_previous_action, NULL);
    }
    requested = fbp_interrupt_requested != 0;   /* a SIGINT up to the restore still counts */
    fbp_interrupt_requested = 0;
    return requested;
}

/* Subnormal numbers in a training epoch (docs/contract.md, "Training").  An optimizer's
   state on a row of W1 that no batch names decays by beta at every step (momentum's
   velocity, Adam's first moment) and crosses the subnormal range on its way to 0, where
   each x86 instruction that reads or makes one takes a microcode assist of ~100 cycles:
   S1 with momentum ran 1.45x slower an epoch once its rare rows got there.  So a training
   thread runs with FTZ (subnormal results become 0) and DAZ (subnormal inputs read as 0)
   set in its MXCSR, as TensorFlow's CPU threads do.  fbp_float_mode_enter(flush) sets them
   (flush != 0) or clears them (IEEE gradual underflow) and returns the mode it found, for
   fbp_float_mode_restore on the caller's thread when the epoch returns.  Elsewhere than x86
   both do nothing and subnormals are kept. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FBP_MXCSR_FLUSH 0x8040u   /* FTZ (bit 15) and DAZ (bit 6) */
static inline unsigned fbp_float_mode_enter(int flush)
{
    const unsigned found = _mm_getcsr();
    _mm_setcsr(flush ? found | FBP_MXCSR_FLUSH : found & ~FBP_MXCSR_FLUSH);
    return found;
}

static inline void fbp_float_mode_restore(unsigned found)
{
    _mm_setcsr(found);
}
#else
static inline unsigned fbp_float_mode_enter(int flush) { (void)flush; return 0; }
static inline void fbp_float_mode_restore(unsigned found) { (void)found; }
#endif

/* xorshift64*: a small, fast generator for dropout masks; the state is never 0. */
static inline uint64_t fbp_random_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* expf without libm: x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial
   (about 1 ulp), times 2^n assembled in the exponent bits.  No branches, so a loop over
   it vectorises.  Each multiply-add is an explicit fma: left to the compiler, one loop's
   vector body and its scalar remainder could be fused differently and round
   differently, and a row's softmax would then depend on its place in the batch.  (In
   the kernels' baseline level, for CPUs without FMA, these are calls to fmaf; the AVX2
   level is compiled with FMA for them: without it, as GCC's "avx2" target is, they were
   calls too, docs/performance.md.) */
static inline float fbp_expf(float x)
{
    const float high = 88.0f, low = -87.3365447504019f;
    int underflow = x < low;
    x = x > high ? high : x;
    x = x < low ? low : x;
    float scaled = __builtin_fmaf(x, 1.44269504088896341f, 0.5f);
    int32_t n = (int32_t)scaled - (scaled < 0);
    float fn = (float)n;
    float r = __builtin_fmaf(fn, -0.693359375f, x);
    r = __builtin_fmaf(fn, 2.12194440e-4f, r);
    float y = 1.9875691500e-4f;
    y = __builtin_fmaf(y, r, 1.3981999507e-3f);
    y = __builtin_fmaf(y, r, 8.3334519073e-3f);
    y = __builtin_fmaf(y, r, 4.1665795894e-2f);
    y = __builtin_fmaf(y, r, 1.6666665459e-1f);
    y = __builtin_fmaf(y, r, 5.0000001201e-1f);
    y = __builtin_fmaf(y * r, r, r) + 1.0f;
    int32_t bits = (n + 127) << 23;
    float power;
    memcpy(&power, &bits, sizeof power);
    return underflow ? 0.0f : y * power;
}

/* logf without libm, for the softmax's log of a row's sum of exps: x = 2^e m, m in
   [sqrt(1/2), sqrt(2)), log(m) = f - f^2 / 2 + f^3 P(f) with f = m - 1 by Cephes'
   degree-8 polynomial, plus e ln2 in two parts (within 0.83 ulp of log over every 7th
   positive float).  No branches and explicit fmas, as fbp_expf, so a loop over it
   vectorises and gives the bits a single call does; subnormals are scaled first, and 0,
   negatives, inf and NaN give IEEE's results. */
static inline float fbp_logf(float x)
{
    const int small = x < FLT_MIN;   /* subnormal (or <= 0: taken apart at the end) */
    const float scaled = small ? x * 8388608.0f : x;   /* 2^23 */
    int32_t bits;
    memcpy(&bits, &scaled, sizeof bits);
    int32_t e = ((bits >> 23) & 0xff) - 127 - (small ? 23 : 0);
    const int32_t mantissa_bits = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mantissa_bits, sizeof m);   /* in [1, 2) */
    const int high = m > 1.41421356f;
    m = high ? 0.5f * m : m;
    e += high;
    const float f = m - 1.0f, z = f * f, fe = (float)e;
    float p = 7.0376836292e-2f;
    p = __builtin_fmaf(p, f, -1.1514610310e-1f);
    p = __builtin_fmaf(p, f, 1.1676998740e-1f);
    p = __builtin_fmaf(p, f, -1.2420140846e-1f);
    p = __builtin_fmaf(p, f, 1.4249322787e-1f);
    p = __builtin_fmaf(p, f, -1.6668057665e-1f);
    p = __builtin_fmaf(p, f, 2.0000714765e-1f);
    p = __builtin_fmaf(p, f, -2.4999993993e-1f);
    p = __builtin_fmaf(p, f, 3.3333331174e-1f);
    float y = p * f * z;
    y = __builtin_fmaf(fe, -2.12194440e-4f, y);
    y = __builtin_fmaf(-0.5f, z, y);
    const float r = __builtin_fmaf(fe, 0.693359375f, f + y);
    return x > 0 && x <= FLT_MAX ? r
           : x == 0 ? -__builtin_inff() : x > 0 ? x : __builtin_nanf("");
}

/* Ask the CPU to bring the cache line at `address` into cache.  Every prefetch in a
   function that does nothing else goes through this (fbp_prefetch_rows,
   fbp_prefetch_csr_ahead and their callers in _core.pyx): GCC 12 at -O2 and up (its IPA
   mod-ref analysis) takes such a function for one without effects and deletes the calls
   to it, and to the functions that only call it, so that the rows of W1 a lazy rule steps
   were never asked for ahead (no prefetch instruction in the build before 2026-12-03);
   the empty volatile asm counts as an effect and costs no instruction.  A prefetch inside
   a kernel with other work (products_impl.h's) stays as written. */
static inline void fbp_prefetch(const void *address)
{
    __builtin_prefetch(address);
    __asm__ volatile("" : : "r"(address));
}

/* x rounded to float, as a double.  Through a volatile float: GCC 12 at -O3 dropped
   the rounding of `(float)` casts stored into double fields side by side (two betas in
   one vector move, lazy_rule in _core.pyx), where a lone one was rounded. */
static inline double fbp_float_rounded(double x)
{
    volatile float rounded = (float)x;
    return rounded;
}

/* How far ahead of the row it reads a pass over a sparse batch asks for a later row's
   indptr entries and stored values (fbp_prefetch_csr_ahead). */
enum { FBP_CSR_AHEAD_INDPTR = 8, FBP_CSR_AHEAD_VALUES = 3 };

/* How much of each row of W1 (and of its optimizer state) a sparse pass asks for ahead
   (fbp_prefetch_rows' head_bytes): the row's first lines only.  A prefetch holds one of
   the core's few line fill buffers until its line arrives, and a pass that asked for
   whole rows ahead (a batch row's 27 rows of 1 KiB, or three rows of W1 and Adam's
   moments) filled them all and stalled on its own prefetches; asked for its first lines,
   a row is then read in order, and the hardware's streaming prefetcher, which runs ahead
   of an ascending run of lines without those buffers, brings in the rest
   (docs/performance.md, "Sparse input"). */
enum { FBP_PREFETCH_HEAD_BYTES = 256 };

/* Adam's bias corrections, kept per thread for the step, learning rate and betas they were
   made for (fbp_optimizer_step: a sparse step steps each named row of W1 apart, with the
   same step): FBP_ADAM_KEPT doubles from the heap under a pthread key, or NULL where none
   could be had (then each call makes its own).  Not _Thread_local: glibc makes a loaded
   module's thread-local variables at a thread's first use of them and ends the process
   where it has no memory for them ("cannot allocate memory for thread-local data:
   ABORT", an Adam fit on two threads under a memory limit). */
enum { FBP_ADAM_KEPT = 6 };   /* step, learning rate, beta1, beta2; the two corrections */
static pthread_key_t fbp_adam_key;
static pthread_once_t fbp_adam_key_once = PTHREAD_ONCE_INIT;
static int fbp_adam_key_made;

static void fbp_adam_key_make(void)
{
    fbp_adam_key_made = pthread_key_create(&fbp_adam_key, free) == 0;
}

static inline double *fbp_adam_kept(void)
{
    if (pthread_once(&fbp_adam_key_once, fbp_adam_key_make) != 0 || !fbp_adam_key_made)
        return NULL;
    double *kept = (double *)pthread_getspecific(fbp_adam_key);
    if (kept == NULL) {
        kept = (double *)malloc(FBP_ADAM_KEPT * sizeof(double));
        if (kept == NULL)
            return NULL;
        kept[0] = -1;                               /* no step yet */
        if (pthread_setspecific(fbp_adam_key, kept) != 0) {
            free(kept);
            return NULL;
        }
    }
    return kept;
}

/* Calls kernel `name` (fbp_few_rows_product, _delta, _gradient, fbp_softmax_block) in the
   instance of level fbp_level: name_64 (64-byte vectors, AVX-512F), name_32_avx2 or
   name_32 (32-byte vectors, AVX2 or baseline). */
#ifdef FBP_LEVELS
#define FBP_FEW_WIDEST(name, ...)                                                 \
    (fbp_level >= FBP_ISA_AVX512 ? FBP_NAME(name##_64)(__VA_ARGS__)                \
     : fbp_level == FBP_ISA_AVX2 ? FBP_NAME(name##_32_avx2)(__VA_ARGS__)           \
     : FBP_NAME(name##_32)(__VA_ARGS__))
#else
#define FBP_FEW_WIDEST(name, ...) FBP_NAME(name##_32)(__VA_ARGS__)
#endif

/* Every kernel, once per element type: one_type.h includes them for the FBP_T, FBP_NAME
   and FBP_MATH_* defined here, then undefines those. */
#define FBP_T float
#define FBP_BITS int32_t   /* an integer of FBP_T's size */
#define FBP_NAME(name) name##_f32
#define FBP_MATH_EXP fbp_expf
#define FBP_MATH_FMA __builtin_fmaf
#define FBP_MATH_LOG_INLINE fbp_logf   /* a log a loop can vectorise */
#define FBP_MATH_EXPM1 expm1f
#define FBP_MATH_LOG logf
#define FBP_MATH_LOG1P log1pf
#define FBP_MATH_TANH tanhf
#define FBP_MATH_ERFC erfcf
#define FBP_MATH_SQRT sqrtf
#define FBP_MATH_ABS fabsf
#include "one_type.h"

#define FBP_T double
#define FBP_BITS int64_t
#define FBP_NAME(name) name##_f64
#define FBP_MATH_EXP exp
#define FBP_MATH_FMA __builtin_fma
#define FBP_MATH_LOG_INLINE log
#define FBP_MATH_EXPM1 expm1
#define FBP_MATH_LOG log
#define FBP_MATH_LOG1P log1p
#define FBP_MATH_TANH tanh
#define FBP_MATH_ERFC erfc
#define FBP_MATH_SQRT sqrt
#define FBP_MATH_ABS fabs
#include "one_type.h"

/* elementwise_impl.h's kernels by their plain names, at fbp_level. */
#ifdef FBP_LEVELS
#define fbp_all_finite_f32(...) FBP_AT_LEVEL(fbp_all_finite_f32, __VA_ARGS__)
#define fbp_all_finite_f64(...) FBP_AT_LEVEL(fbp_all_finite_f64, __VA_ARGS__)
#define fbp_largest_magnitude_f32(...) FBP_AT_LEVEL(fbp_largest_magnitude_f32, __VA_ARGS__)
#define fbp_largest_magnitude_f64(...) FBP_AT_LEVEL(fbp_largest_magnitude_f64, __VA_ARGS__)
#define fbp_bias_activation_f32(...) FBP_AT_LEVEL(fbp_bias_activation_f32, __VA_ARGS__)
#define fbp_bias_activation_f64(...) FBP_AT_LEVEL(fbp_bias_activation_f64, __VA_ARGS__)
#define fbp_activation_backward_f32(...) FBP_AT_LEVEL(fbp_activation_backward_f32, __VA_ARGS__)
#define fbp_activation_backward_f64(...) FBP_AT_LEVEL(fbp_activation_backward_f64, __VA_ARGS__)
#define fbp_output_layer_f32(...) FBP_AT_LEVEL(fbp_output_layer_f32, __VA_ARGS__)
#define fbp_output_layer_f64(...) FBP_AT_LEVEL(fbp_output_layer_f64, __VA_ARGS__)
#define fbp_momentum_step_f32(...) FBP_AT_LEVEL(fbp_momentum_step_f32, __VA_ARGS__)
#define fbp_momentum_step_f64(...) FBP_AT_LEVEL(fbp_momentum_step_f64, __VA_ARGS__)
#define fbp_optimizer_step_f32(...) FBP_AT_LEVEL(fbp_optimizer_step_f32, __VA_ARGS__)
#define fbp_optimizer_step_f64(...) FBP_AT_LEVEL(fbp_optimizer_step_f64, __VA_ARGS__)
#define fbp_linear_catch_up_f32(...) FBP_AT_LEVEL(fbp_linear_catch_up_f32, __VA_ARGS__)
#define fbp_linear_catch_up_f64(...) FBP_AT_LEVEL(fbp_linear_catch_up_f64, __VA_ARGS__)
#define fbp_adam_catch_up_f32(...) FBP_AT_LEVEL(fbp_adam_catch_up_f32, __VA_ARGS__)
#define fbp_adam_catch_up_f64(...) FBP_AT_LEVEL(fbp_adam_catch_up_f64, __VA_ARGS__)
#define fbp_sparse_product_f32(...) FBP_AT_LEVEL(fbp_sparse_product_f32, __VA_ARGS__)
#define fbp_sparse_product_f64(...) FBP_AT_LEVEL(fbp_sparse_product_f64, __VA_ARGS__)
#define fbp_sparse_row_gradient_f32(...) FBP_AT_LEVEL(fbp_sparse_row_gradient_f32, __VA_ARGS__)
#define fbp_sparse_row_gradient_f64(...) FBP_AT_LEVEL(fbp_sparse_row_gradient_f64, __VA_ARGS__)
#define fbp_sparse_scatter_f32(...) FBP_AT_LEVEL(fbp_sparse_scatter_f32, __VA_ARGS__)
#define fbp_sparse_scatter_f64(...) FBP_AT_LEVEL(fbp_sparse_scatter_f64, __VA_ARGS__)
#endif

#endif
