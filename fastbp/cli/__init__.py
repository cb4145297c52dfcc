"""The command line: `fastbp train | predict | evaluate | info | demo | bench` (docs/cli.md).

`fastbp` (the console script) and `python -m fastbp` both call `main`. Every subcommand has
`--help`. A user mistake (a missing file, an unknown column, a bad option value, data fastbp
cannot use) ends with one line on stderr, `fastbp <command>: error: <what to fix>`, and exit
status 2; set FASTBP_TRACEBACK=1 in the environment to see the traceback as well.

`train` writes the model (`--output`, default model.fbp) and, next to it, a sidecar
`<model>.json` with what the model file does not hold: the loss, the feature and target
column names, the class labels and the names of the outputs. `predict` and `evaluate` read
it to pick the feature columns by name and to turn output columns back into the original
labels; a model without a sidecar (saved from Python) works too, with positional columns and
class indices.

The package, by concern:
    parser     the argument parser: options, help texts, argparse value types
    tables     reading CSV, NPY and NPZ input into a Table; choosing feature/target columns
    targets    turning target columns into what a loss takes (labels, one-hot, numbers)
    sidecar    the model's sidecar file: its path, writing, reading and checking it
    outputs    writing output files (checks, same-file refusal) and CSV
    train, predict, evaluate, info, bench    one module per command (bench has demo too)
    errors     exit statuses, UsageError, one-line messages
"""
from __future__ import annotations

import sys
import traceback
import warnings

from fastbp.cli.bench import repository_bench
from fastbp.cli.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, one_line
from fastbp.cli.info import describe
from fastbp.cli.outputs import silence_stdout
from fastbp.cli.parser import build_parser, check_ranges
from fastbp.cli.predict import predicted_labels
from fastbp.cli.sidecar import read_sidecar, sidecar_path
from fastbp.cli.tables import Table, read_table, select_columns
from fastbp.cli.targets import encode_labels, encode_targets

__all__ = ["main", "build_parser", "UsageError", "EXIT_USAGE", "EXIT_DIVERGED",
           "EXIT_INTERRUPTED", "Table", "read_table", "select_columns", "encode_labels",
           "encode_targets", "sidecar_path", "read_sidecar", "predicted_labels", "describe",
           "repository_bench"]


def main(argv=None) -> int:
    """Run the command line with `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        show_traceback = _traceback_switch()
    except ValueError as error:
        print(f"fastbp: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:          # --help, --version, or argparse's own usage error
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command = args.command
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(command)
        try:
            check_ranges(args)
            return args.handler(args)
        except (ValueError, TypeError, OSError, KeyError, ImportError, MemoryError) as error:
            if isinstance(error, BrokenPipeError):    # `fastbp predict ... | head`
                silence_stdout()
                return 0
            if show_traceback:      # (and the status all the same: 1 says "diverged")
                traceback.print_exc()
            print(f"fastbp {command}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"fastbp {command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _traceback_switch() -> bool:
    """FASTBP_TRACEBACK: 1, true, yes or on shows a failed command's traceback; 0, false, no,
    off or unset its one-line message; anything else is refused (a typo read as off would
    hide the traceback asked for)."""
    from fastbp._core import environment_choice

    return environment_choice("FASTBP_TRACEBACK", ("1", "true", "yes", "on",
                                                   "0", "false", "no", "off")) in (
        "1", "true", "yes", "on")


def _warning_printer(command):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"fastbp {command}: warning: {one_line(Warning(str(message)))}",
              file=sys.stderr)
    return show

