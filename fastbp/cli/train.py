"""`fastbp train`: read a table, encode its targets for the loss, build the network and
the Trainer from the options, fit, and write the model, its sidecar and the loss plot (all
or none)."""
from __future__ import annotations

import os
import sys

from fastbp import _files, schedules
from fastbp.cli.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, UsageError
from fastbp.cli.outputs import check_distinct, check_writable, is_stdout, short_list, \
    silence_stdout
from fastbp.cli.sidecar import name_as_text, sidecar_bytes, sidecar_path
from fastbp.cli.tables import read_table, select_columns
from fastbp.cli.targets import encode_targets, numbers_or_none, takes_class_labels


PLOT_HINT = 'pip install matplotlib (or pip install "fastbp[plot]")'


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") \
            from None


# How the numbers after ':' in --schedule NAME[:ARGS] become each schedule's arguments:
# (fewest, most, a function of (numbers, epochs, monitor) giving the constructor's arguments).
# The schedule itself is found by its name in fastbp.schedules' own table.
SCHEDULE_ARGUMENTS = {
    schedules.Constant: (0, 0, lambda values, epochs, monitor: {}),
    schedules.StepDecay: (1, 2, lambda values, epochs, monitor: dict(
        zip(("step_size", "gamma"), values))),
    schedules.ExponentialDecay: (1, 1, lambda values, epochs, monitor: {"gamma": values[0]}),
    schedules.Cosine: (0, 1, lambda values, epochs, monitor: dict(
        total_epochs=max(epochs, 1), **dict(zip(("min_learning_rate",), values)))),
    schedules.InverseScaling: (0, 2, lambda values, epochs, monitor: dict(
        zip(("power", "scale"), values))),
    schedules.ReduceOnPlateau: (0, 2, lambda values, epochs, monitor: dict(
        monitor=monitor, patience=values[0] if values else 10,
        **({"factor": values[1]} if len(values) > 1 else {}))),
}


def _schedule(spec, epochs, monitor):
    """The schedule of --schedule NAME[:ARGS] (None without one)."""
    if spec is None:
        return None
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    try:
        values = [float(part) for part in rest.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--schedule {spec}: the arguments after ':' must be numbers") from None
    try:
        low, high, arguments = SCHEDULE_ARGUMENTS[schedules.REGISTRY.lookup(name)]
    except (ValueError, KeyError):
        known = [known for schedule in SCHEDULE_ARGUMENTS
                 for known in schedules.REGISTRY.canonical_names
                 if schedules.REGISTRY.lookup(known) is schedule]
        raise UsageError(f"unknown schedule {name!r}; valid: {', '.join(known)}") from None
    if not low <= len(values) <= high:
        raise UsageError(f"--schedule {name} takes {low}..{high} numbers after ':'; got "
                         f"{len(values)} (see fastbp train --help)")
    try:
        return schedules.REGISTRY.lookup(name)(**arguments(values, epochs, monitor))
    except (ValueError, TypeError) as error:      # (named as the option, not the class)
        raise UsageError(f"--schedule {spec}: {error}") from None


def _per_hidden(values, n_hidden, option):
    if len(values) == 1:
        return values * n_hidden
    if len(values) != n_hidden:
        raise UsageError(f"{option} lists {len(values)} values; give one, or one per hidden "
                         f"layer ({n_hidden})")
    return list(values)


def cmd_train(args) -> int:
    from fastbp import metrics

    sidecar_file, model_on_stdout = _check_outputs(args)
    # the progress and the summary: on stdout, unless the model goes there
    progress = _ProgressStream(sys.stderr if model_on_stdout else sys.stdout)
    say = (lambda *parts: None) if args.quiet else \
        (lambda *parts: print(*parts, file=progress, flush=True))
    table = read_table(args.input, args, want_targets=True)
    features, target_cols, target_names = select_columns(table, args, None)
    X = table.numeric(features, "feature",
                      "; encode it as numbers, or leave it out with --drop COLUMN", args.dtype)
    loss, loss_note = _choose_loss(args.loss, target_cols)
    Y, classes, outputs = encode_targets(target_cols, target_names, loss,
                                         where=table.target_where, dtype=args.dtype)
    model = _build_model(args, X.shape[1], len(outputs), loss)
    monitor = "val_loss" if args.validation_split > 0 else "loss"
    trainer, learning_rate = _build_trainer(args, loss, monitor, model)
    X, Y, n_validation = _validation_last(args, X, Y)
    fit_callbacks, stopper = _callbacks(args, monitor, progress)
    features_named = [table.names[j] for j in features] if table.named else None
    sidecar_content = sidecar_bytes({    # (before the work: it refuses what it cannot hold)
        "loss": loss.name, "features": features_named,
        "targets": list(target_names) if table.named or table.targets is not None else None,
        "classes": classes, "outputs": outputs, "trained_on": name_as_text(
            os.path.basename(args.input))})

    what = f"{len(classes)} classes: {short_list(classes)}" if classes and \
        takes_class_labels(loss) and len(target_cols) == 1 else f"{len(outputs)} output(s)"
    say(f"fastbp train: {X.shape[0]:,} rows x {X.shape[1]} features from {args.input}; "
        f"target {', '.join(target_names)} ({what})")
    say(f"{model!r}, {model.n_params:,} parameters")
    say(f"loss {loss.name}{loss_note}; optimizer {args.optimizer}, learning rate {learning_rate}, "
        f"batch {args.batch_size}, {args.epochs} epochs"
        + (f"; {n_validation:,} rows held out for validation" if n_validation else ""))

    history = trainer.fit(model, X, Y, validation_split=args.validation_split if n_validation
                          else 0.0, callbacks=fit_callbacks,
                          metrics=metrics.default_metrics(loss, len(outputs)))
    _write_outputs(args, model, history, loss, sidecar_file, sidecar_content)
    return _report(args, history, stopper, monitor, sidecar_file, say)


class _ProgressStream:
    """Where train's progress and summary are written (a text stream). When its reader goes
    away (`fastbp train ... | head -1`) the rest is dropped and training goes on: the model
    is what the command is for, and it goes to its own file."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        def write():
            try:
                self._stream.write(text)
            except UnicodeEncodeError:  # a file name that is not UTF-8, on a strict stream
                self._stream.write(name_as_text(text))
        self._attempt(write)
        return len(text)

    def flush(self) -> None:
        self._attempt(lambda: self._stream.flush())

    def _attempt(self, action):
        if self._stream is None:
            return
        try:
            action()
        except BrokenPipeError:
            if self._stream is sys.stdout:   # (what it holds would fail again at exit)
                silence_stdout()
            self._stream = None


def _check_outputs(args):
    """Check every path train writes before reading or training: (the sidecar's path, None
    when the model goes into a FIFO or a device: no file to put it beside; whether an
    output is standard output itself, as -o /dev/stdout is)."""
    model_target = check_writable(args.output, "--output")
    sidecar_file = None if _files.is_stream(model_target) else sidecar_path(args.output)
    if sidecar_file is not None:
        check_writable(sidecar_file, "--output's sidecar")
    targets = [model_target]
    if args.plot is not None:           # ("" refused as a path, not taken as no plot)
        targets.append(check_writable(args.plot, "--plot"))
        _need_matplotlib()
    check_distinct([("INPUT", args.input), ("--targets", getattr(args, "targets", None))],
                   [("--output", args.output), ("the sidecar", sidecar_file),
                    ("--plot", args.plot)])
    return sidecar_file, any(is_stdout(found) for found in targets)


def _choose_loss(option, target_cols):
    """(the fastbp.losses.Loss, a note for the summary) from --loss; auto: cce for one text
    column, mse otherwise."""
    from fastbp import losses

    if option != "auto":
        return losses.get(option), ""
    if len(target_cols) == 1 and numbers_or_none(target_cols[0]) is None:
        return losses.get("cce"), " (auto: the target holds text)"
    return losses.get("mse"), " (auto: numeric targets; --loss cce for class labels)"


def _build_model(args, n_inputs, n_outputs, loss):
    from fastbp.model import MLP

    hidden = args.hidden
    if not hidden and args.activation is not None:
        raise UsageError("--activation names the hidden layers' activations, and --hidden "
                         "none gives no hidden layer (the output's is --output-activation)")
    activations = _per_hidden(args.activation or ["relu"], len(hidden), "--activation") \
        if hidden else []
    dropout = _per_hidden(args.dropout, len(hidden), "--dropout") if hidden else []
    if not hidden and any(args.dropout):
        raise UsageError("--dropout needs a hidden layer (dropout acts on hidden layers)")
    output_activation = args.output_activation or loss.output_activation
    try:
        return MLP([n_inputs, *hidden, n_outputs], [*activations, output_activation.lower()],
                   dtype=args.dtype, init=args.init, seed=args.seed, dropout=dropout or 0.0)
    except (ValueError, TypeError) as error:
        raise _as_option(error) from None


# The option behind each of the model's and the trainer's settings that their checks name
_OPTION_OF = {"learning_rate": "--learning-rate", "momentum": "--momentum",
              "weight_decay": "--weight-decay", "clip_norm": "--clip-norm",
              "class_weight": "--class-weight", "n_threads": "--threads",
              "dropout": "--dropout"}


def _as_option(error):
    """A check's refusal that names a setting, as a UsageError naming its option (the
    error itself where it names none of them)."""
    from fastbp._validation import named_setting

    name = named_setting(error)
    if name not in _OPTION_OF:
        return error
    message = str(error).replace(" (or None for no clipping)", "")
    return UsageError(_OPTION_OF[name] + message[len(name):])


def _build_trainer(args, loss, monitor, model):
    """(the Trainer, the learning rate it uses), its settings checked for `model` (its
    dtype; class weights need classes) before any work, refused naming the options."""
    from fastbp import optimizers
    from fastbp.trainer import Trainer

    schedule = _schedule(args.schedule, args.epochs, monitor)
    try:
        # no --learning-rate: the optimizer's own default (0.001 for Adam, 0.01 for others)
        optimizer = optimizers.get(args.optimizer, args.learning_rate)
        if args.momentum or args.nesterov:
            if not isinstance(optimizer, optimizers.SGD):
                raise UsageError("--momentum and --nesterov are for --optimizer sgd")
            optimizer = optimizers.SGD(optimizer.learning_rate, momentum=args.momentum,
                                       nesterov=args.nesterov)
        trainer = Trainer(loss, optimizer=optimizer,
                          epochs=args.epochs, batch_size=args.batch_size,
                          shuffle=args.shuffle, seed=args.seed, schedule=schedule,
                          weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                          class_weight=args.class_weight, max_time=args.max_time,
                          n_threads=args.threads)
        trainer.spec().check_model(model)
        if args.class_weight is not None:
            loss.n_classes(model.layer_sizes[-1])
    except UsageError:
        raise
    except (ValueError, TypeError) as error:
        raise _as_option(error) from None
    return trainer, optimizer.learning_rate


def _validation_last(args, X, Y):
    """(X, Y, number of validation rows): with --validation-split, the rows reordered so
    that Trainer.fit's own validation_split holds out a random set (drawn with --seed, so
    that a file sorted by class validates on every class): the training rows first, in file
    order, then the held-out rows, in file order."""
    import numpy as np

    from fastbp.trainer import validation_split_point

    fraction = args.validation_split
    if fraction == 0:
        return X, Y, 0
    if not 0 < fraction < 1:
        raise UsageError(f"--validation-split must be between 0 and 1; got {fraction}")
    n_rows = X.shape[0]
    n_validation = n_rows - validation_split_point(n_rows, fraction)
    if not 1 <= n_validation < n_rows:
        raise UsageError(f"--validation-split {fraction} leaves "
                         f"{'no rows for validation' if n_validation < 1 else 'no rows to train on'}"
                         f" out of {n_rows}")
    order = np.random.default_rng(args.seed).permutation(n_rows)
    rows = np.concatenate([np.sort(order[n_validation:]), np.sort(order[:n_validation])])
    return X[rows], Y[rows], n_validation


def _callbacks(args, monitor, progress):
    """(the fit's callbacks, the EarlyStopping among them or None). progress: where the
    lines of the epochs go (tqdm's bar goes to stderr)."""
    from fastbp import callbacks

    fit_callbacks, stopper = [], None
    if not args.quiet:
        bar = callbacks.ProgressBar(args.epochs,
                                    use_tqdm=None if sys.stderr.isatty() else False)
        if not bar.uses_tqdm:
            bar.stream = progress
        fit_callbacks.append(bar)
    if args.early_stopping is not None:
        stopper = callbacks.EarlyStopping(monitor=monitor, patience=args.early_stopping,
                                          restore_best_weights=True)
        fit_callbacks.append(stopper)
    return fit_callbacks, stopper


def _write_outputs(args, model, history, loss, sidecar_file, sidecar_content):
    """The model, its sidecar and the plot: all of them, or none (fastbp._files)."""
    files = [(args.output, model._write_to)]
    if sidecar_file is not None:
        files.append((sidecar_file, sidecar_content))
    if args.plot:
        files.append((args.plot, _plot(history, loss)))
    try:
        _files.write_files(files)
    except BrokenPipeError:     # (not the success of `predict | head`: the model is lost)
        raise UsageError(f"the reader of a pipe went away before train's outputs were all "
                         f"written ({', '.join(path for path, _ in files)})") from None


def _report(args, history, stopper, monitor, sidecar_file, say) -> int:
    """The summary after training, and the exit status."""
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
    axes.set_ylabel(loss.name)
    axes.set_title("fastbp: loss per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()
