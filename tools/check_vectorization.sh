#!/usr/bin/env bash
# Which loops of the element-wise kernels (csrc/) the compiler vectorises, with the flags
# setup.py uses. Prints one line per loop and instruction-set level: "vectorized" or the
# reason it was not (elementwise_impl.h is compiled once per level, csrc/fastbp.h).
set -euo pipefail
cd "$(dirname "$0")/.."
source_file=$(mktemp --suffix=.c)
trap 'rm -f "$source_file" "${source_file%.c}.o"' EXIT
cat > "$source_file" <<'C'
#include "fastbp.h"
/* Instantiate every kernel with opaque arguments so each is compiled on its own. */
#define USE(f) void *use_##f = (void *)&f;
#define USE_LEVELS(f) USE(f##_avx512) USE(f##_avx2) USE(f##_baseline)
USE(fbp_gather_rows_f32) USE(fbp_one_hot_f32) USE(fbp_dropout_f32) USE(fbp_multiply_f32)
USE(fbp_column_sums_f32) USE(fbp_sum_squares_f32) USE(fbp_scale_f32)
USE_LEVELS(fbp_all_finite_f32) USE_LEVELS(fbp_bias_activation_f32)
USE_LEVELS(fbp_activation_backward_f32) USE_LEVELS(fbp_output_layer_f32)
USE_LEVELS(fbp_optimizer_step_f32) USE_LEVELS(fbp_adam_catch_up_f32)
C
gcc -O3 -fno-trapping-math -fno-math-errno -fopenmp-simd -Icsrc -c "$source_file" \
    -o "${source_file%.c}.o" -fopt-info-vec-optimized -fopt-info-vec-missed 2>&1 \
    | grep -E "(kernels|elementwise)_impl.h:[0-9]+:[0-9]+: (optimized: loop vectorized|missed: not vectorized)" \
    | sed -E 's/^.*\/((kernels|elementwise)_impl.h):([0-9]+):[0-9]+: /\1 line \3: /' \
    | sort -u | sort -t' ' -k1,1 -k3n
