"""`fastbp info`: a saved model's layers, activations, dtype, dropout and parameter count,
and what its sidecar records."""
from __future__ import annotations

import json
import os
import stat

from fastbp.cli.outputs import short_list
from fastbp.cli.sidecar import load_model, name_as_text, sidecar_to_read


def describe(path) -> dict:
    model, sidecar = load_model(path)
    layers = []
    for k, (n_in, n_out, activation) in enumerate(
            zip(model.layer_sizes[:-1], model.layer_sizes[1:], model.activations)):
        dropout = model.dropout[k] if k < len(model.dropout) else 0.0
        layers.append({"inputs": n_in, "outputs": n_out, "activation": activation,
                       "dropout": float(dropout), "parameters": n_in * n_out + n_out})
    found = os.stat(path)               # (a pipe's size is 0: no size to show)
    size = found.st_size if stat.S_ISREG(found.st_mode) else None
    # (a name that is not UTF-8 as the sidecar writes it: else JSON no reader decodes)
    return {"path": name_as_text(os.fsdecode(path)), "bytes": size,
            "layer_sizes": list(model.layer_sizes), "activations": list(model.activations),
            "dtype": model.dtype.name, "parameters": int(model.n_params), "layers": layers,
            "sidecar": sidecar}


def cmd_info(args) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
        return 0
    n_layers = len(info["layers"])
    size = "not a regular file" if info["bytes"] is None else f"{info['bytes']:,} bytes"
    print(f"{info['path']}: fastbp MLP, {info['dtype']}, {n_layers} weight "
          f"layer{'s' if n_layers != 1 else ''}, {size}")
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
        print(f"sidecar {sidecar_to_read(args.model)}:")
        print(f"  loss         {sidecar.get('loss')}")
        if sidecar.get("features"):
            print(f"  features     {short_list(sidecar['features'])}")
        if sidecar.get("targets"):
            print(f"  targets      {short_list(sidecar['targets'])}")
        if sidecar.get("classes"):
            print(f"  classes      {short_list(sidecar['classes'])}")
    else:
        print("no sidecar (MODEL.json): columns are taken by position, classes are indices")
    return 0
