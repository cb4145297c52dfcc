"""`fastbp evaluate`: a saved model's mean loss on a table, and its accuracy
(classification) or MAE and R² (regression)."""
from __future__ import annotations

import json
import math

from fastbp.cli.errors import UsageError
from fastbp.cli.sidecar import load_model, loss_of, sidecar_to_read
from fastbp.cli.tables import read_table, select_columns
from fastbp.cli.targets import encode_targets, numbers_or_none, numeric_targets, \
    takes_class_labels


def cmd_evaluate(args) -> int:
    from fastbp import metrics

    model, sidecar = load_model(args.model)
    loss = loss_of(model, sidecar, args.loss)
    table = read_table(args.input, args, want_targets=True)
    features, target_cols, target_names = select_columns(table, args, sidecar,
                                                         model.layer_sizes[0])
    X = table.numeric(features, "feature", dtype=model.dtype)
    if sidecar is None and loss.is_classification and len(target_cols) == 1 \
            and numbers_or_none(target_cols[0]) is None:
        raise UsageError(f"{args.model} has no sidecar ({sidecar_to_read(args.model)}) "
                         f"listing its "
                         f"classes, so the targets must be class indices 0..k-1, not text")
    where = table.target_where
    if sidecar is None and takes_class_labels(loss) and len(target_cols) == 1:
        Y = numeric_targets(target_cols, target_names, where=where, dtype=model.dtype)[:, 0]
    elif sidecar is None and loss.is_classification:
        Y = numeric_targets(target_cols, target_names, where=where, dtype=model.dtype)
    else:
        Y, _, _ = encode_targets(target_cols, target_names, loss, sidecar, where,
                                 model.dtype)
    value = model.evaluate(X, Y, loss)
    predictions = model.predict(X)
    figures = {"rows": int(X.shape[0]), "loss": value}
    n_outputs = model.layer_sizes[-1]
    for name in metrics.default_metrics(loss, n_outputs):
        figures[name] = metrics.get(name)(Y, predictions)
    if args.json:
        # strict JSON: a figure that is not a number (R² of one row is NaN) is null
        print(json.dumps({"loss_name": loss.name,
                          **{key: value if math.isfinite(value) else None
                             for key, value in figures.items()}}))
        return 0
    labels = {"rows": "rows", "loss": f"loss ({loss.name})", "accuracy": "accuracy",
              "binary_accuracy": "binary accuracy", "mae": "MAE", "r2": "R²"}
    width = max(len(labels.get(key, key)) for key in figures)
    for key, value in figures.items():
        shown = f"{value:,}" if key == "rows" else f"{value:.6g}"
        print(f"{labels.get(key, key):<{width}}  {shown}")
    return 0
