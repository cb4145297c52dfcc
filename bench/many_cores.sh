#!/usr/bin/env bash
# The measurements that need a quiet machine with more cores than the 2-core dev box: the
# 1-thread table against NumPy and PyTorch, fastbp's thread scaling (1, 2, 4, ... cores and
# the default choice) and the GEMM ceiling at each thread count.
#   bash bench/many_cores.sh OUTDIR        (builds the extension in place first)
# The OpenBLAS variables are unset for these commands only (see bench/README.md).
set -u
out=${1:-bench-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
{ lscpu; nproc; $py -c 'import numpy, scipy, threadpoolctl, sys; print(sys.version, numpy.__version__, scipy.__version__)'; } > "$out/machine.txt" 2>&1
$py setup.py build_ext --inplace -j 4 > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
cores=$($py -c 'import os; print(len(os.sched_getaffinity(0)))')
counts=0; t=1; while [ "$t" -le "$cores" ]; do counts="$counts,$t"; t=$((t * 2)); done
bench="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE timeout ${STAGE_SECONDS:-280} $py bench/compare.py"
# fastbp alone at every power-of-two thread count and at its default (0)
$bench --workloads ${SCALING_WORKLOADS:-W1,W2,W3,W4,W5} --threads "$counts" --peers fastbp \
    --duration 0.5 --repeats 3 --json "$out/scaling.json" 2>&1 | tee "$out/scaling.txt" | tail -40
# the 1-thread table of bench/README.md against the peers
$bench --workloads ${TABLE_WORKLOADS:-W1,W2,W3,W5,P1,W4} --peers ${PEERS:-fastbp,numpy,torch} \
    --duration 1 --repeats 3 --json "$out/table.json" 2>&1 | tee "$out/table.txt" | tail -40
