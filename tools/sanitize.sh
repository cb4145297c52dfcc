#!/usr/bin/env bash
# Builds fastbp's checked variants, each in its own copy of the source tree, and runs the
# whole test suite against each.  The repository itself (and an editable install of it)
# is never touched: every build happens under $FASTBP_CHECK_ROOT (default
# /tmp/fastbp-checked/<variant>).
#
#   tools/sanitize.sh [--head] [VARIANT ...] [-- PYTEST_ARGS ...]
#
# VARIANT (default: debug sanitize):
#   debug     FASTBP_DEBUG=1: Cython bounds/initialisation/None checks, checked division, -O0.
#   sanitize  FASTBP_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer (any report
#             aborts the run), then tools/leak_check.py under LeakSanitizer, which fails on any
#             block leaked from the extension.
# --head      take the package and the C sources (fastbp/, csrc/) as committed (HEAD), and
#             everything else (tests, setup.py, tools) from the working tree: for checking
#             new tests while someone is mid-edit in the core.
# PYTHON      the interpreter to use (default: python3); it needs numpy, scipy, Cython,
#             setuptools and the test extras (pytest, hypothesis, ...).
# CC          the C compiler (default: gcc); its libasan is preloaded for the sanitize run.
#
# Why the environment of the sanitize run looks as it does (docs/robustness.md):
#   LD_PRELOAD=libasan.so   CPython is not built with ASan, so its runtime must be loaded
#                           first, before the instrumented extension (libstdc++ right after
#                           it, for C++ extensions of other packages that throw);
#   ASAN_OPTIONS=detect_leaks=0  CPython and numpy leave memory allocated at exit by design;
#                           leaks are checked separately, mid-run, by tools/leak_check.py;
#   PYTHONMALLOC=malloc     every Python object is a malloc block ASan can see (and, for the
#                           leak check, a root LeakSanitizer can scan);
#   allocator_may_return_null=1  an allocation too large for memory returns NULL (NumPy then
#                           raises MemoryError, as without ASan) instead of aborting.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
cc=${CC:-gcc}
root=${FASTBP_CHECK_ROOT:-/tmp/fastbp-checked}
use_head=0
variants=()
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --head) use_head=1 ;;
        --) shift; pytest_args=("$@"); break ;;
        debug|sanitize) variants+=("$1") ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "sanitize.sh: unknown argument $1 (variants: debug, sanitize)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#variants[@]} -gt 0 ] || variants=(debug sanitize)
# faulthandler_timeout: a test hung for 10 minutes gets its stacks dumped where they show
default_args=0
if [ ${#pytest_args[@]} -eq 0 ]; then
    default_args=1
    pytest_args=(-q -p no:cacheprovider -o faulthandler_timeout=600 tests)
fi
python=$(command -v "$python")

copy_tree() {  # copy_tree DEST: the sources as selected, without build outputs
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    # tracked (as in the working tree, deleted ones skipped) and untracked, not ignored
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -x -C "$dest"
    if [ $use_head -eq 1 ]; then
        rm -rf "$dest/fastbp" "$dest/csrc"
        git -C "$repo" archive HEAD fastbp csrc | tar -x -C "$dest"
    fi
}

run_variant() {
    local variant=$1 dest="$root/$1"
    local -a build_env=() run_env=()
    case "$variant" in
        debug) build_env=(FASTBP_DEBUG=1) ;;
        sanitize)
            build_env=(FASTBP_SANITIZE=1 CC="$cc")
            local libasan
            libasan=$("$cc" -print-file-name=libasan.so)
            if [ ! -e "$libasan" ]; then
                echo "sanitize.sh: $cc has no libasan.so (install libasan / gcc)" >&2
                return 1
            fi
            # ASan's reports also go to files (printed below if the run fails)
            # libstdc++ too: ASan resolves the real __cxa_throw when it starts, and a C++
            # extension loaded later (matplotlib's ft2font) that throws otherwise aborts it
            local libstdcxx
            libstdcxx=$("$cc" -print-file-name=libstdc++.so)
            [ -e "$libstdcxx" ] && libasan="$libasan:$libstdcxx"
            run_env=(LD_PRELOAD="$libasan" PYTHONMALLOC=malloc
                     ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:strict_init_order=1:detect_stack_use_after_return=1:log_path="$dest/asan"
                     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)
            ;;
    esac
    echo "== sanitize.sh: $variant build in $dest"
    copy_tree "$dest"
    (cd "$dest" && env "${build_env[@]}" "$python" setup.py -q build_ext --inplace \
        > "$dest/build.log" 2>&1) || { cat "$dest/build.log" >&2; return 1; }
    if [ "$variant" = debug ]; then
        # the directives must have reached the generated C (a stale _core.c once hid them)
        local checks
        checks=$(grep -c "__Pyx_RaiseBufferIndexError" "$dest"/build/cython-debug*/fastbp/_core.c || true)
        if [ "${checks:-0}" -lt 2 ]; then
            echo "sanitize.sh: the debug build's C has no buffer bounds checks" >&2
            return 1
        fi
        echo "   bounds checks in the generated C: $checks"
    fi
    # The copy, not an installed fastbp, must be the one imported.
    (cd "$dest" && env "${run_env[@]}" PYTHONPATH="$dest" "$python" -c "
import sys, fastbp._core as core
assert core.__file__.startswith(sys.argv[1]), core.__file__
print('   imports', core.__file__)" "$dest")
    local -a capture=()
    # sanitizer reports are written by C code to file descriptor 2: capture only Python's
    # sys.stderr, so that they reach the log even when the report ends the process
    [ "$variant" = sanitize ] && capture=(--capture=sys)
    # Dask's local cluster (worker processes started from a threaded process) stalls under
    # ASan without using any CPU: the sanitize run leaves it out, the debug run keeps it
    if [ "$variant" = sanitize ] && [ $default_args -eq 1 ]; then
        capture+=(--ignore=tests/test_dask.py)
    fi
    echo "== sanitize.sh: $variant: pytest ${capture[*]} ${pytest_args[*]}"
    rm -f "$dest"/asan.* "$dest"/ubsan.*
    local started=$SECONDS status=0
    (cd "$dest" && env "${run_env[@]}" PYTHONPATH="$dest" PYTHONDONTWRITEBYTECODE=1 \
        "$python" -m pytest "${capture[@]}" "${pytest_args[@]}") || status=$?
    # (warnings such as "failed to allocate" for a refused huge allocation are not findings)
    local reports
    reports=$(grep -l -E "ERROR: |runtime error|CHECK failed" "$dest"/asan.* "$dest"/ubsan.* \
        2>/dev/null || true)
    if [ -n "$reports" ]; then
        echo "== sanitize.sh: $variant: sanitizer reports:" >&2
        cat $reports >&2
        [ $status -ne 0 ] || status=1
    fi
    if [ $status -ne 0 ]; then
        echo "== sanitize.sh: $variant: FAILED (exit $status)" >&2
        return $status
    fi
    echo "== sanitize.sh: $variant: tests passed in $((SECONDS - started)) s"
    if [ "$variant" = sanitize ]; then
        echo "== sanitize.sh: sanitize: leak check (LeakSanitizer, mid-run)"
        (cd "$dest" && env "${run_env[@]}" \
            ASAN_OPTIONS=detect_leaks=1:leak_check_at_exit=0:abort_on_error=0:allocator_may_return_null=1 \
            PYTHONPATH="$dest" "$python" tools/leak_check.py)
    fi
}

for variant in "${variants[@]}"; do
    run_variant "$variant"
done
echo "== sanitize.sh: all variants passed: ${variants[*]}"
