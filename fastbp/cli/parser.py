"""The argument parser of `fastbp`: the commands, their options and help texts, the argparse
value types (a value of the wrong form is argparse's own error, exit status 2) and the
options' ranges, checked after parsing (check_ranges: one line, exit status 2)."""
from __future__ import annotations

import argparse
import math
import sys

from fastbp import optimizers
from fastbp.cli.errors import EXIT_USAGE, UsageError
from fastbp.cli.bench import cmd_bench, cmd_demo
from fastbp.cli.evaluate import cmd_evaluate
from fastbp.cli.export import cmd_export
from fastbp.cli.info import cmd_info
from fastbp.cli.predict import cmd_predict
from fastbp.cli.train import cmd_train


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the descriptions and examples."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, as every user mistake is (not
    the usage block before it): `fastbp train: error: ... (see fastbp train --help)`."""

    commands = {}           # the top-level parser's: each command's parser, by name

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} "
                              f"(see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:          # (argparse names the top-level parser, not the command's)
            name = getattr(namespace, "command", None)
            given = list(sys.argv[1:] if args is None else args)
            # the command's when they come after its name (`fastbp --bogus info x`: fastbp's)
            after = name in given and given.index(extras[0]) > given.index(name) \
                if extras[0] in given else False
            (self.commands.get(name, self) if after else self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    from fastbp import __version__

    parser = _Parser(
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
    export = command("export", "write a model as an ONNX graph (the onnx extra)",
                     "Write a saved model as an ONNX graph: input X [N, inputs], output Y "
                     "[N, outputs], the model's dtype (docs/onnx.md). What the sidecar "
                     "(MODEL.json) records (features, targets, classes, outputs, loss) goes "
                     "into the graph's metadata, as JSON. Needs pip install \"fastbp[onnx]\".",
                     "example:\n  fastbp export model.fbp model.onnx", cmd_export)
    export.add_argument("model", metavar="MODEL", help="a model file written by fastbp")
    export.add_argument("output", metavar="OUTPUT",
                        help="the ONNX file to write (an existing one is replaced)")
    _add_demo(command("demo", "train a network on generated spirals, with progress",
                      "Learn three interleaved spirals (generated, no download), showing "
                      "loss, accuracy and speed per epoch.",
                      "example:\n  fastbp demo --epochs 5 --samples 20000", cmd_demo))
    _add_bench(command("bench", "measure training throughput",
                       BENCH_DESCRIPTION, BENCH_EXAMPLES, cmd_bench))
    parser.commands = commands.choices
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


def _add_data_options(sub, targets: bool, target_default="the last column"):
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
                                f"end); repeat it for several outputs (default: "
                                f"{target_default})")
        group.add_argument("--targets", default=None, metavar="FILE.npy",
                           help="the targets of an NPY input, one row per row of INPUT")
    group.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                       help="a column to leave out of the features (repeatable)")
    return group


def _add_train(sub):
    sub.add_argument("input", metavar="INPUT", help="the training data: .csv, .npy or .npz")
    _add_data_options(sub, targets=True)
    _add_network_options(sub.add_argument_group("network"))
    _add_training_options(sub.add_argument_group("training"))
    out = sub.add_argument_group("output")
    out.add_argument("--output", "-o", default="model.fbp", metavar="PATH",
                     help="where to write the model; its sidecar goes to PATH.json "
                          "(default %(default)s)")
    out.add_argument("--plot", default=None, metavar="PNG",
                     help="write the loss curve to this PNG file (needs matplotlib)")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")


def _add_network_options(net):
    net.add_argument("--hidden", type=_int_list, default="64", metavar="WIDTHS",
                     help="hidden layer widths, comma-separated (e.g. 128,64); 'none' for no "
                          "hidden layer (default %(default)s)")
    net.add_argument("--activation", type=_name_list, default=None, metavar="NAME",
                     help="the hidden layers' activation (relu, leaky_relu, sigmoid, tanh, "
                          "elu, softplus, gelu, swish, identity), or one per hidden layer, "
                          "comma-separated (default relu)")
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


def _add_training_options(fit):
    fit.add_argument("--loss", default="auto", metavar="NAME",
                     help="mse, mae, huber, cce (categorical_crossentropy) or bce "
                          "(binary_crossentropy); auto: cce when the target column holds "
                          "text, mse otherwise (default %(default)s)")
    fit.add_argument("--optimizer", default="sgd", choices=optimizers.REGISTRY.canonical_names,
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
                     help="threads for the fit (default: the count measured fastest for this "
                          "network and batch on this machine, within the caller's limits)")


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
    _add_data_options(sub, targets=True, target_default="the target columns the model was "
                      "trained with, from its sidecar; without one, the last column")
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
                     help="threads for the fit (default: measured, as for train)")
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
    sub.add_argument("--rows", type=int, default=None, metavar="N",
                     help="built-in: rows of the W1-shaped data set (default 20000)")
    sub.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seeds the data (default %(default)s)")


# Options with a least value, checked after parsing (check_ranges) so that a value out of
# range is one line that names the option, as every user mistake is
LEAST = {"epochs": 0, "batch_size": 1, "early_stopping": 0, "threads": 1, "samples": 1,
         "hidden": 1, "repeats": 1, "rows": 1, "seed": 0}
# Options of seconds, finite and > 0, or >= 0 where 0 is allowed: --max-time 0 is one
# epoch, as Trainer(max_time=0) (the first epoch always runs)
SECONDS = {"duration": False, "warmup": False, "max_time": True}


def check_ranges(args) -> None:
    """A UsageError for an option whose value is out of its range (LEAST, SECONDS)."""
    for dest, least in LEAST.items():
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < least:   # (train's --hidden is a list)
            raise UsageError(f"--{dest.replace('_', '-')} must be >= {least}; got {value}")
    for dest, zero_allowed in SECONDS.items():
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and (
                value >= 0 if zero_allowed else value > 0)):
            raise UsageError(f"--{dest.replace('_', '-')} must be a finite number of seconds "
                             f"{'>= 0' if zero_allowed else '> 0'}; got {value}")


def _int_list(text: str) -> list[int]:
    if text.strip().lower() == "none":     # (only the word: "", "," and "0" were none too)
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = None
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected widths separated by commas, such as 128,64 (or none for no hidden "
            f"layer); got {text!r}")
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
