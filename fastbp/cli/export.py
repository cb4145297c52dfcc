"""`fastbp export`: a saved model as an ONNX graph (docs/onnx.md), with what its sidecar
records in the graph's metadata."""
from __future__ import annotations

import json
import sys

from fastbp.cli.errors import UsageError
from fastbp.cli.outputs import check_distinct, check_writable, is_stdout
from fastbp.cli.sidecar import load_model, sidecar_to_read

# the sidecar's entries a runtime needs to read the graph's inputs and outputs
SIDECAR_ENTRIES = ("features", "targets", "classes", "outputs", "loss")


def cmd_export(args) -> int:
    from fastbp.export import to_onnx
    # (before anything is read: `export m.fbp m.fbp` replaced the model with its graph)
    target = check_writable(args.output, "OUTPUT")
    check_distinct([("MODEL", args.model), ("the model's sidecar", sidecar_to_read(args.model))],
                   [("OUTPUT", args.output)])
    model, sidecar = load_model(args.model)
    metadata = {}
    for key in SIDECAR_ENTRIES:
        value = (sidecar or {}).get(key)
        if value is not None:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    try:
        to_onnx(model, args.output, metadata)
    except BrokenPipeError:     # (not the success of `predict | head`: the graph is lost)
        raise UsageError(f"the reader of a pipe went away before the graph was all written "
                         f"({args.output})") from None
    n_in, n_out = model.layer_sizes[0], model.layer_sizes[-1]
    # (on stderr where the graph goes to stdout: -o /dev/stdout | a reader of the graph)
    print(f"wrote {args.output}: ONNX, input X [N, {n_in}], output Y [N, {n_out}], "
          f"{model.dtype.name}" + (f"; metadata {', '.join(metadata)}" if metadata else ""),
          file=sys.stderr if is_stdout(target) else sys.stdout)
    return 0
