"""The model's sidecar, `<model>.json`: what the model file does not hold (the loss, the
feature and target column names, the class labels, the output names), written by `train`
beside the model and read, checked against the model, by the other commands."""
from __future__ import annotations

import json
import math
import os
import warnings

from fastbp._cache import opened_regular
from fastbp._format import RepeatedKey, without_repeats
from fastbp.cli.errors import UsageError
from fastbp.cli.outputs import short_list


SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "fastbp-cli-sidecar"
SIDECAR_VERSION = 1


def sidecar_path(model_path: str) -> str:
    """`<model>.json`, beside the file the model is: through a symbolic link, beside the
    file it names (which a model written through the link replaces), so that the model
    read by either name finds the sidecar written with it."""
    path = os.fspath(model_path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    return path + SIDECAR_SUFFIX


def sidecar_bytes(fields: dict) -> bytes:
    """The sidecar document holding `fields`, as the bytes of its file (UTF-8 JSON). train
    makes it before training, so that a name it cannot hold is refused before the work."""
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not is_utf8(item):
                raise UsageError(f"the sidecar cannot record {item!r} (one of the model's "
                                 f"{key}): it is not valid Unicode text (a lone surrogate, "
                                 f"as in text decoded with errors='surrogateescape')")
    document = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **fields}
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()


def is_utf8(value: str | bytes) -> bool:
    """Whether text can be written as UTF-8 (no lone surrogates), or bytes read as it."""
    try:
        value.encode("utf-8") if isinstance(value, str) else value.decode("utf-8")
    except UnicodeError:
        return False
    return True


def name_as_text(name: str) -> str:
    """A file name as text the sidecar and CSV headers can hold: a name that is not valid
    UTF-8 (os.fsdecode gives its odd bytes as lone surrogates, which no UTF-8 file can
    hold) with those bytes written as \\xNN, as Python shows them."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def sidecar_to_read(model_path: str) -> str:
    """The sidecar the commands read for `model_path`: sidecar_path's, or where there is
    none, one an earlier fastbp wrote beside a link (before 2026-12-06) if there is one."""
    path = sidecar_path(model_path)
    beside_link = os.fspath(model_path) + SIDECAR_SUFFIX
    if not os.path.exists(path) and path != beside_link and os.path.exists(beside_link):
        return beside_link
    return path


def read_sidecar(model_path: str, model):
    """The sidecar's fields for `model`, or None when there is none."""
    path = sidecar_to_read(model_path)
    if path != sidecar_path(model_path):
        warnings.warn(f"read the sidecar {path}, beside the link {model_path}; fastbp now "
                      f"writes it beside the file the link names ({sidecar_path(model_path)}):"
                      f" move it there")
    if not os.path.exists(path):
        return None
    document = _parsed(path)
    if not isinstance(document, dict) or document.get("format") != SIDECAR_FORMAT:
        raise UsageError(f"{path} is not a fastbp sidecar; remove or rename it")
    version = document.get("version")
    if type(version) is not int or not 1 <= version <= SIDECAR_VERSION:
        raise UsageError(f"{path} is a sidecar of version {version!r}; this fastbp reads "
                         f"version {SIDECAR_VERSION} (a newer fastbp wrote it?)")
    n_in, n_out = model.layer_sizes[0], model.layer_sizes[-1]
    _check_sidecar_fields(path, document, n_out)
    outputs, features = document.get("outputs"), document.get("features")
    if (outputs is not None and len(outputs) != n_out) or \
            (features is not None and len(features) != n_in):
        raise UsageError(f"{path} does not match {model_path} (it describes a model with "
                         f"{'?' if features is None else len(features)} inputs and "
                         f"{'?' if outputs is None else len(outputs)} outputs; the model has "
                         f"{n_in} and "
                         f"{n_out}): remove it or fix it")
    return document


def _parsed(path):
    """The JSON document in the sidecar at `path`, read as the cache files are read
    (fastbp._cache.opened_regular: a regular file only, opened without blocking, at most
    its size read: a FIFO blocked for good, a link to /dev/zero read until memory ran out)."""
    file = opened_regular(path, os.O_RDONLY)
    if file is None:
        raise UsageError(f"{path} (the model's sidecar) is not a regular file; remove it")
    with file:
        content = file.read(os.fstat(file.fileno()).st_size)
    try:
        document = json.loads(content.decode("utf-8"), object_pairs_hook=without_repeats,
                              parse_constant=_finite_number, parse_float=_finite_number)
        # (info --json and export write the sidecar's text back out, as UTF-8)
        is_text = is_utf8(json.dumps(document, ensure_ascii=False))
    except RepeatedKey as error:
        raise UsageError(f"{path} (the model's sidecar) names {error} twice; remove or fix "
                         f"it") from None
    except (ValueError, RecursionError) as error:   # (RecursionError: nested past Python's
        raise UsageError(f"{path} (the model's sidecar) is not valid JSON ({error}); remove "
                         f"or fix it") from None    # stack, "[[[[...")
    if not is_text:
        raise UsageError(f"{path} (the model's sidecar) holds text that is not valid Unicode "
                         f"(a lone surrogate, such as \\ud800 unpaired); remove or fix it")
    return document


def _finite_number(text):
    """A JSON number as a float, refusing NaN, Infinity and one past float64's range
    (1e999): strict JSON has none of them, and info --json and export write them back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _check_sidecar_fields(path, document, n_out):
    """The lists a sidecar holds are lists of distinct plain values, and its classes are as
    many as the model's outputs (two for a single sigmoid output), all held exactly by one
    NumPy type (classes_dtype)."""
    for key in ("outputs", "features", "targets", "classes"):
        value = document.get(key)
        if value is not None and (not isinstance(value, list) or not all(
                isinstance(item, (str, int, float)) and not isinstance(item, bool)
                for item in value)):
            raise UsageError(f"{path} (the model's sidecar): {key} must be a list of names; "
                             f"remove or fix it")
        # (a feature named twice was fed twice, a class named twice could not be told apart)
        try:
            without_repeats([(item, None) for item in value or []])
        except RepeatedKey as error:
            raise UsageError(f"{path} (the model's sidecar) names {error} twice in its "
                             f"{key}; remove or fix it") from None
    loss = document.get("loss")
    if loss is not None:        # (it reached fastbp.losses.get, whose error named no file)
        from fastbp import losses
        if not (isinstance(loss, str) and loss.lower() in
                (name.lower() for name in losses.REGISTRY.names)):
            raise UsageError(f"{path} (the model's sidecar): loss must be one of "
                             f"{', '.join(losses.REGISTRY.canonical_names)}; got {loss!r}: "
                             f"remove or fix it")
    classes = document.get("classes")
    expected = n_out if n_out > 1 else 2
    if classes is not None and len(classes) != expected:
        raise UsageError(f"{path} lists {len(classes)} classes; the model has "
                         f"{n_out} output{'s' if n_out != 1 else ''}, which need {expected}: "
                         f"remove or fix it")
    if classes is not None and classes_dtype(classes) is None:
        raise UsageError(f"{path} (the model's sidecar) lists classes that no NumPy type "
                         f"holds exactly (whole numbers past 64 bits, or negative ones beside "
                         f"ones past 2**63 - 1): {short_list(classes)}; remove or fix it")


def classes_dtype(classes):
    """The NumPy dtype that holds every one of `classes` exactly (predict --labels writes
    them to NPY so: an object array would need pickle), or None where none does: text;
    whole numbers in int64, else in uint64; else float64, where each is a float64 value
    (train writes a label 1e20 of a float column as the whole number 10**20)."""
    import numpy as np

    if any(isinstance(item, str) for item in classes):
        return np.dtype(str)
    if all(type(item) is int for item in classes):
        for dtype in (np.int64, np.uint64):
            if np.iinfo(dtype).min <= min(classes) and max(classes) <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    if all(_float64_holds(item) for item in classes):
        return np.dtype(np.float64)
    return None


def _float64_holds(number) -> bool:
    try:
        return float(number) == number
    except OverflowError:               # (a whole number past float64's range, 1.8e308)
        return False


def loss_of(model, sidecar, given=None):
    """The fastbp.losses.Loss to use for `model`: --loss, else the sidecar's, else the
    classification loss whose natural output activation is the model's (softmax: cce,
    sigmoid: bce), else mse."""
    from fastbp import losses

    if given:
        return losses.get(given)
    if sidecar and sidecar.get("loss"):
        return losses.get(sidecar["loss"])
    output = model.activations[-1]
    paired = [losses.get(name) for name in losses.REGISTRY.canonical_names]
    return next((loss for loss in paired if loss.is_classification
                 and loss.output_activation == output), losses.get("mse"))


def load_model(path):
    from fastbp.model import load

    model = load(path)
    return model, read_sidecar(path, model)
