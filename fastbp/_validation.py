"""Checks and conversions for everything the Python API hands to the compiled core.

The core runs without bounds checks, so every array reaching it is C-contiguous, of the
model's dtype, finite and of the right shape, and every number is in range. Each check
raises a ValueError or TypeError that names the argument and says what was expected.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import operator
import struct
import sys

import numpy as np

from fastbp import _core

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


@functools.lru_cache(maxsize=None)
def _constructor_arguments(cls) -> tuple:
    return tuple(inspect.signature(cls).parameters)


def rebuilt(obj, registry):
    """obj checked by its constructor: the class of fastbp's own (in `registry`) that obj
    is, or derives from, constructed again from obj's attributes of the constructor's
    argument names, so that its checks run again on values a caller may have set since (an
    optimizer's learning_rate, a schedule's step_size, a loss's parameter), with the
    constructor's own message, before the core uses them unchecked. Returns that new
    object for one of fastbp's own classes, and obj itself for a subclass of one (its
    own constructor may take other arguments; one without the base's attributes is not
    checked) or a class of the caller's own."""
    base = next((cls for cls in type(obj).__mro__ if cls in registry), None)
    names = _constructor_arguments(base) if base is not None else ()
    if base is None or not all(hasattr(obj, name) for name in names):
        return obj      # (a subclass that keeps other state: the base's checks are not its)
    copy = base(**{name: getattr(obj, name) for name in names})
    return copy if type(obj) is base else obj


def check_verbose(verbose) -> None:
    """verbose: True or False, or a whole number >= 0."""
    if not isinstance(verbose, (bool, np.bool_)):
        whole_number(verbose, "verbose", 0)


def whole_number(value, name: str, minimum: int) -> int:
    """An int (or a float holding a whole number) >= minimum."""
    if type(value) is int:              # the usual case, without the abstract classes' checks
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}; got {value}")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a whole number; got {value!r}")
    if not isinstance(value, numbers.Integral):
        if not np.isfinite(value) or value != int(value):
            raise ValueError(f"{name} must be a whole number; got {value!r}")
    value = operator.index(value) if isinstance(value, numbers.Integral) else int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def real_number(value, name: str, minimum: float = 0.0, above: bool = False,
                why: str = "") -> float:
    """A finite real number >= minimum (above: > minimum; why: a note the message adds to
    the bound, such as what the minimum itself would do)."""
    bound = f"{'>' if above else '>='} {minimum}{why}"
    if type(value) is not float and (isinstance(value, (bool, np.bool_))
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    try:
        value = float(value)
    except OverflowError:               # an int past float64's range
        raise ValueError(f"{name} must be a finite number {bound}; got an integer of "
                         f"{len(str(abs(int(value))))} digits") from None
    if not math.isfinite(value) or value < minimum or (above and value == minimum):
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return value


def numeric_array(data, name: str) -> np.ndarray:
    """Any numeric array-like as an ndarray, without copying what is already one."""
    if data is None or isinstance(data, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array; got {type(data).__name__}")
    if is_sparse(data):     # (np.asarray would make it a 0-d array of objects)
        raise TypeError(f"{name} must be a dense array; got a scipy.sparse "
                        f"{type(data).__name__} (only X may be sparse)")
    check_unmasked(data, name)
    array = None
    if _pandas_mixed_numbers(data):
        try:        # NA as NaN; one conversion, not one Python object per value first
            array = data.to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError):
            pass
    if array is None:
        try:
            array = np.asarray(data)
        except MemoryError:
            raise
        except Exception as error:   # (any error of an __array__: torch's RuntimeError...)
            raise ValueError(f"{name} could not be read as a numeric array: "
                             f"{type(error).__name__}: {error}") from None
    if array.ndim == 0 and array.dtype.kind == "O":    # (a generator, map, set, dict...)
        raise TypeError(f"{name} must be an array of numbers (a NumPy array, a list of rows, "
                        f"a DataFrame); got a {type(data).__name__}")
    if array.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f"{name} must hold numbers; got an array of dtype {array.dtype}")
    return array


def check_unmasked(data, name: str) -> None:
    """Refuse a masked array whose mask hides values: np.asarray, and any path that reads
    an ndarray subclass as it is, would read those values as data."""
    if type(data) is np.ndarray or not isinstance(data, np.ma.MaskedArray) \
            or data.dtype.names:      # (records: refused for their dtype, as not numbers)
        return
    hidden = int(np.count_nonzero(np.ma.getmaskarray(data)))
    if hidden:
        raise TypeError(f"{name} is a masked array with {hidden:,} masked values; fill "
                        f"them (data.filled(value)) or leave out their rows")


def _pandas_mixed_numbers(data) -> bool:
    """Whether data is a pandas frame or series of numbers that np.asarray would make
    objects of: some of pandas' own kinds (Float32, Int64, boolean, pyarrow's numbers), or
    NumPy's bool beside other numbers (pd.get_dummies' frames); text, categories of text,
    dates are not numbers (their kind is none of NumPy's numeric ones)."""
    kinds = getattr(data, "dtypes", None)
    if kinds is None or not hasattr(data, "to_numpy"):
        return False
    kinds = kinds.tolist() if hasattr(kinds, "tolist") else [kinds]
    # each distinct dtype once, told apart by identity (NumPy's and pandas' dtypes are
    # shared objects; isinstance or a hash per column took 5 ms for 10,000 columns)
    distinct = kinds[:1] if all(kind is kinds[0] for kind in kinds) else \
        list({id(kind): kind for kind in kinds}.values())
    if not all(_numeric_kind(kind) for kind in distinct):
        return False
    return any(not isinstance(kind, np.dtype) for kind in distinct) or \
        len({kind.kind == "b" for kind in distinct}) > 1


def _numeric_kind(kind) -> bool:
    """Whether a pandas column's dtype holds numbers: NumPy's and pandas' numeric kinds, and
    categories that are numbers (np.asarray reads a frame of those alone as numbers; beside
    a nullable column they were refused)."""
    categories = getattr(kind, "categories", None)
    if categories is not None:
        return getattr(categories.dtype, "kind", "O") in "biuf"
    return getattr(kind, "kind", "O") in "biuf"


def check_finite(array: np.ndarray, name: str) -> None:
    if not _core.all_finite(array):
        raise ValueError(f"{name} contains NaN or infinity"
                         f" (or values too large for {array.dtype})")


def as_matrix(data, name: str, dtype: np.dtype, n_columns: int) -> np.ndarray:
    """A finite, C-contiguous (n_rows, n_columns) array of `dtype`, copied only if needed."""
    array = numeric_array(data, name)
    if array.ndim != 2:
        hint = ""               # (a reshape only where it gives the width the model takes)
        if array.ndim == 1 and n_columns == 1:
            hint = f"; for one feature, {name}.reshape(-1, 1)"
        elif array.ndim == 1 and array.shape[0] == n_columns:
            hint = f"; for one sample, {name}.reshape(1, -1)"
        raise ValueError(f"{name} must be 2-D (n_samples, {n_columns}); got shape "
                         f"{array.shape}{hint}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no rows")
    if array.shape[1] != n_columns:
        raise ValueError(f"{name} has {array.shape[1]} columns; the model's input layer "
                         f"has {n_columns}")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        array = np.require(array, dtype, ["C", "A"])   # a copy only if not C, aligned, dtype
    check_finite(array, name)
    return array


def distinct_rows(rows, n_rows: int) -> np.ndarray:
    """rows as a C-contiguous intp vector of distinct indices in [0, n_rows), at least
    one (the rows of a matrix a fit trains on)."""
    array = numeric_array(rows, "rows")
    if array.ndim != 1 or array.shape[0] == 0 or array.dtype.kind not in "iu":
        raise ValueError(f"rows must be a non-empty vector of integer row indices; got "
                         f"shape {array.shape}, dtype {array.dtype}")
    if array.min() < 0 or array.max() >= n_rows:
        raise ValueError(f"rows must be in [0, {n_rows}); got {array.min()} to {array.max()}")
    array = np.ascontiguousarray(array, dtype=np.intp)
    # A flag per row of the matrix (n_rows bytes, below the matrix's own size): 60 times
    # faster than np.unique's sort for a quarter of 15,000 rows (fastbp.dask's pieces).
    named = np.zeros(n_rows, dtype=np.bool_)
    named[array] = True
    if np.count_nonzero(named) != array.shape[0]:
        raise ValueError("rows must not repeat a row")
    return array


def is_sparse(data) -> bool:
    """True for a scipy.sparse matrix or array (a sparse object can exist only once
    scipy.sparse is imported, so this never imports it)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(data)


def as_inputs(data, name: str, dtype: np.dtype, n_columns: int):
    """X for the core: a dense matrix as as_matrix makes it, or a scipy.sparse one as
    as_sparse_rows makes it (a _core.SparseRows)."""
    if is_sparse(data):
        return as_sparse_rows(data, name, dtype, n_columns)
    return as_matrix(data, name, dtype, n_columns)


INDEX_LIMIT = np.iinfo(np.intp).max


# The NumPy arrays a scipy.sparse format holds, whose types as_csr checks first (LIL's
# lists: check_lists; DOK's keys: scipy's conversion to COO checks them)
_COMPRESSED_ARRAYS = ("data", "indices", "indptr")
_ARRAYS = {"csr": _COMPRESSED_ARRAYS, "csc": _COMPRESSED_ARRAYS, "bsr": _COMPRESSED_ARRAYS,
           "coo": ("data",), "dia": ("data",)}


def as_csr(data, name: str):
    """A 2-D scipy.sparse matrix or array as CSR: itself, or a converted copy. scipy's
    conversions read the index arrays unchecked (a CSC or COO index past the shape wrote
    out of bounds: the process crashed), so those of a compressed (CSC, BSR), coordinate,
    diagonal or list-of-lists matrix are checked first, without changing it (and a BSR's
    block size, which scipy divides its shape by); CSR is checked where it is read. The
    stored values and a compressed matrix's index arrays must be NumPy arrays (a list put
    there by hand failed deep in scipy, or in fastbp, with an AttributeError)."""
    for what in _ARRAYS.get(data.format, ()):
        array = getattr(data, what, None)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}.{what} must be a 1-D array (NumPy's); got "
                            f"{type(array).__name__}")
    if data.format == "csr":
        return data
    if data.format == "bsr":
        rows, columns = data.blocksize
        if not (rows and columns) or data.shape[0] % rows or data.shape[1] % columns:
            raise ValueError(f"{name} is a malformed BSR matrix: its blocks are "
                             f"{rows}x{columns}, which must be at least 1x1 and divide its shape "
                             f"{data.shape[0]}x{data.shape[1]}")
        check_compressed(data, name, data.shape[0] // rows, data.shape[1] // columns)
    elif data.format == "csc":
        check_compressed(data, name, data.shape[1], data.shape[0])
    elif data.format == "dia":
        offsets = data.offsets
        if not (isinstance(offsets, np.ndarray) and offsets.ndim == 1
                and np.ndim(data.data) == 2 and np.shape(data.data)[0] == offsets.shape[0]):
            raise ValueError(f"{name} is a malformed DIA matrix: its offsets must be a 1-D "
                             f"array, one per row of its 2-D data")
        check_offsets(offsets, data.shape, name)
        if offsets.dtype != np.int64:
            # (scipy adds the row count to them in their own type: int8 offsets of a
            # matrix of 200 rows overflowed)
            data = type(data)((data.data, offsets.astype(np.int64)), shape=data.shape)
    elif data.format == "lil":
        check_lists(data, name)
    elif data.format == "coo":
        coords = getattr(data, "coords", None) or (data.row, data.col)
        if len(coords) != 2:
            raise ValueError(f"{name} is a malformed COO matrix: it must have 2 index "
                             f"arrays (rows, columns); it has {len(coords)}")
        for axis, index in enumerate(coords):
            if not (isinstance(index, np.ndarray) and index.dtype.kind in "iu"
                    and index.ndim == 1 and index.shape[0] == np.shape(data.data)[0]):
                raise ValueError(f"{name} is a malformed COO matrix: its index arrays must "
                                 f"be 1-D integers, one per stored value")
            if index.size and (int(index.min()) < 0 or int(index.max()) >= data.shape[axis]):
                raise ValueError(f"{name} is a malformed COO matrix: its axis-{axis} indices "
                                 f"must lie in 0..{data.shape[axis] - 1}; got values from "
                                 f"{int(index.min())} to {int(index.max())}")
    return data.tocsr()      # the one copy another format costs


def checked_csr(data, name: str):
    """as_csr's CSR, its index arrays checked whole (check_compressed), for code that
    hands it to scipy's own operations, which take them for granted (scikit-learn's
    validate_data: a CSC with a row index past its shape crashed an estimator's predict,
    a float32 CSR whose indptr decreased raised a C++ error there)."""
    data = as_csr(data, name)
    check_compressed(data, name, data.shape[0], data.shape[1])
    return data


def check_offsets(offsets: np.ndarray, shape, name: str) -> None:
    """ValueError unless a DIA matrix's diagonal offsets are integers of diagonals that
    meet a matrix of `shape` (-(rows-1)..columns-1, as scipy.sparse.diags asks): scipy's
    conversion adds the row count to them in their own integer type, unchecked."""
    if offsets.dtype.kind not in "iu":
        raise ValueError(f"{name} is a malformed DIA matrix: its offsets must be integers; "
                         f"got {offsets.dtype}")
    low, high = -(shape[0] - 1), shape[1] - 1
    if offsets.size and (int(offsets.min()) < low or int(offsets.max()) > high):
        raise ValueError(f"{name} is a malformed DIA matrix: its diagonal offsets must lie in "
                         f"{low}..{high}; got values from {int(offsets.min())} to "
                         f"{int(offsets.max())}")


def check_lists(data, name: str) -> None:
    """ValueError unless a LIL matrix's lists are whole: `rows` and `data` one list per
    row, each row's values as many as its column indices. scipy's conversion sizes its
    arrays by the indices and then writes every value (more values than indices wrote
    past the end: the process crashed or hung; fewer left values unwritten, read as
    whatever memory held)."""
    rows, values, n_rows = data.rows, data.data, data.shape[0]
    if not all(isinstance(a, np.ndarray) and a.shape == (n_rows,) for a in (rows, values)):
        raise ValueError(f"{name} is a malformed LIL matrix: its rows and data must be "
                         f"arrays of {n_rows} lists, one per row")
    try:
        indices = np.fromiter(map(len, rows), dtype=np.intp, count=n_rows)
        stored = np.fromiter(map(len, values), dtype=np.intp, count=n_rows)
    except TypeError:
        raise ValueError(f"{name} is a malformed LIL matrix: its rows and data must hold "
                         f"a list for each row") from None
    differ = np.flatnonzero(indices != stored)
    if differ.size:
        row = int(differ[0])
        raise ValueError(f"{name} is a malformed LIL matrix: row {row} has "
                         f"{int(indices[row])} column indices and {int(stored[row])} values")


def check_compressed(data, name: str, n_major: int, n_minor: int) -> None:
    """ValueError unless a compressed matrix's (CSR, CSC, BSR) index arrays are whole
    (n_major + 1 pointers from 0, never decreasing, within the stored arrays; every index
    in 0..n_minor-1), which scipy's own operations on it take for granted."""
    indptr, indices = data.indptr, data.indices
    form = data.format.upper()
    axis = {"csr": "column", "csc": "row"}.get(data.format, "block-column")
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "iu" and a.ndim == 1
               for a in (indptr, indices)):
        raise ValueError(f"{name} is a malformed {form} matrix: indices and indptr must be "
                         f"1-D integer arrays")
    stored = min(indices.shape[0], np.shape(data.data)[0])
    if indptr.shape[0] != n_major + 1 or int(indptr[0]) != 0 \
            or bool((np.diff(indptr.astype(np.int64)) < 0).any()) or int(indptr[-1]) > stored:
        raise ValueError(f"{name} is a malformed {form} matrix: indptr must have "
                         f"{n_major + 1} entries, start at 0, never decrease, and end within "
                         f"the {stored} stored values")
    used = indices[:int(indptr[-1])]
    if used.size and (int(used.min()) < 0 or int(used.max()) >= n_minor):
        raise ValueError(f"{name} is a malformed {form} matrix: its {axis} indices must "
                         f"lie in 0..{n_minor - 1}; got values from {int(used.min())} to "
                         f"{int(used.max())}")


def as_sparse_rows(data, name: str, dtype: np.dtype, n_columns: int):
    """A scipy.sparse matrix or array as the core's SparseRows (CSR, read in place).

    CSR is taken as it is; any other format (CSC, COO, ...) is converted once to CSR, a
    copy. The values become `dtype` and the index arrays np.intp, each copied only if it
    is not already that (scipy's usual int32 indices are copied), and unsorted column
    indices are sorted in a copy. Checked: 2-D with n_columns columns and at least one
    row; numeric values, all finite in `dtype`; integer index arrays whose values fit
    np.intp; indptr starting at 0, never decreasing, ending within the stored arrays;
    every column index in 0..n_columns-1. A column stored twice in a row counts twice
    (the sum), as scipy's toarray() has it. Never densified."""
    shape = getattr(data, "shape", ())
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, {n_columns}); got a sparse "
                         f"{'x'.join(map(str, shape)) or 'scalar'}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no rows")
    if shape[1] != n_columns:
        raise ValueError(f"{name} has {shape[1]} columns; the model's input layer has "
                         f"{n_columns}")
    data = as_csr(data, name)
    # the usual case, checked and widened in one compiled pass; anything else below
    plain = _core.plain_sparse_rows(data.data, data.indices, data.indptr, shape[0],
                                    n_columns, dtype)
    if plain is not None:
        return plain
    values, indices, indptr = data.data, data.indices, data.indptr
    if values.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f"{name} must hold numbers; got a sparse matrix of dtype "
                        f"{values.dtype}")
    if values.ndim != 1:
        raise TypeError(f"{name}.data must be a 1-D array of the stored values; got shape "
                        f"{values.shape}")
    for array, what in ((indices, "indices"), (indptr, "indptr")):
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise TypeError(f"{name}.{what} must be a 1-D integer array; got "
                            f"{array.dtype} of shape {array.shape}")
        if array.size and array.dtype.kind == "u" and int(array.max()) > INDEX_LIMIT:
            raise ValueError(f"{name}.{what} holds values past {INDEX_LIMIT} (they would "
                             f"overflow int64)")
    check_compressed(data, name, shape[0], n_columns)
    indptr = np.require(indptr, np.intp, ["C", "A"])
    nnz = int(indptr[-1])
    indices, values = indices[:nnz], values[:nnz]
    indices = np.require(indices, np.intp, ["C", "A"])
    if nnz and bool((np.diff(indices) < 0).any()):
        # unsorted within some row (a fall between rows is expected): sort a copy
        starts = np.zeros(nnz, dtype=bool)
        starts[indptr[1:-1][indptr[1:-1] < nnz]] = True
        if bool((np.diff(indices)[~starts[1:]] < 0).any()):
            row_of = np.repeat(np.arange(shape[0]), np.diff(indptr))
            order = np.lexsort((indices, row_of))
            indices, values = indices[order], values[order]
    with np.errstate(over="ignore"):   # overflow to inf is reported just below
        values = np.require(values, dtype, ["C", "A"])
    check_finite(values.reshape(1, -1), name)
    return _core.SparseRows(values, indices, indptr, n_columns)


def input_arrays(X) -> tuple:
    """The NumPy arrays X reads, to test for overlap: a checked X (as_inputs's answer), or
    a caller's X before it is checked (a scipy.sparse matrix's stored arrays, a pandas
    frame's columns; none for a list)."""
    if isinstance(X, _core.SparseRows):
        return (X.data, X.indices, X.indptr)
    if is_sparse(X):
        parts = (getattr(X, name, None) for name in ("data", "indices", "indptr", "row", "col"))
        return tuple(part for part in parts if isinstance(part, np.ndarray))
    if not isinstance(X, np.ndarray) and hasattr(X, "iloc") and hasattr(X, "columns"):
        # pandas' blocks where its block manager shows them (a frame of 10,000 columns
        # walked one column at a time took 0.45 s a call), else the columns, which are
        # views of the blocks where they are NumPy's
        blocks = getattr(getattr(X, "_mgr", None), "arrays", None)
        columns = (X.iloc[:, j] for j in range(X.shape[1])) if blocks is None else blocks
        arrays = (_array_in_place(column) for column in columns)
        return tuple(array for array in arrays if isinstance(array, np.ndarray))
    return (X,) if isinstance(X, np.ndarray) else ()


def _array_in_place(column):
    """A pandas column or block as the NumPy array it reads, where to_numpy gives one."""
    if isinstance(column, np.ndarray):
        return column
    try:
        return column.to_numpy(copy=False)
    except (ValueError, TypeError, AttributeError):
        return None


def as_targets(data, loss, n_outputs: int, n_rows: int | None, dtype: np.dtype,
               name: str = "Y"):
    """Targets for `loss` (a fastbp.losses.Loss): returns (Y, labels), one of them None.

    Y is a finite (n_rows, n_outputs) array of `dtype` that the loss accepts; labels are
    class indices (np.intp), when the loss takes this shape of targets as class labels.
    name: the targets' name in messages ("Y_val": their rows are X_val's).
    """
    array = numeric_array(data, name)
    if n_rows is not None and (array.ndim == 0 or array.shape[0] != n_rows):
        raise ValueError(f"{name} has {array.shape[0] if array.ndim else 0} rows but "
                         f"{name.replace('Y', 'X', 1)} has {n_rows}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no rows")
    if targets_are_labels(array.shape, loss, n_outputs, name):
        return None, class_labels(array.reshape(-1), n_outputs, name)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    with np.errstate(over="ignore"):
        targets = np.require(array, dtype, ["C", "A"])
    check_finite(targets, name)
    checked = loss.check_targets(targets)      # (None: a loss of the caller's, as it was)
    return targets if checked is None else checked, None


def targets_are_labels(shape, loss, n_outputs: int, name: str = "Y") -> bool:
    """Whether targets of `shape` are class labels for `loss` (else (n_samples, n_outputs)
    values, or one value a row for one output); a ValueError where the shape is neither.
    From the shape alone, so that fastbp.dask checks a dask array's before any work."""
    if loss.takes_labels(shape, n_outputs):
        return True
    if not (len(shape) == 2 and shape[1] == n_outputs or len(shape) == 1 and n_outputs == 1):
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs}) to match the model's "
                         f"{n_outputs} outputs; got shape {tuple(shape)}")
    return False


def class_labels(labels: np.ndarray, n_classes: int, name: str = "Y") -> np.ndarray:
    """Whole numbers 0..n_classes-1 as a C-contiguous np.intp array."""
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError(f"{name} (class labels) contains NaN or infinity")
        if not (labels == np.round(labels)).all():
            raise ValueError(f"{name} (class labels) must be whole numbers 0..k-1")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{name} (class labels) must lie in 0..{n_classes - 1} for a model with "
                         f"{n_classes} outputs; got values from {labels.min()} to {labels.max()}")
    return np.require(labels, np.intp, ["C", "A"])


def dense_targets(data, loss, n_outputs: int, n_rows: int | None, dtype: np.dtype,
                  name: str = "Y"):
    """Targets for `loss` as a dense (n_rows, n_outputs) array: class labels one-hot."""
    targets, labels = as_targets(data, loss, n_outputs, n_rows, dtype, name)
    return one_hot(labels, n_outputs, dtype) if labels is not None else targets


def one_hot(labels: np.ndarray, n_classes: int, dtype: np.dtype) -> np.ndarray:
    targets = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    targets[np.arange(labels.shape[0]), labels] = 1
    return targets


def named_setting(error: Exception) -> str:
    """The setting a check's refusal names: its message's first word, up to an "="
    ("learning_rate=1e-45 is too small ...", "momentum must be in ..."), so that a caller
    whose settings go by other names (fastbp.sklearn, the command line) can say its own."""
    return str(error).split(" ", 1)[0].split("=", 1)[0]


def check_in_dtype(value: float, name: str, dtype: np.dtype, below_one: bool = False,
                   zero_allowed: bool = True) -> None:
    """Refuse a number checked in float64 that the core would change by using it in `dtype`:
    one that overflows, a nonzero one that becomes 0 or subnormal, or (below_one) a fraction
    under 1 that rounds to 1 (a momentum or decay rate of exactly 1). zero_allowed: whether
    the message may suggest 0 (not for a Huber delta, which must be > 0)."""
    dtype = np.dtype(dtype)
    cast = check_fits_dtype(value, name, dtype)
    _, tiny, epsneg = _limits(dtype)
    if value != 0 and abs(cast) < tiny:
        raise ValueError(f"{name}={value!r} is too small for the model's {dtype.name}: it "
                         f"would be 0 or lose its precision (the smallest normal number is "
                         f"{tiny:.4g}); use {'0 or ' if zero_allowed else ''}a larger value")
    if below_one and cast >= 1:
        raise ValueError(f"{name}={value!r} rounds to 1 in the model's {dtype.name}; use a "
                         f"value at most {1 - epsneg:.10g}")


def check_fits_dtype(value: float, name: str, dtype: np.dtype) -> float:
    """Refuse a number that overflows `dtype`; return it rounded to `dtype`. (Alone for the
    rates a schedule gives: a rate that decays below the smallest normal number is fine.)"""
    dtype = np.dtype(dtype)
    cast = _rounded(value, dtype)
    if not math.isfinite(cast):
        raise ValueError(f"{name}={value!r} is too large for the model's {dtype.name} "
                         f"(at most {_limits(dtype)[0]:.4g})")
    return cast


def _limits(dtype: np.dtype) -> tuple:
    """(max, smallest normal, epsneg) of a float dtype, from np.finfo once."""
    limits = _FLOAT_LIMITS.get(dtype)
    if limits is None:
        info = np.finfo(dtype)
        limits = _FLOAT_LIMITS[dtype] = (float(info.max), float(info.tiny), float(info.epsneg))
    return limits


_FLOAT_LIMITS = {}


def _rounded(value, dtype: np.dtype) -> float:
    """value rounded to `dtype` (to nearest; inf past its range), as a Python float.
    float32 and float64 without NumPy's scalars and error state (microseconds a call)."""
    if dtype == np.float64:
        return float(value)
    if dtype == np.float32:
        try:
            return struct.unpack("f", struct.pack("f", value))[0]
        except OverflowError:            # rounds past float32's largest
            return math.copysign(math.inf, value)
    with np.errstate(over="ignore"):
        return float(dtype.type(value))


def as_sample_weight(sample_weight, n_samples: int) -> np.ndarray:
    """sample_weight as float64, checked: one finite weight >= 0 per row."""
    weights = numeric_array(sample_weight, "sample_weight")
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight must have one weight per row, shape "
                         f"({n_samples},); got {weights.shape}")
    weights = np.array(weights, dtype=np.float64)
    if not np.isfinite(weights).all() or weights.min() < 0:
        raise ValueError("sample_weight must be finite and >= 0")
    return weights


def as_row_weights(weights: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Finite float64 row weights >= 0 as `dtype`, scaled by a power of two so that the
    largest lies in [0.5, 1).

    A batch's loss is the weighted mean sum w_i l_i / sum w_i, so a factor common to all
    weights changes nothing; a power of two changes no bit of any product or ratio the core
    forms, so ordinary weights give exactly the run they gave unscaled, and weights of any
    scale (1e-46 or 1e39 in float32, 1e-320 in float64) train as their ratios say. Weights
    whose ratios the dtype cannot hold (a nonzero weight below its smallest normal number
    once the largest is near 1) are refused."""
    largest = float(weights.max())
    if not largest > 0:
        raise ValueError("the row weights (sample_weight, class_weight) sum to 0")
    scaled = unit_scaled(weights)
    smallest = float(scaled[weights > 0].min())   # (0 where the scaling flushed one to 0)
    dtype = np.dtype(dtype)
    if smallest < np.finfo(dtype).tiny:
        least = float(weights[weights > 0].min())
        ratio = largest / least     # (past float64: "inf" said nothing)
        ratio = f"{ratio:.3g}" if ratio < np.inf else \
            f"about 1e{np.log10(largest) - np.log10(least):.0f}"
        # (a float64 model is the advice only where float64 holds the ratio)
        holder = dtype if smallest >= np.finfo(np.float64).tiny else np.dtype(np.float64)
        raise ValueError(f"the row weights (sample_weight, class_weight) span a ratio of "
                         f"{ratio} between the largest and the smallest nonzero one, more "
                         f"than {'the model' + chr(39) + 's ' if holder == dtype else ''}"
                         f"{holder.name} holds ({1 / float(np.finfo(holder).tiny):.3g}); "
                         f"set the smallest to 0"
                         + (" or use a float64 model" if holder != np.float64 else ""))
    return scaled.astype(dtype)


def unit_scaled(weights: np.ndarray) -> np.ndarray:
    """Finite weights >= 0 times the power of two that puts the largest in [0.5, 1) (no
    bit of any ratio changes); as they are when all are 0."""
    largest = float(weights.max()) if weights.size else 0.0
    return np.ldexp(weights, -int(np.frexp(largest)[1])) if largest > 0 else weights


def unshared(array, parameters: np.ndarray):
    """`array`, or a copy of it if it may view `parameters` (which a fit or a setter
    writes while it reads the array); for a sparse X, each of its arrays."""
    if isinstance(array, _core.SparseRows):
        if any(np.may_share_memory(part, parameters) for part in input_arrays(array)):
            return _core.SparseRows(array.data.copy(), array.indices.copy(),
                                    array.indptr.copy(), array.n_columns)
        return array
    if array is not None and np.may_share_memory(array, parameters):
        return array.copy()
    return array
