"""Target columns as a loss takes them: class labels 0..k-1 (learned in sorted order, or
mapped to a sidecar's classes), one-hot or multi-label rows, or real numbers."""
from __future__ import annotations

from fastbp.cli.errors import UsageError


def takes_class_labels(loss) -> bool:
    """Whether a fastbp.losses.Loss reads one class label per row (categorical
    cross-entropy): its target column is label-encoded, and --labels takes the argmax."""
    return "class labels" in loss.target_forms


def is_number(text: str) -> bool:
    """Whether a cell of text is a number: what float() reads, but in ASCII and without
    underscores, which Python and NumPy read as well ("1_0" as 10, Arabic-Indic "١٢" as 12)
    and a CSV file's numbers do not hold."""
    text = text.strip()
    if "_" in text or not text.isascii():
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def text_numbers(texts):
    """Cells of text (a CSV column) as float64 numbers, or None when one is not a number
    (is_number)."""
    import numpy as np

    joined = "".join(texts)     # (one pass in C: the usual column has no such cell)
    if ("_" in joined or not joined.isascii()) and not all(map(is_number, texts)):
        return None
    try:
        return np.array(texts, dtype=np.float64)
    except ValueError:
        return None


def numbers_or_none(column):
    """The column as float64 numbers, or None when it holds text."""
    import numpy as np

    if column.dtype.kind in "biuf":
        return column.astype(np.float64)
    return text_numbers(column.tolist())


def outside(values, limit):
    """Flags of the values outside -limit..limit: NaN and infinity too (without a
    temporary copy of the values, as np.abs would make). A limit past the values' own
    range is that range: NumPy compares in their dtype, where it would be infinity (a
    float16 array against float32's limit)."""
    import numpy as np

    if values.dtype.kind == "f":
        limit = min(limit, float(np.finfo(values.dtype).max))
    return ~((values >= -limit) & (values <= limit))


def too_large(value, dtype) -> str:
    """Why `outside` flagged a finite value, and what to do; "" for NaN and infinity (the
    library would say "X contains NaN or infinity (or values too large for float32)", not
    where)."""
    import numpy as np

    if not np.isfinite(value):
        return ""
    return (f"too large for {np.dtype(dtype).name}, the model's precision (train with "
            f"--dtype float64, or scale the column)")


def _number_key(text: str):
    """A label written as a number, as the key it matches: an int for a whole number (exact
    past 2^53, where float64 would merge it with its neighbour), else a float."""
    text = text.strip()
    digits = text.lstrip("+-")
    return int(text) if digits.isdigit() and digits.isascii() else float(text)


def _plain(value):
    """A label as a JSON value: int for whole numbers, float, or str."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):          # (bool too; exact beyond float64's 2^53)
        return int(value)
    value = float(value)
    return int(value) if value.is_integer() else value


def _row(index) -> str:
    """The default location of a target cell: its data row, counted from 1."""
    return f"data row {index + 1}"


def _label_keys(column, source="the target column", where=_row):
    """(keys, numeric) for a label column: float64 numbers when every label is a number
    that keeps its identity as one (_numbers_keep_labels), else the labels as strings."""
    import numpy as np

    if column.dtype.kind in "biu":      # as they are: float64 would merge IDs past 2^53
        return column, True
    numbers = numbers_or_none(column)
    if numbers is not None and _numbers_keep_labels(column):
        bad = np.flatnonzero(~np.isfinite(numbers))
        if bad.size:
            raise UsageError(f"{where(bad[0])}: {source} holds {_shown(column[bad[0]])}; "
                             f"every row needs a label")
        return numbers, True
    return np.array([str(v).strip() for v in column], dtype=str), False


def _numbers_keep_labels(column) -> bool:
    """Whether a column of labels read as text (a CSV's) may be taken as numbers without
    losing a label: no two different numbers become the same float64 (the 17-digit IDs
    9007199254740993 and ...992; two spellings of one number, 1 and 1.0 or +3 and 3.0,
    are one label), none has a leading zero ("00501", which would come back as 501), and
    no whole number is beyond float64's exact integers. Numeric arrays (NPY, NPZ) are
    numbers as they are."""
    import re
    from decimal import Decimal, InvalidOperation

    if column.dtype.kind in "biuf":
        return True
    texts = {str(value).strip() for value in column.tolist()}
    exact = {}      # float64 -> the exact numbers written that become it
    for text in texts:
        try:
            exact.setdefault(float(text), set()).add(Decimal(text))
        except (InvalidOperation, TypeError):   # (float takes it, Decimal not: as text)
            return False
    if any(len(numbers) > 1 for value, numbers in exact.items() if value == value):
        return False
    for text in texts:
        digits = text.lstrip("+-")
        if re.match(r"0\d", digits):
            return False
        if re.fullmatch(r"\d+", digits) and int(digits) > 2 ** 53:
            return False
    return True


def encode_labels(column, classes=None, source="the target column", where=_row):
    """(labels 0..k-1 as intp, classes): the class list learned in sorted order, or
    mapped to the given classes. where(row): a row's location for messages."""
    import numpy as np

    keys, numeric = _label_keys(column, source, where)
    if not numeric:
        empty = np.flatnonzero(np.char.str_len(keys) == 0)
        if empty.size:
            raise UsageError(f"{where(empty[0])}: {source} has no label")
    if classes is None:
        unique, labels = np.unique(keys, return_inverse=True)
        return labels.astype(np.intp), [_plain(v) for v in unique.tolist()]
    lookup = {}
    for index, value in enumerate(classes):
        lookup[value if isinstance(value, (str, int)) else float(value)] = index
        if isinstance(value, str) and is_number(value):
            lookup.setdefault(_number_key(value), index)
    unique, inverse = np.unique(keys, return_inverse=True)
    mapped = np.full(len(unique), -1, dtype=np.intp)
    unknown = []
    for k, value in enumerate(unique.tolist()):
        key = value
        if key not in lookup and not numeric and is_number(value):
            key = _number_key(value)   # "00501" for a model whose classes are numbers (501)
        if key not in lookup:
            unknown.append(_plain(value))
            continue
        mapped[k] = lookup[key]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5]))
        first = np.flatnonzero(mapped[inverse] < 0)[0]
        raise UsageError(f"{where(first)}: {source} holds label(s) {shown} the model was not "
                         f"trained on; its classes: {', '.join(map(repr, classes[:20]))}")
    return mapped[inverse].astype(np.intp), list(classes)


def _shown(value) -> str:
    """A cell as a message shows it."""
    return repr(str(value).strip())


def numeric_targets(columns, names, source_hint="", where=_row, dtype="float64"):
    """The target columns as a float64 matrix; a cell that is not a finite number, or that
    the model's dtype cannot hold, is refused at where(row)."""
    import numpy as np

    limit = float(np.finfo(dtype).max)
    matrix = np.empty((len(columns[0]), len(columns)), dtype=np.float64)
    for k, (column, name) in enumerate(zip(columns, names)):
        numbers = numbers_or_none(column)
        if numbers is None:
            row = next(i for i, v in enumerate(column) if not is_number(v))
            raise UsageError(f"{where(row)}: the target column {name!r} holds "
                             f"{_shown(column[row])}, not a number{source_hint}")
        bad = np.flatnonzero(outside(numbers, limit))
        if bad.size:            # (the library would say "Y contains NaN", not where)
            raise UsageError(f"{where(bad[0])}: the target column {name!r} holds "
                             f"{_shown(column[bad[0]])}, "
                             f"{too_large(numbers[bad[0]], dtype) or 'not a finite number'}")
        matrix[:, k] = numbers
    return matrix


def encode_targets(columns, names, loss, sidecar=None, where=_row, dtype="float64"):
    """Targets for fastbp from raw columns: (Y, classes, output names).

    cce, one column: class labels 0..k-1 (classes: the original labels); cce, several
    columns: one-hot rows (classes: the column names). bce, one column: 0/1 (or a
    probability), or two labels mapped to 0/1 (classes [negative, positive]); bce, several
    columns: multi-label 0/1 targets. Regression: numbers, one output per column.
    With a sidecar (evaluate), its classes are used instead of learned. `loss`: a
    fastbp.losses.Loss, asked what it takes (class labels; else 0/1 values when it is a
    classification loss; else numbers). where(row): a row's location for messages. dtype:
    the model's (numbers it cannot hold are refused).
    """
    import numpy as np

    known = sidecar.get("classes") if sidecar else None
    regression_hint = "; for class labels use --loss cce (or bce for two classes)"
    if takes_class_labels(loss):
        if len(columns) == 1:
            labels, classes = encode_labels(columns[0], known,
                                            f"the target column {names[0]!r}", where)
            if known is None and len(classes) < 2:
                raise UsageError(f"the target column {names[0]!r} holds a single class "
                                 f"({classes[0]!r}); classification needs two or more")
            return labels, classes, [str(c) for c in classes]
        return numeric_targets(columns, names, where=where, dtype=dtype), list(names), list(names)
    if loss.is_classification:
        if len(columns) == 1:
            numbers = numbers_or_none(columns[0])
            in_unit = numbers is not None and np.isfinite(numbers).all() and \
                numbers.min() >= 0 and numbers.max() <= 1
            if in_unit and (known is None or [_plain(c) for c in known] == [0, 1]):
                return numbers.reshape(-1, 1), [0, 1], list(names)
            labels, classes = encode_labels(columns[0], known,
                                            f"the target column {names[0]!r}", where)
            if len(classes) != 2:
                raise UsageError(f"binary cross-entropy needs two classes; the target column "
                                 f"{names[0]!r} holds {len(classes)}: use --loss cce")
            return labels.astype(np.float64).reshape(-1, 1), classes, [str(classes[1])]
        return numeric_targets(columns, names, regression_hint, where, dtype), None, list(names)
    return numeric_targets(columns, names, regression_hint, where, dtype), None, list(names)
