"""ONNX export: `to_onnx(model, path)` (also `model.to_onnx(path)`); needs the `onnx` extra.

The graph computes what `model.predict` computes (docs/onnx.md):

    input  "X"  [N, n_in], the model's dtype (tensor(float) or tensor(double))
    per layer l:  MatMul(A, W_l) -> Add(., b_l) -> activation      (weights as initializers)
    output "Y"  [N, n_out]

Activations: relu (Relu), leaky_relu (LeakyRelu, alpha 0.01), sigmoid (from Exp(-|x|),
accurate in both tails, where ONNX Runtime's Sigmoid kernel flushes tiny values to 0), tanh
(Tanh), softmax (Softmax, axis -1), elu (z for z > 0, else expm1(z) by Kahan's formula:
ONNX Runtime's Elu, exp(z) - 1, loses every digit near 0), softplus (Softplus), gelu (exact,
0.5 x (1 + erf(x / sqrt 2)), 1 + erf through a Chebyshev series for erfc: 1 + Erf cancels
for negative x), swish (x * sigmoid(x)), identity (no node). ONNX Runtime's CPU provider
implements Softplus for float only, and LeakyRelu's alpha is a 32-bit float attribute, so in
a float64 graph those two are written with elementary operators instead (Exp, Log, Where),
which any ONNX runtime runs in double. Dropout is a training-time operation: the exported
graph, like predict, never drops.

Opset 17 (IR version 8), which every ONNX Runtime since 1.13 runs; `onnx.checker` passes.
The model's metadata: producer "fastbp" and its version; metadata_props layer_sizes and
activations as JSON, dtype as its name, for a model with dropout, dropout as JSON and a
note, and for a fastbp.sklearn estimator, its class name, what its outputs are and a
classifier's classes as JSON. A model whose parameters are not all finite is refused.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["to_onnx", "to_onnx_proto", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8               # the IR version of opset 17 (onnx.helper.VERSION_TABLE)
LEAKY_SLOPE = 0.01           # as fastbp's kernels (FBP_LEAKY_SLOPE)
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one serialized message

# Chebyshev coefficients c_k of P(y) = sum_k c_k T_k(y), with, for z >= 0,
#     t = 2 / (2 + z),  y = 2 t - 1 in (-1, 1],  erfc(z) = t * exp(-z^2 + P(y))
# (the expansion of Numerical Recipes, 3rd ed., section 6.2.2), computed with mpmath at 50
# digits and truncated where |c_k| < 1e-19: relative error of erfc below 1e-16.
ERFC_CHEBYSHEV = (
    -0.6513268598908547, 0.6419697923564902, 0.019476473204185836, -0.009561514786808632,
    -0.0009465953444820369, 0.00036683949785276145, 4.252332480690777e-05,
    -2.0278578112534242e-05, -1.6242900046470256e-06, 1.3036558355805232e-06,
    1.5626441722066142e-08, -8.523809591492654e-08, 6.5290544390988515e-09,
    5.059343495551469e-09, -9.91364156493033e-10, -2.273651222931836e-10,
    9.646791102015527e-11, 2.3940380830391146e-12, -6.886027526497553e-12,
    8.944879273090725e-13, 3.130921399342958e-13, -1.1270822361367252e-13,
    3.810905255189232e-16, 7.106097613609237e-15, -1.5230282014571043e-15,
    -9.457494571291233e-17, 1.210237189224279e-16, -2.816663087747177e-17,
    5.003005559445902e-20, 2.3281042579529253e-18, -8.446077682509006e-19,
)
ERFC_ZERO_BEYOND = 30.0      # erfc(z) < 1e-392 past it: 0 in double (and in float)


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install "fastbp[onnx]" '
                          '(installs onnx and onnxruntime)') from None
    return onnx, helper, numpy_helper


class _GraphBuilder:
    """Collects nodes and initializers, with unique names and shared scalar constants."""

    def __init__(self, onnx, helper, numpy_helper, dtype: np.dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        # the graph's element type, and one with at most half its significant bits
        self.element, self.narrow = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) \
            if dtype == np.float32 else (onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT)
        self.nodes, self.initializers = [], []
        self._constants = {}
        self._counter = 0

    def name(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}_{self._counter}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def const(self, value: float) -> str:
        """The name of a scalar initializer of the graph's dtype holding `value`."""
        key = float(value)
        if key not in self._constants:
            name = f"const_{len(self._constants)}"
            self._constants[key] = self.tensor(name, np.array(key, dtype=self.dtype))
        return self._constants[key]

    def op(self, op_type: str, inputs, output: str | None = None, **attributes) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output],
                                                name=self.name(f"{op_type}_node"), **attributes))
        return output


# ---- activations: each takes the pre-activation's name and the output's name --------------

def _sigmoid(g, z, out=None):
    """With e = exp(-|z|): 1 / (1 + e) for z >= 0, e / (1 + e) below, as fastbp's kernel:
    accurate to a few ulps in both tails, down to its subnormal values. (ONNX Runtime's
    Sigmoid kernel is accurate in absolute terms only: 0 for float32 inputs below about -18,
    where the sigmoid is still 1e-8; and 1 / (1 + exp(-z)) overflows exp(-z) below -88.7 in
    float, -709.8 in double, where it gives 0 for a sigmoid still in the normal range.)"""
    e = g.op("Exp", [g.op("Neg", [g.op("Abs", [z])])])
    one_plus_e = g.op("Add", [e, g.const(1.0)])
    return g.op("Where", [g.op("Less", [z, g.const(0.0)]), g.op("Div", [e, one_plus_e]),
                          g.op("Div", [g.const(1.0), one_plus_e])], out)


def _log1p(g, e):
    """log(1 + e) for e >= 0, accurate for small e (Goldberg's trick)."""
    w = g.op("Add", [g.const(1.0), e])
    ratio = g.op("Div", [g.op("Log", [w]), g.op("Sub", [w, g.const(1.0)])])
    return g.op("Where", [g.op("Equal", [w, g.const(1.0)]), e, g.op("Mul", [e, ratio])])


def _expm1_nonpositive(g, x):
    """exp(x) - 1 for x <= 0, accurate near 0 (Kahan's trick), exp(x) - 1 below -0.5."""
    w = g.op("Exp", [x])
    w_minus_1 = g.op("Sub", [w, g.const(1.0)])
    kahan = g.op("Div", [g.op("Mul", [w_minus_1, x]), g.op("Log", [w])])
    near_zero = g.op("Where", [g.op("Equal", [w, g.const(1.0)]), x, kahan])
    return g.op("Where", [g.op("Less", [x, g.const(-0.5)]), w_minus_1, near_zero])


def _one_plus_erf(g, u, narrow):
    """1 + erf(u) = 2 - erfc(u) for u >= 0, erfc(|u|) for u < 0, with erfc from the
    Chebyshev series (no cancellation for negative u). narrow: an ONNX type with at most
    half the graph type's significant bits (see the exponent below)."""
    # |u| past 30 changes nothing (erfc(30) is 0 in double) and keeps |u| within `narrow`
    z = g.op("Min", [g.op("Abs", [u]), g.const(ERFC_ZERO_BEYOND)])
    t = g.op("Div", [g.const(2.0), g.op("Add", [z, g.const(2.0)])])
    y = g.op("Sub", [g.op("Mul", [t, g.const(2.0)]), g.const(1.0)])
    two_y = g.op("Mul", [y, g.const(2.0)])
    # Clenshaw: b_k = 2y b_{k+1} - b_{k+2} + c_k for k = n..1; P = y b_1 - b_2 + c_0
    c = ERFC_CHEBYSHEV
    b1, b2 = g.const(c[-1]), None                             # b_n = c_n, b_{n+1} = 0
    for k in range(len(c) - 2, 0, -1):
        step = g.op("Mul", [two_y, b1])
        if b2 is not None:
            step = g.op("Sub", [step, b2])
        b1, b2 = g.op("Add", [step, g.const(c[k])]), b1
    series = g.op("Add", [g.op("Sub", [g.op("Mul", [y, b1]), b2]), g.const(c[0])])
    # exp(-z^2 + P): z^2 rounded would put its rounding error, times z^2, into exp's
    # relative error (4e-13 in double at z = 26). With h = z rounded to `narrow`, h^2 is
    # exact and z^2 = h^2 + (z - h)(z + h), whose second term is small.
    h = g.op("Cast", [g.op("Cast", [z], to=narrow)], to=g.element)
    exponent = g.op("Sub", [series, g.op("Mul", [g.op("Sub", [z, h]), g.op("Add", [z, h])])])
    erfc = g.op("Mul", [g.op("Mul", [t, g.op("Exp", [g.op("Neg", [g.op("Mul", [h, h])])])]),
                        g.op("Exp", [exponent])])
    return g.op("Where", [g.op("Less", [u, g.const(0.0)]), erfc,
                          g.op("Sub", [g.const(2.0), erfc])])


def _activation(g, name: str, z: str, out: str, native: bool) -> str:
    """Nodes computing activation `name` of `z` into `out`. native: the dtype (float32) for
    which ONNX Runtime's CPU provider implements Softplus and LeakyRelu's alpha is exact."""
    if name == "identity":
        return g.op("Identity", [z], out)
    if name == "relu":
        return g.op("Relu", [z], out)
    if name == "leaky_relu":
        if native:       # LeakyRelu's alpha is a float attribute: exact for float32 only
            return g.op("LeakyRelu", [z], out, alpha=LEAKY_SLOPE)
        return g.op("Where", [g.op("Greater", [z, g.const(0.0)]), z,
                              g.op("Mul", [z, g.const(LEAKY_SLOPE)])], out)
    if name == "sigmoid":
        return _sigmoid(g, z, out)
    if name == "tanh":
        return g.op("Tanh", [z], out)
    if name == "softmax":
        return g.op("Softmax", [z], out, axis=-1)
    if name == "swish":
        return g.op("Mul", [z, _sigmoid(g, z)], out)
    if name == "elu":           # (not Elu: ONNX Runtime's is exp(z) - 1, 100% off near 0)
        negative = _expm1_nonpositive(g, g.op("Min", [z, g.const(0.0)]))
        return g.op("Where", [g.op("Greater", [z, g.const(0.0)]), z, negative], out)
    if name == "softplus":      # max(z, 0) + log1p(exp(-|z|))
        if native:
            return g.op("Softplus", [z], out)
        tail = _log1p(g, g.op("Exp", [g.op("Neg", [g.op("Abs", [z])])]))
        return g.op("Add", [g.op("Relu", [z]), tail], out)
    if name == "gelu":          # 0.5 z (1 + erf(z / sqrt 2)), as fastbp's kernel
        # (1 + Erf(u) would cancel for negative u: erfc's series keeps the tail's digits)
        # (sqrt(0.5) is 1 / sqrt 2 correctly rounded, as the kernel's constant; 1 / sqrt(2.0)
        # is an ulp below it, which moves gelu by 4e-13 at z = -37)
        u = g.op("Mul", [z, g.const(math.sqrt(0.5))])
        one_plus_erf = _one_plus_erf(g, u, g.narrow)
        return g.op("Mul", [g.op("Mul", [z, g.const(0.5)]), one_plus_erf], out)
    raise ValueError(f"ONNX export does not know the activation {name!r}")


def _network(model) -> tuple:
    """(the fastbp.MLP to export, metadata_props it adds): `model` itself, or a fitted
    fastbp.sklearn estimator's model_ with what its outputs are (`classes` as JSON for a
    classifier, `outputs` in words)."""
    from fastbp import _core
    from fastbp.model import MLP

    if isinstance(model, MLP):
        network, described = model, {}
    elif any(kind.__module__ == "fastbp.sklearn" for kind in type(model).__mro__) \
            and hasattr(model, "get_params"):        # (a user's subclass too)
        network = getattr(model, "model_", None)
        if not isinstance(network, MLP):
            raise ValueError(f"this {type(model).__name__} is not fitted yet: call fit "
                             f"before exporting it")
        described = {"estimator": type(model).__name__}
        classes = getattr(model, "classes_", None)
        if classes is None:
            described["outputs"] = "the predictions, one column per target"
        else:
            described["classes"] = json.dumps(np.asarray(classes).tolist(), default=str)
            described["outputs"] = (
                "the probability of classes[1], one column" if network.layer_sizes[-1] == 1
                and len(classes) == 2 else "each class's probability, one column each")
    else:
        raise TypeError(f"model must be a fastbp.MLP or a fitted fastbp.sklearn estimator; "
                        f"got {type(model).__name__}")
    if not _core.all_finite(network._params[None, :]):
        raise ValueError("the model's parameters are not all finite (NaN or infinity, written "
                         "into its weights or biases or loaded so): its graph would compute "
                         "NaN or infinite outputs (predict refuses such a model)")
    return network, described


def to_onnx_proto(model, metadata=None):
    """The model (a fastbp.MLP, or a fitted fastbp.sklearn estimator: its model_) as an
    onnx.ModelProto (checked with onnx.checker); metadata: more metadata_props, str to str,
    beside fastbp's own (which they may not replace)."""
    from fastbp import __version__

    model, described = _network(model)
    extra = _extra_metadata(metadata)
    onnx, helper, numpy_helper = _import_onnx()
    dtype = model.dtype
    n_bytes = model.n_params * dtype.itemsize
    if n_bytes > MAX_PROTO_BYTES - (1 << 20):
        raise ValueError(f"the model's parameters take {n_bytes / 2**30:.1f} GiB; an ONNX file "
                         f"holds at most 2 GiB (a protobuf limit)")
    native = dtype == np.float32
    g = _GraphBuilder(onnx, helper, numpy_helper, dtype)
    element = g.element

    sizes, names = model.layer_sizes, model.activations
    current = "X"
    for layer, (weights, biases, activation) in enumerate(
            zip(model.weights, model.biases, names), start=1):
        w = g.tensor(f"W{layer}", np.array(weights, dtype=dtype, copy=True))
        b = g.tensor(f"b{layer}", np.array(biases, dtype=dtype, copy=True))
        product = g.op("MatMul", [current, w], f"layer{layer}_matmul")
        last = layer == len(names)
        z_name = "Y" if last and activation == "identity" else f"layer{layer}_z"
        z = g.op("Add", [product, b], z_name)
        if activation == "identity":
            current = z
        else:
            current = _activation(g, activation, z, "Y" if last else f"layer{layer}_a", native)

    graph = helper.make_graph(
        g.nodes, "fastbp_mlp",
        [helper.make_tensor_value_info("X", element, ["N", sizes[0]])],
        [helper.make_tensor_value_info("Y", element, ["N", sizes[-1]])],
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastbp", producer_version=__version__,
                              doc_string=repr(model))
    proto.ir_version = IR_VERSION
    proto.model_version = 1
    metadata = {"layer_sizes": json.dumps(list(sizes)), "activations": json.dumps(list(names)),
                "dtype": dtype.name}
    if any(model.dropout):
        metadata["dropout"] = json.dumps(list(model.dropout))
        metadata["note"] = "dropout is applied in training only; this graph never drops"
    metadata.update(described)
    taken = sorted(set(extra) & set(metadata))
    if taken:
        raise ValueError(f"metadata may not replace fastbp's own entries: {taken}")
    metadata.update(extra)
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _extra_metadata(metadata) -> dict:
    """A caller's metadata_props: a mapping of str to str (or None: none)."""
    if metadata is None:
        return {}
    if not hasattr(metadata, "items"):
        raise TypeError(f"metadata must be a mapping of str to str; got "
                        f"{type(metadata).__name__}")
    items = dict(metadata.items())
    for key, value in items.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str; got {key!r}: "
                            f"{type(value).__name__}")
    return items


def to_onnx(model, path, metadata=None) -> None:
    """Write `model` (a fastbp.MLP, or a fitted fastbp.sklearn estimator: its model_, with
    its classes in the metadata) as an ONNX graph to exactly `path`, atomically; metadata:
    more metadata_props (str to str) beside fastbp's own.

    Input "X" [N, n_in] and output "Y" [N, n_out] in the model's dtype; see the module's
    docstring and docs/onnx.md. Needs `pip install "fastbp[onnx]"`.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str, bytes or os.PathLike; got "
                        f"{type(path).__name__}")
    if not os.fspath(path):
        raise ValueError("path must not be empty")
    from fastbp import _files
    proto = to_onnx_proto(model, metadata)
    _files.write_file(path, proto.SerializeToString())
