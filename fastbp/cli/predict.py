"""`fastbp predict`: a saved model's outputs for the rows of a table, as probabilities or
(--labels) the original class labels, written as CSV or NPY (or CSV on standard output)."""
from __future__ import annotations

import sys

from fastbp import _files
from fastbp.cli.errors import UsageError
from fastbp.cli.outputs import check_distinct, check_writable, write_csv, write_csv_bytes
from fastbp.cli.sidecar import classes_dtype, load_model, loss_of, sidecar_to_read
from fastbp.cli.tables import read_table, select_columns
from fastbp.cli.targets import takes_class_labels


def cmd_predict(args) -> int:
    import numpy as np

    if args.output is not None:       # ("" is refused as train refuses it, not stdout)
        check_writable(args.output, "--output")
        check_distinct([("MODEL", args.model),
                        ("the model's sidecar", sidecar_to_read(args.model)),
                         ("INPUT", args.input)], [("--output", args.output)])
    elif sys.stdout is None:          # (`>&-`: "argument 1 must have a "write" method")
        raise UsageError("standard output is closed, and the rows go there without "
                         "--output: give --output FILE")
    model, sidecar = load_model(args.model)
    table = read_table(args.input, args, want_targets=False)
    features, _, _ = select_columns(table, args, sidecar, model.layer_sizes[0],
                                    want_targets=False)
    X = table.numeric(features, "feature", dtype=model.dtype)
    probabilities = model.predict(X)
    n_outputs = probabilities.shape[1]
    outputs = (sidecar or {}).get("outputs") or (
        ["y"] if n_outputs == 1 else [f"y{k}" for k in range(n_outputs)])
    if args.labels:
        values, header = predicted_labels(probabilities, model, sidecar)
    else:
        values, header = probabilities, list(outputs)
    if args.output and args.output.lower().endswith(".npy"):
        # (labels, each class as it is for the CSV writer, in a dtype that holds every class
        # exactly: an object array needs pickle, and NumPy's own choice for a mix of int64
        # and uint64 classes, float64, changed the larger ones)
        array = values.astype(classes_dtype(sidecar["classes"])) if values.dtype == object \
            else values
        _files.write_file(args.output, lambda stream: np.save(stream, array))
    elif args.output:
        _files.write_file(args.output, lambda stream: write_csv_bytes(stream, header, values))
    else:
        write_csv(sys.stdout, header, values)
        sys.stdout.flush()
    if args.output:
        print(f"fastbp predict: wrote {len(values):,} rows to {args.output}", file=sys.stderr)
    return 0


def predicted_labels(probabilities, model, sidecar):
    """(labels, header) of each row: the class with the highest probability (softmax, or
    any multi-output model trained with cce), p > 0.5 for a sigmoid output."""
    import numpy as np

    loss = loss_of(model, sidecar)
    classes = (sidecar or {}).get("classes")
    targets = (sidecar or {}).get("targets") or ["label"]
    header_name = targets[0] if len(targets) == 1 else "label"
    if takes_class_labels(loss):
        index = probabilities.argmax(axis=1)
        if classes:
            return np.array(classes, dtype=object)[index].reshape(-1, 1), [header_name]
        return index.reshape(-1, 1), [header_name]
    if loss.is_classification:
        on = (probabilities > 0.5).astype(np.int64)
        if probabilities.shape[1] == 1:
            if classes:
                return np.array(classes, dtype=object)[on[:, 0]].reshape(-1, 1), [header_name]
            return on, [header_name]
        names = (sidecar or {}).get("outputs") or [f"y{k}" for k in range(on.shape[1])]
        return on, list(names)
    raise UsageError(f"--labels is for classification models; this one is a regression "
                     f"model (loss {loss.name}): leave out --labels")
