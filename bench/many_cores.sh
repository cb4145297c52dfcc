#!/usr/bin/env bash
# The measurements that need a quiet machine with more cores than the 2-core dev box, in the
# order they matter, each stage its own bench/compare.py run writing OUTDIR/STAGE.json and
# OUTDIR/STAGE.txt (so a run cut short keeps the stages it finished):
#   scaling-goal   fastbp on W2 and W4 at 1, 2, 4, ... cores and at its default (0)
#   scaling-rest   the same for W1, W5, W3 and P1
#   peers          NumPy and PyTorch beside fastbp on W1, W2, W4 at 1, 8 and all cores,
#                  with the GEMM ceiling at each count
#   split          W2 and W1 at 8 and all cores, row workers (the first layer by rows, by
#                  its inputs, W1 by the hidden units) and BLAS threads alternating in one process
#                  (bench/row_phases.py), and W2's products alone at 8
#   bash bench/many_cores.sh OUTDIR        (builds the extension in place first)
# Epochs are capped at SAMPLES rows (20,000; W4, and W1 and W2 beside the peers, 2,048)
# and windows are short (DURATION,
# 0.3 s) so that the stages before `split` took six minutes on a 16-core Xeon (2026-12-04;
# `split` came after that run); the fastbp workers skip their GEMMs-alone timing. The OpenBLAS variables are unset for these commands only
# (see bench/README.md).
set -u
out=${1:-bench-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
{ lscpu; nproc; $py -c 'import numpy, scipy, threadpoolctl, sys; print(sys.version, numpy.__version__, scipy.__version__)'; } > "$out/machine.txt" 2>&1
cores=$($py -c 'import os; print(len(os.sched_getaffinity(0)))')
$py setup.py build_ext --inplace -j "$cores" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
counts=1; t=2; while [ "$t" -le "$cores" ]; do counts="$counts,$t"; t=$((t * 2)); done
[ "${counts##*,}" = "$cores" ] || counts="$counts,$cores"
samples=${SAMPLES:-20000}
failed=""
ended() {   # ended NAME STATUS: a stage cut short or failed is said, and fails the script
    case $2 in
        0) ;;
        124) echo "== $1: CUT SHORT after ${STAGE_SECONDS:-300} s (STAGE_SECONDS): no table"
             failed="$failed $1" ;;
        *) echo "== $1: FAILED (status $2): see $out/$1*.txt"; failed="$failed $1" ;;
    esac
}
stage() {   # stage NAME compare.py-arguments...
    local name=$1; shift
    echo "== $name: $*"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE timeout "${STAGE_SECONDS:-300}" \
        $py bench/compare.py --duration "${DURATION:-0.3}" --repeats 3 --warmup 0.2 \
        --no-gemm-floor --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.txt" \
        | grep -v '^\[' | grep -v '^ *->'
    ended "$name" "${PIPESTATUS[0]}"
}
stage scaling-goal-W2 --workloads W2 --threads "$counts,0" --peers fastbp --samples "$samples"
stage scaling-goal-W4 --workloads W4 --threads "$counts,0" --peers fastbp --samples 2048 \
    --no-ceiling
stage scaling-rest --workloads W1,W5,W3,P1 --threads "$counts,0" --peers fastbp \
    --samples "$samples"
peer_counts=1; [ "$cores" -gt 8 ] && peer_counts="$peer_counts,8"; [ "$cores" -gt 1 ] && peer_counts="$peer_counts,$cores"
stage peers --workloads W1,W2,W4 --threads "$peer_counts" --peers ${PEERS:-fastbp,numpy,torch} \
    --samples 2048
split_counts=$cores; [ "$cores" -gt 8 ] && split_counts="8,$cores"
echo "== split: bench/row_phases.py --workloads W2,W1 --threads 1,$split_counts"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE timeout "${STAGE_SECONDS:-300}" \
    $py bench/row_phases.py --workloads W2,W1 --threads "1,$split_counts" --rounds 2 \
    2> "$out/split-phases.txt" | tee "$out/split.txt"
ended split "${PIPESTATUS[0]}"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE timeout "${STAGE_SECONDS:-300}" \
    $py bench/compare.py --workloads W2 --threads "${split_counts%%,*}" --peers fastbp \
    --duration "${DURATION:-0.3}" --samples 10000 --no-ceiling --json "$out/split-gemm.json" \
    2>&1 | grep -A3 '^threads = ' | tee -a "$out/split.txt"
ended split-gemm "${PIPESTATUS[0]}"
if [ -n "$failed" ]; then
    echo "stages cut short or failed:$failed"
    exit 1
fi
