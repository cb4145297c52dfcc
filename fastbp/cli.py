"""The command line: `fastbp train | predict | evaluate | info | demo | bench` (docs/cli.md).

`fastbp` (the console script) and `python -m fastbp` both call `main`. Every subcommand has
`--help`. A user mistake (a missing file, an unknown column, a bad option value, data fastbp
cannot use) ends with one line on stderr, `fastbp <command>: error: <what to fix>`, and exit
status 2; set FASTBP_TRACEBACK=1 in the environment to see the traceback instead.

`train` writes the model (`--output`, default model.fbp) and, next to it, a sidecar
`<model>.json` with what the model file does not hold: the loss, the feature and target
column names, the class labels and the names of the outputs. `predict` and `evaluate` read
it to pick the feature columns by name and to turn output columns back into the original
labels; a model without a sidecar (saved from Python) works too, with positional columns and
class indices.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
import warnings

EXIT_USAGE = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "fastbp-cli-sidecar"
SIDECAR_VERSION = 1
CLASSIFICATION_LOSSES = ("categorical_crossentropy", "binary_crossentropy")
PLOT_HINT = 'pip install matplotlib (or pip install "fastbp[plot]")'


class UsageError(ValueError):
    """A mistake in what the user asked for: reported as one line, exit status 2."""


# ============================================================================ entry point

def main(argv=None) -> int:
    """Run the command line with `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:          # --help, --version, or argparse's own usage error
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command = args.command
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(command)
        try:
            return args.handler(args)
        except (ValueError, TypeError, OSError, KeyError, ImportError, MemoryError) as error:
            if os.environ.get("FASTBP_TRACEBACK", "") not in ("", "0"):
                raise
            if isinstance(error, BrokenPipeError):    # `fastbp predict ... | head`
                _silence_stdout()
                return 0
            print(f"fastbp {command}: error: {_one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"fastbp {command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _one_line(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        return f"not enough memory ({error or 'the data or model is too large'})"
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None:
            text += f": {os.fspath(error.filename)}"
    elif isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _warning_printer(command):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"fastbp {command}: warning: {_one_line(Warning(str(message)))}",
              file=sys.stderr)
    return show


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ============================================================================ the parser

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the descriptions and examples."""


def build_parser() -> argparse.ArgumentParser:
    from fastbp import __version__

    parser = argparse.ArgumentParser(
        prog="fastbp", formatter_class=_Formatter,
        description="Fast training of multilayer perceptrons on the CPU.",
        epilog="Each command has --help, e.g. `fastbp train --help`. Guide: docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_, description, epilog, handler):
        sub = commands.add_parser(name, help=help_, description=description, epilog=epilog,
                                  formatter_class=_Formatter)
        sub.set_defaults(handler=handler)
        return sub

    _add_train(command("train", "train a network on a CSV, NPY or NPZ file and save it",
                       TRAIN_DESCRIPTION, TRAIN_EXAMPLES, cmd_train))
    _add_predict(command("predict", "write a model's predictions (CSV or NPY)",
                         "Run a saved model on the rows of INPUT; write probabilities (or, "
                         "with --labels, the predicted labels) as CSV or NPY.",
                         PREDICT_EXAMPLES, cmd_predict))
    _add_evaluate(command("evaluate", "a model's loss and accuracy (or MAE and R²) on data",
                          "The mean loss of a saved model on INPUT, and its accuracy "
                          "(classification) or MAE and R² (regression).",
                          EVALUATE_EXAMPLES, cmd_evaluate))
    info = command("info", "a model's layers, activations, dtype and parameter count",
                   "Describe a saved model: its layers, activations, dtype, dropout and "
                   "parameter count, and what its sidecar (MODEL.json) records.",
                   "example:\n  fastbp info model.fbp", cmd_info)
    info.add_argument("model", metavar="MODEL", help="a model file written by fastbp")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    _add_demo(command("demo", "train a network on generated spirals, with progress",
                      "Learn three interleaved spirals (generated, no download), showing "
                      "loss, accuracy and speed per epoch.",
                      "example:\n  fastbp demo --epochs 5 --samples 20000", cmd_demo))
    _add_bench(command("bench", "measure training throughput",
                       BENCH_DESCRIPTION, BENCH_EXAMPLES, cmd_bench))
    return parser


TRAIN_DESCRIPTION = """\
Train a multilayer perceptron on INPUT and save it.

INPUT is a CSV file with a header row (the target column chosen with --target, by name or
index; every other column is a feature), an NPY file of features (targets from --targets
FILE.npy, or --target INDEX to take columns of it), or an NPZ archive (arrays X and y, named
with --x-name and --y-name).

For a classification loss (cce, bce) the labels of a single target column may be text or
numbers: they are mapped to 0..k-1 (in sorted order) and saved in the sidecar MODEL.json, so
that `fastbp predict --labels` writes the original labels."""

TRAIN_EXAMPLES = """\
examples:
  fastbp train iris.csv --target species --hidden 16 --epochs 200 --output iris.fbp
  fastbp train houses.csv --target price --loss mse --hidden 128,64 --optimizer adam \\
      --validation-split 0.2 --early-stopping 10 --plot curve.png
  fastbp train X.npy --targets y.npy --loss cce --dtype float64 --output model.fbp
  fastbp train data.npz --x-name features --y-name labels --loss cce"""

PREDICT_EXAMPLES = """\
examples:
  fastbp predict iris.fbp new.csv --output probabilities.csv
  fastbp predict iris.fbp new.csv --labels --output labels.csv
  fastbp predict model.fbp X_test.npy --output predictions.npy
  fastbp predict model.fbp new.csv            (CSV on standard output)"""

EVALUATE_EXAMPLES = """\
examples:
  fastbp evaluate iris.fbp test.csv                  (target column from the sidecar)
  fastbp evaluate model.fbp test.csv --target price
  fastbp evaluate model.fbp X_test.npy --targets y_test.npy"""

BENCH_DESCRIPTION = """\
Measure training throughput (samples per second).

In a source checkout (the repository's bench/ folder next to the fastbp package) this runs
bench/compare.py, the side-by-side comparison of fastbp with its peers (NumPy, PyTorch,
scikit-learn, those installed), each library in a subprocess of its own: by default its
--quick mode (workloads W1 and W3, one thread). Elsewhere, or with --builtin, it runs a short
built-in measurement of fastbp alone on W1-shaped (784-128-10, batch 32) and W3-shaped
(64-32-10, batch 16) networks. It says which of the two it ran."""

BENCH_EXAMPLES = """\
examples:
  fastbp bench
  fastbp bench --full --json results.json
  fastbp bench --peers fastbp,numpy --workloads W1 --threads 1,2
  fastbp bench --builtin --duration 2"""


def _add_data_options(sub, targets: bool):
    group = sub.add_argument_group("input")
    group.add_argument("--format", choices=["csv", "npy", "npz"], default=None,
                       help="the format of INPUT (default: from its extension)")
    group.add_argument("--delimiter", default=None, metavar="CHAR",
                       help="CSV field separator (default: ',', tab for .tsv)")
    group.add_argument("--x-name", default="X", metavar="NAME",
                       help="the features' array in an NPZ file (default %(default)s)")
    if targets:
        group.add_argument("--y-name", default="y", metavar="NAME",
                           help="the targets' array in an NPZ file (default %(default)s)")
        group.add_argument("--target", action="append", default=None, metavar="COLUMN",
                           help="a target column, by name or index (negative counts from the "
                                "end); repeat it for several outputs (default: the last "
                                "column)")
        group.add_argument("--targets", default=None, metavar="FILE.npy",
                           help="the targets of an NPY input, one row per row of INPUT")
    group.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                       help="a column to leave out of the features (repeatable)")
    return group


def _add_train(sub):
    sub.add_argument("input", metavar="INPUT", help="the training data: .csv, .npy or .npz")
    _add_data_options(sub, targets=True)
    net = sub.add_argument_group("network")
    net.add_argument("--hidden", type=_int_list, default="64", metavar="WIDTHS",
                     help="hidden layer widths, comma-separated (e.g. 128,64); 'none' for no "
                          "hidden layer (default %(default)s)")
    net.add_argument("--activation", type=_name_list, default="relu", metavar="NAME",
                     help="the hidden layers' activation (relu, leaky_relu, sigmoid, tanh, "
                          "elu, softplus, gelu, swish, identity), or one per hidden layer, "
                          "comma-separated (default %(default)s)")
    net.add_argument("--output-activation", default=None, metavar="NAME",
                     help="the output layer's activation (default: softmax for cce, sigmoid "
                          "for bce, identity otherwise)")
    net.add_argument("--dropout", type=_float_list, default="0", metavar="RATE",
                     help="dropout rate after each hidden layer during training, or one per "
                          "hidden layer, comma-separated (default %(default)s)")
    net.add_argument("--init", default="auto", choices=["auto", "he", "glorot", "zeros"],
                     help="initial weights: auto is He for relu and leaky_relu, Glorot "
                          "otherwise (default %(default)s)")
    net.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                     help="the parameters' and the computation's precision "
                          "(default %(default)s)")
    fit = sub.add_argument_group("training")
    fit.add_argument("--loss", default="auto", metavar="NAME",
                     help="mse, mae, huber, cce (categorical_crossentropy) or bce "
                          "(binary_crossentropy); auto: cce when the target column holds "
                          "text, mse otherwise (default %(default)s)")
    fit.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "rmsprop", "adagrad"],
                     help="the update rule (default %(default)s)")
    fit.add_argument("--learning-rate", type=float, default=None, metavar="RATE",
                     help="step size (default: 0.001 for adam, 0.01 otherwise)")
    fit.add_argument("--momentum", type=float, default=0.0, metavar="MU",
                     help="SGD momentum (default %(default)s)")
    fit.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    fit.add_argument("--epochs", type=int, default=10, metavar="N",
                     help="passes over the data (default %(default)s)")
    fit.add_argument("--batch-size", type=int, default=32, metavar="N",
                     help="rows per step (default %(default)s)")
    fit.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                     help="walk the rows in file order every epoch")
    fit.add_argument("--seed", type=int, default=None, metavar="N",
                     help="seeds the initial weights, the shuffling, dropout and the "
                          "validation rows (default: random)")
    fit.add_argument("--weight-decay", type=float, default=0.0, metavar="WD",
                     help="L2 decay of the weights (default %(default)s)")
    fit.add_argument("--clip-norm", type=float, default=None, metavar="NORM",
                     help="rescale each batch's gradient to at most this L2 norm")
    fit.add_argument("--schedule", default=None, metavar="NAME[:ARGS]",
                     help="learning-rate schedule: constant, step:STEP[,GAMMA], "
                          "exponential:GAMMA, cosine[:MIN_LR], inverse_scaling[:POWER[,SCALE]], "
                          "plateau[:PATIENCE[,FACTOR]]")
    fit.add_argument("--class-weight", choices=["balanced"], default=None,
                     help="weight classes inversely to their frequency (cce, bce)")
    fit.add_argument("--validation-split", type=float, default=0.0, metavar="FRACTION",
                     help="hold out this fraction of the rows (drawn at random with --seed) "
                          "and report val_loss and metrics each epoch")
    fit.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                     help="stop after PATIENCE epochs without improvement of val_loss (of the "
                          "training loss without --validation-split); keep the best weights")
    fit.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                     help="stop after the epoch that passes this time budget")
    fit.add_argument("--threads", type=int, default=None, metavar="N",
                     help="BLAS threads (default: chosen from the size of a step)")
    out = sub.add_argument_group("output")
    out.add_argument("--output", "-o", default="model.fbp", metavar="PATH",
                     help="where to write the model; its sidecar goes to PATH.json "
                          "(default %(default)s)")
    out.add_argument("--plot", default=None, metavar="PNG",
                     help="write the loss curve to this PNG file (needs matplotlib)")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")


def _add_predict(sub):
    sub.add_argument("model", metavar="MODEL", help="a model file written by fastbp")
    sub.add_argument("input", metavar="INPUT", help="the rows to predict: .csv, .npy or .npz")
    _add_data_options(sub, targets=False)
    sub.add_argument("--output", "-o", default=None, metavar="PATH",
                     help="out.csv or out.npy (.npy: NPY, anything else: CSV); default: CSV on "
                          "standard output")
    sub.add_argument("--labels", action="store_true",
                     help="write the predicted label of each row (the most probable class, "
                          "or p > 0.5 for a sigmoid output) instead of the probabilities")


def _add_evaluate(sub):
    sub.add_argument("model", metavar="MODEL", help="a model file written by fastbp")
    sub.add_argument("input", metavar="INPUT", help="the data: .csv, .npy or .npz")
    _add_data_options(sub, targets=True)
    sub.add_argument("--loss", default=None,
                     help="the loss to report (default: the one the model was trained with, "
                          "from its sidecar; else from its output activation)")
    sub.add_argument("--json", action="store_true", help="print the figures as JSON")


def _add_demo(sub):
    sub.add_argument("--epochs", type=int, default=10, metavar="N",
                     help="passes over the data (default %(default)s)")
    sub.add_argument("--samples", type=int, default=60_000, metavar="N",
                     help="training rows (default %(default)s; 10,000 more are the test set)")
    sub.add_argument("--hidden", type=int, default=128, metavar="WIDTH",
                     help="width of the two hidden layers (default %(default)s)")
    sub.add_argument("--batch-size", type=int, default=32, metavar="N",
                     help="rows per step (default %(default)s)")
    sub.add_argument("--learning-rate", type=float, default=0.05, metavar="RATE",
                     help="SGD step size (default %(default)s)")
    sub.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                     help="precision (default %(default)s)")
    sub.add_argument("--threads", type=int, default=None, metavar="N",
                     help="BLAS threads (default: auto)")
    sub.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seeds the data and the weights (default %(default)s)")


def _add_bench(sub):
    sub.add_argument("--builtin", action="store_true",
                     help="run the built-in measurement even where bench/compare.py exists")
    sub.add_argument("--full", action="store_true",
                     help="compare.py without --quick: W1-W5, windows of 2 s (minutes)")
    sub.add_argument("--workloads", default=None, metavar="W1,W3",
                     help="workloads to run (compare.py: W1..W5, P1; built-in: W1, W3)")
    sub.add_argument("--threads", default="1", metavar="N[,N]",
                     help="BLAS thread counts, comma-separated (0: each library's default; "
                          "default %(default)s)")
    sub.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                     help="minimum seconds per timed window (compare.py: 0.5 quick, 2 full; "
                          "built-in: 1)")
    sub.add_argument("--repeats", type=int, default=None, metavar="N",
                     help="timed windows per measurement (median shown; default 3)")
    sub.add_argument("--warmup", type=float, default=None, metavar="SECONDS",
                     help="minimum warm-up seconds (compare.py)")
    sub.add_argument("--peers", default=None, metavar="LIBS",
                     help="compare.py: libraries to compare (default fastbp,numpy,torch,sklearn)")
    sub.add_argument("--json", default=None, metavar="FILE",
                     help="compare.py: write all figures to this JSON file")
    sub.add_argument("--png", default=None, metavar="FILE",
                     help="compare.py: write a bar chart (needs matplotlib)")
    sub.add_argument("--rows", type=int, default=20_000, metavar="N",
                     help="built-in: rows of the W1-shaped data set (default %(default)s)")
    sub.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seeds the data (default %(default)s)")


# ---- argparse types: a bad value is argparse's own one-line error (exit status 2) ----

def _int_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected widths separated by commas, such as 128,64; got {text!r}") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"every width must be >= 1; got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or numbers separated by commas; got {text!r}") from None


def _name_list(text: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected an activation name")
    return names


# ============================================================================ reading data

class Table:
    """The columns of an input file.

    A CSV file: `names` from its header, each column a tuple of strings (converted on
    demand, with errors that name the column and line). An NPY or NPZ file: a 2-D numeric
    matrix whose columns are named by their index ("0", "1", ...), and possibly targets
    from a separate array (NPZ's y, --targets FILE.npy).
    """

    def __init__(self, path, names, named, columns=None, lines=None, matrix=None):
        self.path, self.names, self.named = path, list(names), named
        self._columns, self._lines, self._matrix = columns, lines, matrix
        self.targets = None              # an array of targets from a separate source
        self.target_source = None        # where they came from (for messages)
        self.target_stem = "y"           # their name: the NPZ array's, the NPY file's

    @property
    def n_rows(self) -> int:
        return self._matrix.shape[0] if self._matrix is not None else len(self._columns[0])

    def index(self, spec) -> int:
        """A column by name or by index (negative counts from the end)."""
        spec = str(spec).strip()
        if self.named and spec in self.names:
            return self.names.index(spec)
        try:
            position = int(spec)
        except ValueError:
            shown = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
            raise UsageError(f"{self.path} has no column {spec!r}; its columns: {shown}") \
                from None
        if not -len(self.names) <= position < len(self.names):
            raise UsageError(f"column index {position} is out of range: {self.path} has "
                             f"{len(self.names)} columns (0..{len(self.names) - 1})")
        return position % len(self.names)

    def label(self, j: int) -> str:
        return repr(self.names[j]) if self.named else f"{j}"

    def numeric(self, indices, role: str, hint: str = ""):
        """The columns `indices` as a float64 (rows, len(indices)) matrix (or the NPY/NPZ
        array itself, when that is all its columns in order)."""
        import numpy as np

        if self._matrix is not None:
            if list(indices) == list(range(self._matrix.shape[1])):
                return self._matrix
            return self._matrix[:, list(indices)]
        out = np.empty((self.n_rows, len(indices)), dtype=np.float64)
        for k, j in enumerate(indices):
            out[:, k] = self._numbers(j, role, hint)
        return out

    def _numbers(self, j, role, hint):
        import numpy as np

        values = self._columns[j]
        try:
            return np.array(values, dtype=np.float64)
        except ValueError:
            pass
        for row, value in enumerate(values):
            try:
                float(value)
            except ValueError:
                where = f"{self.path}, line {self._lines[row]}"
                if not value.strip():
                    raise UsageError(f"{where}: the {role} column {self.label(j)} is empty; "
                                     f"fastbp needs a number in every {role} cell{hint}") \
                        from None
                raise UsageError(f"{where}: the {role} column {self.label(j)} holds "
                                 f"{value.strip()!r}, not a number{hint}") from None
        raise UsageError(f"the {role} column {self.label(j)} of {self.path} is not numeric")

    def raw(self, j: int):
        """Column j as it is: strings (CSV) or numbers (arrays)."""
        import numpy as np

        if self._matrix is not None:
            return self._matrix[:, j]
        return np.array([value.strip() for value in self._columns[j]], dtype=str)


def _input_format(path: str, given) -> str:
    if given:
        return given
    extension = os.path.splitext(path)[1].lower()
    if extension in (".csv", ".tsv", ".txt"):
        return "csv"
    if extension in (".npy", ".npz"):
        return extension[1:]
    raise UsageError(f"cannot tell the format of {path!r} from its extension; give "
                     f"--format csv, npy or npz")


def read_table(path: str, args, want_targets: bool) -> Table:
    """The input file as a Table; with want_targets, NPZ's y and --targets are read too."""
    fmt = _input_format(path, getattr(args, "format", None))
    if fmt == "csv":
        delimiter = args.delimiter
        if delimiter is None:
            delimiter = "\t" if path.lower().endswith(".tsv") else ","
        if delimiter in ("\\t", "tab"):
            delimiter = "\t"
        if len(delimiter) != 1:
            raise UsageError(f"--delimiter must be one character; got {delimiter!r}")
        table = _read_csv(path, delimiter)
        if want_targets and getattr(args, "targets", None):
            raise UsageError("--targets FILE.npy is for NPY input; for a CSV file name the "
                             "target column with --target")
        return table
    if fmt == "npy":
        table = _array_table(path, _load_npy(path, "the features"))
        if want_targets and getattr(args, "targets", None):
            if getattr(args, "target", None):
                raise UsageError("give --targets FILE.npy or --target COLUMN, not both")
            table.targets = _load_npy(args.targets, "the targets", features=False)
            table.target_source = args.targets
            table.target_stem = os.path.splitext(os.path.basename(args.targets))[0] or "y"
        return table
    # npz
    if want_targets and getattr(args, "targets", None):
        raise UsageError("--targets is for NPY input; an NPZ file holds its targets "
                         "(choose the array with --y-name)")
    archive = _np_load(path)
    if not hasattr(archive, "files"):
        raise UsageError(f"{path} is an NPY file, not an NPZ archive: use --format npy")
    with archive:
        names = list(archive.files)
        if args.x_name not in names:
            raise UsageError(f"{path} has no array {args.x_name!r}; it has: "
                             f"{', '.join(names) or 'none'} (choose with --x-name)")
        table = _array_table(path, _check_features(_member(archive, args.x_name, path), path,
                                                   args.x_name))
        if want_targets and not getattr(args, "target", None):   # --target: columns of X
            y_name = args.y_name
            if y_name not in names:
                raise UsageError(f"{path} has no array {y_name!r} of targets; it has: "
                                 f"{', '.join(names)} (choose with --y-name)")
            table.targets = _check_targets(_member(archive, y_name, path), f"{path}[{y_name}]")
            table.target_source = f"{path}[{y_name}]"
            table.target_stem = y_name
    return table


def _member(archive, name, path):
    try:
        return archive[name]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(f"the array {name!r} in {path} holds Python objects, which fastbp "
                             f"does not load (that needs pickle); save numbers or text") \
                from None
        raise UsageError(f"the array {name!r} in {path} is not readable: {error}") from None


def _read_csv(path: str, delimiter: str) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{path} is empty; a CSV file needs a header row and rows "
                                 f"of data")
            names = [name.strip() for name in header]
            for position, name in enumerate(names):
                if not name:
                    raise UsageError(f"{path}: column {position} of the header has no name; "
                                     f"every column needs one")
                if names.index(name) != position:
                    raise UsageError(f"{path}: the header names the column {name!r} twice")
            rows, lines = [], []
            for row in reader:
                if not row or not any(field.strip() for field in row):
                    continue                     # a blank line
                if len(row) != len(names):
                    raise UsageError(f"{path}, line {reader.line_num}: {len(row)} fields; "
                                     f"the header has {len(names)}")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: is it a CSV file?") from None
    except csv.Error as error:
        raise UsageError(f"{path}: not readable as CSV: {error}") from None
    if not rows:
        raise UsageError(f"{path} has a header row but no rows of data")
    if len(names) > 1 and all(_is_number(name) for name in names):
        warnings.warn(f"the first row of {path} holds numbers; fastbp reads it as the header "
                      f"(column names), not as data")
    return Table(path, names, True, columns=list(zip(*rows)), lines=lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _np_load(path: str):
    """np.load without pickle, with messages that say what the file is."""
    import numpy as np

    with open(path, "rb") as stream:
        start = stream.read(6)
    if not (start.startswith(b"\x93NUMPY") or start.startswith(b"PK")):
        raise UsageError(f"{path} is not a NumPy file (.npy or .npz): it does not start with "
                         f"either signature")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(f"{path} holds Python objects (an object array), which fastbp "
                             f"does not load (that needs pickle); save numbers or text") \
                from None
        raise UsageError(f"{path}: not a readable NumPy file: {error}") from None


def _load_npy(path: str, what: str, features: bool = True):
    import numpy as np

    array = _np_load(path)
    if not isinstance(array, np.ndarray):
        array.close()
        raise UsageError(f"{path} is an NPZ archive, not an NPY file: use --format npz")
    return _check_features(array, path, what) if features else _check_targets(array, path)


def _check_features(array, path, what):
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{what} in {path} must be numbers; the array has dtype {array.dtype}")
    if array.ndim != 2:
        hint = " (reshape(-1, 1) for a single feature)" if array.ndim == 1 else ""
        raise UsageError(f"{what} in {path} must be a 2-D array (rows, features); got shape "
                         f"{array.shape}{hint}")
    if array.shape[0] == 0:
        raise UsageError(f"{what} in {path} has no rows")
    return array


def _check_targets(array, path):
    if array.dtype.kind == "S":
        array = array.astype(str)
    if array.dtype.kind not in "biufU":
        raise UsageError(f"the targets in {path} must be numbers or text; the array has "
                         f"dtype {array.dtype}")
    if array.ndim not in (1, 2):
        raise UsageError(f"the targets in {path} must be a 1-D or 2-D array; got shape "
                         f"{array.shape}")
    return array


def _array_table(path, matrix) -> Table:
    return Table(path, [str(j) for j in range(matrix.shape[1])], False, matrix=matrix)


def select_columns(table: Table, args, sidecar, n_inputs=None, want_targets=True):
    """(feature indices, target columns [1-D arrays], target names) of a table."""
    dropped = {table.index(spec) for spec in (getattr(args, "drop", None) or [])}
    target_specs = getattr(args, "target", None)
    target_idx = []
    if want_targets:
        if table.targets is not None:
            target_cols = [table.targets] if table.targets.ndim == 1 else \
                [table.targets[:, k] for k in range(table.targets.shape[1])]
            if table.targets.shape[0] != table.n_rows:
                raise UsageError(f"{table.path} has {table.n_rows} rows but the targets "
                                 f"({table.target_source}) have {table.targets.shape[0]}")
            names = _target_names_of_array(table, sidecar, len(target_cols))
        else:
            if target_specs:
                target_idx = [table.index(spec) for spec in target_specs]
            elif sidecar and sidecar.get("targets") and table.named and \
                    all(name in table.names for name in sidecar["targets"]):
                target_idx = [table.names.index(name) for name in sidecar["targets"]]
            elif table.named:
                target_idx = [len(table.names) - 1]
            else:
                raise UsageError(f"which columns of {table.path} are the targets? give "
                                 f"--targets FILE.npy or --target INDEX")
            if len(set(target_idx)) != len(target_idx):
                raise UsageError("a column is named twice in --target")
            if len(target_idx) >= len(table.names):
                raise UsageError(f"{table.path} has no column left for the features once "
                                 f"the targets are taken")
            target_cols = [table.raw(j) for j in target_idx]
            if table.named:
                names = [table.names[j] for j in target_idx]
            else:
                names = ["y"] if len(target_idx) == 1 else [f"y{k}" for k in range(len(target_idx))]
    else:
        target_cols, names = [], []
    if dropped & set(target_idx):
        raise UsageError("a column is both a --target and a --drop")

    features = None
    wanted = sidecar.get("features") if sidecar else None
    if wanted and table.named:
        missing = [name for name in wanted if name not in table.names]
        if not missing:
            features = [table.names.index(name) for name in wanted]
        elif len(missing) < len(wanted):
            raise UsageError(f"{table.path} lacks the feature column(s) "
                             f"{', '.join(map(repr, missing[:5]))} the model was trained with")
    if features is None:
        features = [j for j in range(len(table.names))
                    if j not in dropped and j not in target_idx]
    if not features:
        raise UsageError(f"{table.path} has no feature columns left")
    if n_inputs is not None and len(features) != n_inputs:
        raise UsageError(f"{table.path} gives {len(features)} feature columns; the model "
                         f"takes {n_inputs} inputs (leave columns out with --drop)")
    return features, target_cols, names


def _target_names_of_array(table, sidecar, n):
    if sidecar and sidecar.get("targets") and len(sidecar["targets"]) == n:
        return list(sidecar["targets"])
    stem = table.target_stem
    return [stem] if n == 1 else [f"{stem}{k}" for k in range(n)]


# ============================================================================ targets

def _numbers_or_none(column):
    """The column as float64 numbers, or None when it holds text."""
    import numpy as np

    if column.dtype.kind in "biuf":
        return column.astype(np.float64)
    try:
        return np.array(column, dtype=np.float64)
    except ValueError:
        return None


def _plain(value):
    """A label as a JSON value: int for whole numbers, float, or str."""
    if isinstance(value, str):
        return value
    value = float(value)
    return int(value) if value.is_integer() else value


def _label_keys(column):
    """(keys, numeric) for a label column: float64 numbers when every label is a number,
    else the labels as strings."""
    import numpy as np

    numbers = _numbers_or_none(column)
    if numbers is not None:
        if not np.isfinite(numbers).all():
            raise UsageError("the target column holds NaN or infinity; every row needs a label")
        return numbers, True
    return np.array([str(v) for v in column], dtype=str), False


def encode_labels(column, classes=None, source="the target column"):
    """(labels 0..k-1 as intp, classes): the class list learned in sorted order, or
    mapped to the given classes."""
    import numpy as np

    keys, numeric = _label_keys(column)
    if not numeric:
        empty = np.flatnonzero(np.char.str_len(keys) == 0)
        if empty.size:
            raise UsageError(f"{source} has no label in data row {empty[0] + 1}")
    if classes is None:
        unique, labels = np.unique(keys, return_inverse=True)
        return labels.astype(np.intp), [_plain(v) for v in unique.tolist()]
    lookup = {}
    for index, value in enumerate(classes):
        lookup[float(value) if not isinstance(value, str) else value] = index
        if isinstance(value, str) and _is_number(value):
            lookup.setdefault(float(value), index)
    unique, inverse = np.unique(keys, return_inverse=True)
    mapped = np.empty(len(unique), dtype=np.intp)
    unknown = []
    for k, value in enumerate(unique.tolist()):
        key = float(value) if numeric else value
        if key not in lookup:
            unknown.append(_plain(value))
            continue
        mapped[k] = lookup[key]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5]))
        raise UsageError(f"{source} holds label(s) {shown} the model was not trained on; its "
                         f"classes: {', '.join(map(repr, classes[:20]))}")
    return mapped[inverse].astype(np.intp), list(classes)


def _numeric_targets(columns, names, source_hint=""):
    import numpy as np

    matrix = np.empty((len(columns[0]), len(columns)), dtype=np.float64)
    for k, (column, name) in enumerate(zip(columns, names)):
        numbers = _numbers_or_none(column)
        if numbers is None:
            bad = next((v for v in column if not _is_number(v)), "")
            raise UsageError(f"the target column {name!r} holds {str(bad).strip()!r}, not a "
                             f"number{source_hint}")
        matrix[:, k] = numbers
    return matrix


def encode_targets(columns, names, loss, sidecar=None):
    """Targets for fastbp from raw columns: (Y, classes, output names).

    cce, one column: class labels 0..k-1 (classes: the original labels); cce, several
    columns: one-hot rows (classes: the column names). bce, one column: 0/1 (or a
    probability), or two labels mapped to 0/1 (classes [negative, positive]); bce, several
    columns: multi-label 0/1 targets. Regression: numbers, one output per column.
    With a sidecar (evaluate), its classes are used instead of learned.
    """
    import numpy as np

    known = sidecar.get("classes") if sidecar else None
    regression_hint = "; for class labels use --loss cce (or bce for two classes)"
    if loss == "categorical_crossentropy":
        if len(columns) == 1:
            labels, classes = encode_labels(columns[0], known, f"the target column {names[0]!r}")
            if known is None and len(classes) < 2:
                raise UsageError(f"the target column {names[0]!r} holds a single class "
                                 f"({classes[0]!r}); classification needs two or more")
            return labels, classes, [str(c) for c in classes]
        return _numeric_targets(columns, names), list(names), list(names)
    if loss == "binary_crossentropy":
        if len(columns) == 1:
            numbers = _numbers_or_none(columns[0])
            in_unit = numbers is not None and np.isfinite(numbers).all() and \
                numbers.min() >= 0 and numbers.max() <= 1
            if in_unit and (known is None or [_plain(c) for c in known] == [0, 1]):
                return numbers.reshape(-1, 1), [0, 1], list(names)
            labels, classes = encode_labels(columns[0], known, f"the target column {names[0]!r}")
            if len(classes) != 2:
                raise UsageError(f"binary cross-entropy needs two classes; the target column "
                                 f"{names[0]!r} holds {len(classes)}: use --loss cce")
            return labels.astype(np.float64).reshape(-1, 1), classes, [str(classes[1])]
        return _numeric_targets(columns, names, regression_hint), None, list(names)
    return _numeric_targets(columns, names, regression_hint), None, list(names)


# ============================================================================ the sidecar

def sidecar_path(model_path: str) -> str:
    return os.fspath(model_path) + SIDECAR_SUFFIX


def sidecar_bytes(fields: dict) -> bytes:
    """The sidecar document holding `fields`, as the bytes of its file."""
    document = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **fields}
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()


def read_sidecar(model_path: str, model):
    """The sidecar's fields for `model`, or None when there is none."""
    path = sidecar_path(model_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} (the model's sidecar) is not valid JSON ({error}); remove "
                         f"or fix it") from None
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        raise UsageError(f"{path} is not a fastbp sidecar; remove or rename it")
    n_in, n_out = model.layer_sizes[0], model.layer_sizes[-1]
    _check_sidecar_fields(path, document, n_out)
    outputs, features = document.get("outputs"), document.get("features")
    if (outputs is not None and len(outputs) != n_out) or \
            (features is not None and len(features) != n_in):
        raise UsageError(f"{path} does not match {model_path} (it describes a model with "
                         f"{len(features) if features else '?'} inputs and "
                         f"{len(outputs) if outputs else '?'} outputs; the model has {n_in} and "
                         f"{n_out}): remove it or fix it")
    return document


def _check_sidecar_fields(path, document, n_out):
    """The lists a sidecar holds are lists of plain values, and its classes are as many as
    the model's outputs (two for a single sigmoid output)."""
    for key in ("outputs", "features", "targets", "classes"):
        value = document.get(key)
        if value is not None and (not isinstance(value, list) or not all(
                isinstance(item, (str, int, float)) and not isinstance(item, bool)
                for item in value)):
            raise UsageError(f"{path} (the model's sidecar): {key} must be a list of names; "
                             f"remove or fix it")
    classes = document.get("classes")
    expected = n_out if n_out > 1 else 2
    if classes is not None and len(classes) != expected:
        raise UsageError(f"{path} lists {len(classes)} classes; the model has "
                         f"{n_out} output{'s' if n_out != 1 else ''}, which need {expected}: "
                         f"remove or fix it")


def _loss_of(model, sidecar, given=None) -> str:
    from fastbp import losses

    if given:
        return losses.get(given).name
    if sidecar and sidecar.get("loss"):
        return losses.get(sidecar["loss"]).name
    output = model.activations[-1]
    return {"softmax": "categorical_crossentropy",
            "sigmoid": "binary_crossentropy"}.get(output, "mse")


def _load_model(path):
    from fastbp.model import load

    model = load(path)
    return model, read_sidecar(path, model)


# ============================================================================ train

def _check_writable(path: str, option: str):
    """What `path` names now (see fastbp._files.check_target); a UsageError for a path
    that cannot be written."""
    from fastbp import _files

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: the folder {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder; give a file name")
    try:
        return _files.check_target(path)
    except ValueError as error:
        raise UsageError(f"{option} {error}") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: {_one_line(error)}") from None


def _check_distinct(inputs, outputs):
    """Refuse an output that is one of the command's inputs or another of its outputs: the
    same file, through links too, not only the same name. A character device (/dev/null,
    /dev/stdout) may be named twice: writing it destroys nothing.

    inputs and outputs: (what, path) pairs; a path of None is left out."""
    from fastbp import _files

    seen = []
    for role, (what, path) in [("input", item) for item in inputs] + \
            [("output", item) for item in outputs]:
        if path is None or _is_character_device(path):
            continue
        key = _files.file_key(path)
        for other_what, other_path, other_key in seen:
            if key == other_key and role == "output":
                raise UsageError(f"{what} {path} is the same file as {other_what} "
                                 f"({other_path}): this command would overwrite it; choose "
                                 f"another path")
        seen.append((what, path, key))


def _is_character_device(path) -> bool:
    import stat

    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") \
            from None


def _schedule(spec, epochs, monitor):
    from fastbp import schedules

    if spec is None:
        return None
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    try:
        values = [float(part) for part in rest.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--schedule {spec}: the arguments after ':' must be numbers") from None
    expected = {"constant": (0, 0), "step": (1, 2), "exponential": (1, 1), "cosine": (0, 1),
                "inverse_scaling": (0, 2), "plateau": (0, 2)}
    if name not in expected:
        raise UsageError(f"unknown schedule {name!r}; valid: {', '.join(expected)}")
    low, high = expected[name]
    if not low <= len(values) <= high:
        raise UsageError(f"--schedule {name} takes {low}..{high} numbers after ':'; got "
                         f"{len(values)} (see fastbp train --help)")
    if name == "constant":
        return schedules.Constant()
    if name == "step":
        return schedules.StepDecay(values[0], *values[1:])
    if name == "exponential":
        return schedules.ExponentialDecay(values[0])
    if name == "cosine":
        return schedules.Cosine(max(epochs, 1), *values)
    if name == "inverse_scaling":
        return schedules.InverseScaling(*values)
    factor = {"factor": values[1]} if len(values) > 1 else {}
    return schedules.ReduceOnPlateau(monitor=monitor, patience=values[0] if values else 10,
                                     **factor)


def _per_hidden(values, n_hidden, option):
    if len(values) == 1:
        return values * n_hidden
    if len(values) != n_hidden:
        raise UsageError(f"{option} lists {len(values)} values; give one, or one per hidden "
                         f"layer ({n_hidden})")
    return list(values)


def cmd_train(args) -> int:
    import numpy as np

    from fastbp import callbacks, losses, metrics
    from fastbp.model import MLP
    from fastbp.trainer import Trainer

    from fastbp import _files

    model_target = _check_writable(args.output, "--output")
    # a model written into a FIFO or a device has no file to put a sidecar beside
    sidecar_file = None if _files.is_stream(model_target) else sidecar_path(args.output)
    if sidecar_file is not None:
        _check_writable(sidecar_file, "--output's sidecar")
    if args.plot:
        _check_writable(args.plot, "--plot")
        _need_matplotlib()
    _check_distinct([("INPUT", args.input), ("--targets", getattr(args, "targets", None))],
                    [("--output", args.output), ("the sidecar", sidecar_file),
                     ("--plot", args.plot)])
    say = (lambda *parts: None) if args.quiet else print

    table = read_table(args.input, args, want_targets=True)
    features, target_cols, target_names = select_columns(table, args, None)
    X = table.numeric(features, "feature",
                      "; encode it as numbers, or leave it out with --drop COLUMN")
    if args.loss == "auto":
        text = any(_numbers_or_none(column) is None for column in target_cols)
        loss = "categorical_crossentropy" if text and len(target_cols) == 1 else "mse"
        loss_note = " (auto: the target holds text)" if loss != "mse" else \
            " (auto: numeric targets; --loss cce for class labels)"
    else:
        loss, loss_note = losses.get(args.loss).name, ""
    Y, classes, outputs = encode_targets(target_cols, target_names, loss)
    n_outputs = len(outputs)

    hidden = args.hidden
    activations = _per_hidden(args.activation, len(hidden), "--activation") if hidden else []
    dropout = _per_hidden(args.dropout, len(hidden), "--dropout") if hidden else []
    if not hidden and any(args.dropout):
        raise UsageError("--dropout needs a hidden layer (dropout acts on hidden layers)")
    output_activation = args.output_activation or {
        "categorical_crossentropy": "softmax", "binary_crossentropy": "sigmoid"}.get(
            loss, "identity")
    model = MLP([X.shape[1], *hidden, n_outputs], [*activations, output_activation.lower()],
                dtype=args.dtype, init=args.init, seed=args.seed, dropout=dropout or 0.0)

    validating = args.validation_split > 0
    monitor = "val_loss" if validating else "loss"
    learning_rate = args.learning_rate
    if learning_rate is None:
        learning_rate = 0.001 if args.optimizer == "adam" else 0.01
    optimizer = args.optimizer
    if args.momentum or args.nesterov:
        if optimizer != "sgd":
            raise UsageError("--momentum and --nesterov are for --optimizer sgd")
        from fastbp.optimizers import SGD
        optimizer = SGD(learning_rate, momentum=args.momentum, nesterov=args.nesterov)
    trainer = Trainer(loss, optimizer=optimizer, learning_rate=learning_rate,
                      epochs=args.epochs, batch_size=args.batch_size, shuffle=args.shuffle,
                      seed=args.seed, schedule=_schedule(args.schedule, args.epochs, monitor),
                      weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                      class_weight=args.class_weight, max_time=args.max_time,
                      n_threads=args.threads)

    validation = None
    rows = np.arange(X.shape[0])
    if validating:
        if not 0 < args.validation_split < 1:
            raise UsageError(f"--validation-split must be between 0 and 1; got "
                             f"{args.validation_split}")
        n_val = X.shape[0] - int(X.shape[0] * (1 - args.validation_split))   # as the trainer
        if not 1 <= n_val < X.shape[0]:
            raise UsageError(f"--validation-split {args.validation_split} leaves "
                             f"{'no rows for validation' if n_val < 1 else 'no rows to train on'}"
                             f" out of {X.shape[0]}")
        order = np.random.default_rng(args.seed).permutation(X.shape[0])
        rows, held_out = np.sort(order[n_val:]), np.sort(order[:n_val])
        validation = (X[held_out], Y[held_out])
    X_train, Y_train = (X, Y) if validation is None else (X[rows], Y[rows])

    fit_callbacks = []
    if not args.quiet:
        fit_callbacks.append(callbacks.ProgressBar(
            args.epochs, use_tqdm=None if sys.stderr.isatty() else False))
    stopper = None
    if args.early_stopping is not None:
        stopper = callbacks.EarlyStopping(monitor=monitor, patience=args.early_stopping,
                                          restore_best_weights=True)
        fit_callbacks.append(stopper)

    target_text = ", ".join(target_names)
    what = f"{len(classes)} classes: {_short_list(classes)}" if classes and loss == \
        "categorical_crossentropy" and len(target_cols) == 1 else f"{n_outputs} output(s)"
    say(f"fastbp train: {X.shape[0]:,} rows x {X.shape[1]} features from {args.input}; "
        f"target {target_text} ({what})")
    say(f"{model!r}, {model.n_params:,} parameters")
    say(f"loss {loss}{loss_note}; optimizer {args.optimizer}, learning rate {learning_rate}, "
        f"batch {args.batch_size}, {args.epochs} epochs"
        + (f"; {len(validation[0]):,} rows held out for validation" if validation else ""))

    history = trainer.fit(model, X_train, Y_train, validation_data=validation,
                          callbacks=fit_callbacks,
                          metrics=metrics.default_metrics(loss, n_outputs))

    features_named = [table.names[j] for j in features] if table.named else None
    files = [(args.output, model.to_bytes())]
    if sidecar_file is not None:
        files.append((sidecar_file, sidecar_bytes({
            "loss": loss, "features": features_named,
            "targets": list(target_names) if table.named or table.targets is not None else None,
            "classes": classes, "outputs": outputs,
            "trained_on": os.path.basename(args.input)})))
    if args.plot:
        files.append((args.plot, _plot(history, loss)))
    _files.write_files(files)                      # all of them, or none

    seconds = sum(history.seconds)
    if history.epochs:
        last = {key: values[-1] for key, values in history.history.items()}
        figures = "  ".join(f"{key} {value:.4f}" for key, value in last.items()
                            if key in ("loss",) or key.startswith("val_"))
        took = f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"
        say(f"trained {history.epochs} epochs in {took}; last epoch: {figures}")
    if stopper is not None and stopper.stopped_epoch is not None:
        say(f"stopped early after epoch {stopper.stopped_epoch + 1}: {monitor} did not improve "
            f"for {args.early_stopping} epochs; kept the weights of epoch "
            f"{stopper.best_epoch + 1}")
    say(f"wrote {args.output} (and {sidecar_file}: columns, classes)" if sidecar_file else
        f"wrote {args.output} (no sidecar: it is not a regular file)")
    if args.plot:
        say(f"wrote {args.plot}")
    if history.diverged:
        print(f"fastbp train: training diverged (see the warning); {args.output} holds the "
              f"parameters before the diverging epoch: try a smaller --learning-rate",
              file=sys.stderr)
        return EXIT_DIVERGED
    if history.interrupted:
        print(f"fastbp train: interrupted after {history.epochs} epochs; {args.output} holds "
              f"the parameters so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _short_list(values, limit=10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _plot(history, loss) -> bytes:
    """The loss curve as the bytes of a PNG file."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = list(range(1, history.epochs + 1))
    axes.plot(epochs, history.loss, label="training loss")
    if history.val_loss:
        axes.plot(epochs, history.val_loss, label="validation loss")
    axes.set_xlabel("epoch")
    axes.set_ylabel(loss)
    axes.set_title("fastbp: loss per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


# ============================================================================ predict

def cmd_predict(args) -> int:
    import numpy as np

    from fastbp import _files

    if args.output:
        _check_writable(args.output, "--output")
        _check_distinct([("MODEL", args.model), ("the model's sidecar", sidecar_path(args.model)),
                         ("INPUT", args.input)], [("--output", args.output)])
    model, sidecar = _load_model(args.model)
    table = read_table(args.input, args, want_targets=False)
    features, _, _ = select_columns(table, args, sidecar, model.layer_sizes[0],
                                    want_targets=False)
    X = table.numeric(features, "feature")
    probabilities = model.predict(X)
    n_outputs = probabilities.shape[1]
    outputs = (sidecar or {}).get("outputs") or (
        ["y"] if n_outputs == 1 else [f"y{k}" for k in range(n_outputs)])
    if args.labels:
        values, header = predicted_labels(probabilities, model, sidecar)
    else:
        values, header = probabilities, list(outputs)
    if args.output and args.output.lower().endswith(".npy"):
        _files.write_file(args.output, lambda stream: np.save(stream, np.asarray(values)))
    elif args.output:
        _files.write_file(args.output, lambda stream: _write_csv_bytes(stream, header, values))
    else:
        _write_csv(sys.stdout, header, values)
        sys.stdout.flush()
    if args.output:
        print(f"fastbp predict: wrote {len(values):,} rows to {args.output}", file=sys.stderr)
    return 0


def predicted_labels(probabilities, model, sidecar):
    """(labels, header) of each row: the class with the highest probability (softmax, or
    any multi-output model trained with cce), p > 0.5 for a sigmoid output."""
    import numpy as np

    loss = _loss_of(model, sidecar)
    classes = (sidecar or {}).get("classes")
    targets = (sidecar or {}).get("targets") or ["label"]
    header_name = targets[0] if len(targets) == 1 else "label"
    if loss == "categorical_crossentropy":
        index = probabilities.argmax(axis=1)
        if classes:
            return np.array(classes)[index].reshape(-1, 1), [header_name]
        return index.reshape(-1, 1), [header_name]
    if loss == "binary_crossentropy":
        on = (probabilities > 0.5).astype(np.int64)
        if probabilities.shape[1] == 1:
            if classes:
                return np.array(classes)[on[:, 0]].reshape(-1, 1), [header_name]
            return on, [header_name]
        names = (sidecar or {}).get("outputs") or [f"y{k}" for k in range(on.shape[1])]
        return on, list(names)
    raise UsageError(f"--labels is for classification models; this one is a regression "
                     f"model (loss {loss}): leave out --labels")


def _write_csv_bytes(stream, header, values):
    """_write_csv into a binary stream, as UTF-8."""
    import io

    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    _write_csv(text, header, values)
    text.flush()
    text.detach()


def _write_csv(stream, header, values):
    import numpy as np

    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if array.dtype == np.float32:
            for row in array:
                writer.writerow([str(v) for v in row])
        else:
            writer.writerows(array.tolist())
    else:
        writer.writerows(row.tolist() if hasattr(row, "tolist") else row for row in array)


# ============================================================================ evaluate

def cmd_evaluate(args) -> int:
    from fastbp import metrics

    model, sidecar = _load_model(args.model)
    loss = _loss_of(model, sidecar, args.loss)
    table = read_table(args.input, args, want_targets=True)
    features, target_cols, target_names = select_columns(table, args, sidecar,
                                                         model.layer_sizes[0])
    X = table.numeric(features, "feature")
    if sidecar is None and loss in CLASSIFICATION_LOSSES and len(target_cols) == 1 \
            and _numbers_or_none(target_cols[0]) is None:
        raise UsageError(f"{args.model} has no sidecar ({sidecar_path(args.model)}) listing its "
                         f"classes, so the targets must be class indices 0..k-1, not text")
    if sidecar is None and loss == "categorical_crossentropy" and len(target_cols) == 1:
        Y = _numeric_targets(target_cols, target_names)[:, 0]
    elif sidecar is None and loss == "binary_crossentropy":
        Y = _numeric_targets(target_cols, target_names)
    else:
        Y, _, _ = encode_targets(target_cols, target_names, loss, sidecar)
    value = model.evaluate(X, Y, loss)
    predictions = model.predict(X)
    figures = {"rows": int(X.shape[0]), "loss": value}
    n_outputs = model.layer_sizes[-1]
    for name in metrics.default_metrics(loss, n_outputs):
        figures[name] = metrics.get(name)(Y, predictions)
    if args.json:
        print(json.dumps({"loss_name": loss, **figures}))
        return 0
    labels = {"rows": "rows", "loss": f"loss ({loss})", "accuracy": "accuracy",
              "binary_accuracy": "binary accuracy", "mae": "MAE", "r2": "R²"}
    width = max(len(labels.get(key, key)) for key in figures)
    for key, value in figures.items():
        shown = f"{value:,}" if key == "rows" else f"{value:.6g}"
        print(f"{labels.get(key, key):<{width}}  {shown}")
    return 0


# ============================================================================ info

def describe(path) -> dict:
    model, sidecar = _load_model(path)
    layers = []
    for k, (n_in, n_out, activation) in enumerate(
            zip(model.layer_sizes[:-1], model.layer_sizes[1:], model.activations)):
        dropout = model.dropout[k] if k < len(model.dropout) else 0.0
        layers.append({"inputs": n_in, "outputs": n_out, "activation": activation,
                       "dropout": float(dropout), "parameters": n_in * n_out + n_out})
    return {"path": os.fspath(path), "bytes": os.path.getsize(path),
            "layer_sizes": list(model.layer_sizes), "activations": list(model.activations),
            "dtype": model.dtype.name, "parameters": int(model.n_params), "layers": layers,
            "sidecar": sidecar}


def cmd_info(args) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
        return 0
    n_layers = len(info["layers"])
    print(f"{info['path']}: fastbp MLP, {info['dtype']}, {n_layers} weight "
          f"layer{'s' if n_layers != 1 else ''}, {info['bytes']:,} bytes")
    print(f"  layer sizes  {' -> '.join(map(str, info['layer_sizes']))}")
    print(f"  {'layer':>5}  {'inputs':>7}  {'outputs':>7}  {'activation':<10}  {'dropout':>7}  "
          f"{'parameters':>12}")
    for k, layer in enumerate(info["layers"], 1):
        dropout = f"{layer['dropout']:g}" if layer["dropout"] else "-"
        print(f"  {k:>5}  {layer['inputs']:>7}  {layer['outputs']:>7}  "
              f"{layer['activation']:<10}  {dropout:>7}  {layer['parameters']:>12,}")
    print(f"  parameters   {info['parameters']:,}")
    sidecar = info["sidecar"]
    if sidecar:
        print(f"sidecar {sidecar_path(args.model)}:")
        print(f"  loss         {sidecar.get('loss')}")
        if sidecar.get("features"):
            print(f"  features     {_short_list(sidecar['features'])}")
        if sidecar.get("targets"):
            print(f"  targets      {_short_list(sidecar['targets'])}")
        if sidecar.get("classes"):
            print(f"  classes      {_short_list(sidecar['classes'])}")
    else:
        print("no sidecar (MODEL.json): columns are taken by position, classes are indices")
    return 0


# ============================================================================ demo

def cmd_demo(args) -> int:
    from fastbp import demo

    demo.run(epochs=args.epochs, n_samples=args.samples, hidden=args.hidden,
             batch_size=args.batch_size, learning_rate=args.learning_rate, dtype=args.dtype,
             seed=args.seed, n_threads=args.threads)
    return 0


# ============================================================================ bench

def repository_bench():
    """bench/compare.py of the source checkout fastbp runs from, or None."""
    import fastbp

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    script = os.path.join(root, "bench", "compare.py")
    needed = [script, os.path.join(root, "bench", "workloads.py"),
              os.path.join(root, "bench", "peers.py"), os.path.join(root, "pyproject.toml")]
    return script if all(os.path.isfile(path) for path in needed) else None


def cmd_bench(args) -> int:
    threads = _thread_list(args.threads)
    script = None if args.builtin else repository_bench()
    if script is None:
        return _builtin_bench(args, threads)
    command = [sys.executable, script]
    if not args.full:
        command.append("--quick")
    for option, value in (("--workloads", args.workloads), ("--peers", args.peers),
                          ("--duration", args.duration), ("--repeats", args.repeats),
                          ("--warmup", args.warmup), ("--json", args.json),
                          ("--png", args.png)):
        if value is not None:
            command += [option, str(value)]
    command += ["--threads", ",".join(map(str, threads)), "--seed", str(args.seed)]
    # BENCHMARKS.md: benchmarks run with the OpenBLAS core-type overrides unset
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    shown = " ".join(command[1:]).replace(os.path.dirname(os.path.dirname(script)) + os.sep, "")
    print(f"fastbp bench: running the repository's side-by-side comparison: {shown}\n"
          f"(each library in its own subprocess; see bench/README.md)", flush=True)
    return subprocess.run(command, env=env).returncode


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--threads takes thread counts separated by commas; got "
                         f"{text!r}") from None
    if not values or any(value < 0 for value in values):
        raise UsageError(f"--threads takes counts >= 0 (0: the default); got {text!r}")
    return values


BUILTIN_WORKLOADS = {
    # name: (layer sizes, batch size, rows) as in shared/BENCHMARKS.md, W1 on fewer rows
    "W1": ((784, 128, 10), 32, None),
    "W3": ((64, 32, 10), 16, 1797),
}


def _builtin_bench(args, threads) -> int:
    import numpy as np

    from fastbp.model import MLP
    from fastbp.trainer import Trainer

    names = [name.strip().upper() for name in (args.workloads or "W1,W3").split(",")
             if name.strip()]
    unknown = [name for name in names if name not in BUILTIN_WORKLOADS]
    if unknown:
        raise UsageError(f"the built-in measurement knows the workloads "
                         f"{', '.join(BUILTIN_WORKLOADS)}; got {', '.join(unknown)}")
    if args.rows < 1:
        raise UsageError(f"--rows must be >= 1; got {args.rows}")
    duration = 1.0 if args.duration is None else args.duration
    repeats = 3 if args.repeats is None else args.repeats
    if duration <= 0 or repeats < 1:
        raise UsageError("--duration must be > 0 and --repeats >= 1")
    why = "--builtin" if args.builtin else "no bench/compare.py next to the fastbp package"
    print(f"fastbp bench: built-in quick measurement of fastbp's training throughput ({why}): "
          f"SGD, learning rate 0.01, float32, ReLU + softmax + cross-entropy, median of "
          f"{repeats} windows of >= {duration:g} s")
    print(f"{'workload':<8}  {'layers':<12}  {'batch':>5}  {'rows':>7}  {'threads':>7}  "
          f"{'samples/s':>14}")
    rng = np.random.default_rng(args.seed)
    for name in names:
        sizes, batch, rows = BUILTIN_WORKLOADS[name]
        rows = rows or args.rows
        teacher = rng.standard_normal((sizes[0], sizes[-1])).astype(np.float32)
        X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
        y = np.argmax(X @ teacher, axis=1)
        for count in threads:
            model = MLP(sizes, ["relu"] * (len(sizes) - 2) + ["softmax"], seed=args.seed)
            trainer = Trainer("cce", learning_rate=0.01, epochs=1, batch_size=batch,
                              seed=args.seed, n_threads=count or None)
            started = time.perf_counter()
            trainer.fit(model, X, y)                           # warm-up, and the epoch's time
            per_epoch = max(time.perf_counter() - started, 1e-6)
            rates = []
            for _ in range(repeats):                           # windows of whole epochs
                trainer.epochs = max(1, math.ceil(duration / per_epoch))
                started = time.perf_counter()
                trainer.fit(model, X, y)
                elapsed = time.perf_counter() - started
                per_epoch = elapsed / trainer.epochs
                rates.append(trainer.epochs * rows / elapsed)
            rate = sorted(rates)[len(rates) // 2]
            print(f"{name:<8}  {'-'.join(map(str, sizes)):<12}  {batch:>5}  {rows:>7,}  "
                  f"{count or 'auto':>7}  {rate:>14,.0f}", flush=True)
    return 0
