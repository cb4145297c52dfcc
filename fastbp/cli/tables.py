"""Reading the input: CSV (a header row, then rows), NPY (a 2-D numeric matrix, targets
from --targets FILE.npy), NPZ archives (arrays named with --x-name and --y-name) and sparse
matrices written by scipy.sparse.save_npz (targets from --targets FILE.npy) become a
Table; select_columns picks its feature and target columns (by name, index, or the model's
sidecar). NumPy files are loaded without pickle."""
from __future__ import annotations

import csv
import io
import math
import operator
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Sequence

from fastbp.cli.errors import UsageError
from fastbp.cli.outputs import short_list
from fastbp.cli.sidecar import is_utf8, name_as_text
from fastbp.cli.targets import is_number, outside, text_numbers, too_large

# What reading a truncated or damaged NPZ archive (or a member of one) raises
_DAMAGED = (EOFError, zipfile.BadZipFile, zlib.error)
NPY_SIGNATURE = b"\x93NUMPY"


class Table:
    """The columns of an input file.

    A CSV file: `names` from its header, each column a tuple of strings (converted on
    demand, with errors that name the column and line). An NPY or NPZ file: a 2-D numeric
    matrix whose columns go by their index (0, 1, ...; `names` None: a sparse file's
    header may claim 2**62 columns, whose names alone would fill the memory), and possibly
    targets from a separate array (NPZ's y, --targets FILE.npy).
    """

    def __init__(self, path, names, named, columns=None, lines=None, matrix=None):
        self.path, self.named = path, named
        self.names = list(names) if named else None
        self.n_columns = len(self.names) if named else matrix.shape[1]
        self._columns, self._lines, self._matrix = columns, lines, matrix
        self.targets = None              # an array of targets from a separate source
        self.target_source = None        # where they came from (for messages)
        self.target_stem = "y"           # their name: the NPZ array's, the NPY file's

    @property
    def n_rows(self) -> int:
        return self._matrix.shape[0] if self._matrix is not None else len(self._columns[0])

    def index(self, spec) -> int:
        """A column by name or by index (negative counts from the end)."""
        spec = str(spec).strip()
        if self.named and spec in self.names:
            return self.names.index(spec)
        try:
            position = int(spec)
        except ValueError:
            names = self.names if self.named else \
                [str(j) for j in range(min(self.n_columns, 21))]
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise UsageError(f"{self.path} has no column {spec!r}; its columns: {shown}") \
                from None
        if not -self.n_columns <= position < self.n_columns:
            raise UsageError(f"column index {position} is out of range: {self.path} has "
                             f"{self.n_columns} columns (0..{self.n_columns - 1})")
        return position % self.n_columns

    def label(self, j: int) -> str:
        return repr(self.names[j]) if self.named else f"{j}"

    def numeric(self, indices, role: str, hint: str = "", dtype="float64"):
        """The columns `indices` as a float64 (rows, len(indices)) matrix (or the NPY/NPZ
        array itself, when that is all its columns in order). A value that is not a finite
        number, or that the model's `dtype` cannot hold (float32 ends near 3.4e38), is
        refused where it is: the library would say "X contains NaN or infinity", not
        where."""
        import numpy as np

        limit = float(np.finfo(dtype).max)
        if self._matrix is not None:
            if isinstance(indices, Remaining):   # (all but a few: never listed)
                matrix = indices.of(self._matrix)
                self._check_range(matrix, role, limit, dtype, indices)
                return matrix
            every = range(self.n_columns)       # (a range compares with one in no time)
            whole = len(indices) == len(every) and (indices == every or
                                                    list(indices) == list(every))
            matrix = self._matrix if whole else self._matrix[:, list(indices)]
            self._check_range(matrix, role, limit, dtype, indices)
            return matrix
        out = np.empty((self.n_rows, len(indices)), dtype=np.float64)
        for k, j in enumerate(indices):
            out[:, k] = self._numbers(j, role, hint, limit, dtype)
        return out

    def _check_range(self, matrix, role, limit, dtype, indices):
        """A UsageError naming the row and column of an array's first value outside
        -limit..limit (NaN and infinity too), scanned in blocks of about 16 MiB of flags
        (a dense array) or on the stored values (a sparse one). matrix: the file's columns
        `indices`, whose number in the file the message gives (with --drop 3, the file's
        column 7 is the matrix's 6)."""
        import numpy as np

        values = matrix.data if hasattr(matrix, "tocsr") else matrix
        if values.dtype.kind not in "fc":
            return
        if hasattr(matrix, "tocsr"):
            bad = np.flatnonzero(outside(values, limit))
            if bad.size:
                row = int(np.searchsorted(matrix.indptr, bad[0], side="right")) - 1
                self._refuse(row, indices[int(matrix.indices[bad[0]])], values[bad[0]], role,
                             dtype)
            return
        step = max(1, (1 << 24) // max(1, matrix.shape[1]))
        for start in range(0, matrix.shape[0], step):
            bad = np.argwhere(outside(matrix[start:start + step], limit))
            if bad.size:
                row, column = int(bad[0][0]) + start, int(bad[0][1])
                self._refuse(row, indices[column], matrix[row, column], role, dtype)

    def _refuse(self, row, column, value, role, dtype):
        why = too_large(value, dtype) or "every value must be a finite number"
        raise UsageError(f"{self.path}: the {role} array holds {value} in row {row}, column "
                         f"{column}; {why}")

    def _numbers(self, j, role, hint, limit, dtype):
        import numpy as np

        values = self._columns[j]
        numbers = text_numbers(values)
        if numbers is not None:
            bad = np.flatnonzero(outside(numbers, limit))
            if bad.size:
                why = too_large(numbers[bad[0]], dtype) or f"not a finite number{hint}"
                raise UsageError(f"{self.path}, line {self._lines[bad[0]]}: the {role} column "
                                 f"{self.label(j)} holds {values[bad[0]].strip()!r}, {why}")
            return numbers
        for row, value in enumerate(values):
            if not is_number(value):
                where = f"{self.path}, line {self._lines[row]}"
                if not value.strip():
                    raise UsageError(f"{where}: the {role} column {self.label(j)} is empty; "
                                     f"fastbp needs a number in every {role} cell{hint}")
                raise UsageError(f"{where}: the {role} column {self.label(j)} holds "
                                 f"{value.strip()!r}, not a number{hint}")
        raise UsageError(f"the {role} column {self.label(j)} of {self.path} is not numeric")

    def target_where(self, row: int) -> str:
        """Where a target cell of data row `row` (from 0) is, for messages: the CSV line,
        else the row of the targets' array (from 0, as NumPy counts)."""
        if self.targets is not None:
            return f"{self.target_source}, row {row}"
        if self._lines is not None:
            return f"{self.path}, line {self._lines[row]}"
        return f"{self.path}, row {row}"

    def raw(self, j: int):
        """Column j as it is: strings (CSV) or numbers (arrays)."""
        import numpy as np

        if self._matrix is not None:
            return self._matrix[:, j]
        return np.array([value.strip() for value in self._columns[j]], dtype=str)


def _input_format(path: str, given) -> str:
    if given:
        return given
    extension = os.path.splitext(path)[1].lower()
    if extension in (".csv", ".tsv", ".txt"):
        return "csv"
    if extension in (".npy", ".npz"):
        return extension[1:]
    raise UsageError(f"cannot tell the format of {path!r} from its extension; give "
                     f"--format csv, npy or npz")


def read_table(path: str, args, want_targets: bool) -> Table:
    """The input file as a Table; with want_targets, NPZ's y and --targets are read too."""
    fmt = _input_format(path, getattr(args, "format", None))
    if fmt == "csv":
        delimiter = args.delimiter
        if delimiter is None:
            delimiter = "\t" if path.lower().endswith(".tsv") else ","
        if delimiter in ("\\t", "tab"):
            delimiter = "\t"
        if len(delimiter) != 1:
            raise UsageError(f"--delimiter must be one character; got {delimiter!r}")
        table = _read_csv(path, delimiter)
        if want_targets and getattr(args, "targets", None) is not None:
            raise UsageError("--targets FILE.npy is for NPY input; for a CSV file name the "
                             "target column with --target")
        return table
    if fmt == "npy":
        table = _array_table(path, _load_npy(path, "the features"))
        if want_targets and getattr(args, "targets", None) is not None:
            if getattr(args, "target", None):
                raise UsageError("give --targets FILE.npy or --target COLUMN, not both")
            _read_targets_file(table, args.targets)
        return table
    # npz
    source = _readable(path)
    archive = _np_load(path, source)
    if not hasattr(archive, "files"):
        raise UsageError(f"{path} is an NPY file, not an NPZ archive: use --format npy")
    with archive:
        names = list(archive.files)
        sparse = _saved_sparse(archive, path)
    if sparse:
        return _sparse_table(path, args, want_targets, source)
    if want_targets and getattr(args, "targets", None) is not None:
        raise UsageError("--targets is for NPY input and sparse NPZ files; an NPZ file of "
                         "arrays holds its targets (choose the array with --y-name)")
    archive = _np_load(path, source)
    with archive:
        if args.x_name not in names:
            raise UsageError(f"{path} has no array {args.x_name!r}; it has: "
                             f"{', '.join(names) or 'none'} (choose with --x-name)")
        table = _array_table(path, _check_features(_member(archive, args.x_name, path), path,
                                                   args.x_name))
        if want_targets and not getattr(args, "target", None):   # --target: columns of X
            y_name = args.y_name
            if y_name not in names:
                raise UsageError(f"{path} has no array {y_name!r} of targets; it has: "
                                 f"{', '.join(names)} (choose with --y-name)")
            table.targets = _check_targets(_member(archive, y_name, path), f"{path}[{y_name}]")
            table.target_source = f"{path}[{y_name}]"
            table.target_stem = y_name
    return table


# The arrays of an archive that scipy.sparse.save_npz wrote, by the format it names in
# its "format" member (besides "format", "shape" and "data").
SPARSE_MEMBERS = {"csr": {"indices", "indptr"}, "csc": {"indices", "indptr"},
                  "bsr": {"indices", "indptr"}, "coo": {"row", "col"}, "dia": {"offsets"}}


def _saved_sparse(archive, path) -> bool:
    """Whether an open NPZ archive is a matrix scipy.sparse.save_npz wrote (any of its
    formats), not an archive of arrays; a UsageError where one of the arrays scipy reads
    is not what it takes (_check_index_arrays)."""
    names = set(archive.files)
    if not {"format", "shape", "data"} <= names:
        return False
    member = _member(archive, "format", path)         # a 0-d bytes array, no pickle
    if member.size != 1:
        return False
    name = member.item()
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not (isinstance(name, str) and SPARSE_MEMBERS.get(name, {"?"}) <= names):
        return False
    members = SPARSE_MEMBERS[name] | {"shape", "data"}      # (scipy reads them)
    if name == "coo" and "coords" in names:                # (read in place of row, col)
        members.add("coords")
    headers = {other: _check_npy_member(archive, other, path) for other in sorted(members)}
    _check_index_arrays(archive, name, headers, path)
    return True


def _check_index_arrays(archive, form, headers, path):
    """A UsageError unless a saved sparse matrix's shape and index arrays are integers
    that scipy.sparse.load_npz keeps as they are: it casts them to its index type without
    a look, truncating float indices (0.9 to 0: another matrix) and wrapping values past
    that type (uint64 past 2**63; a DIA offset of 2**32 became 0 in int32, the main
    diagonal). headers: _check_npy_member's answer for each array."""
    from fastbp._validation import INDEX_LIMIT, check_offsets

    for member, header in headers.items():
        if member == "data" or header is None:      # (None: np.load says what is wrong)
            continue
        dtype = header[1]
        if dtype.kind not in "iu":
            raise UsageError(f"{path}: the array {member!r} of the sparse matrix must hold "
                             f"integers (scipy casts it to them unchecked: 0.9 to 0); it has "
                             f"dtype {dtype}")
        if dtype.kind == "u" and dtype.itemsize == 8:
            values = _member(archive, member, path)
            if values.size and int(values.max()) > INDEX_LIMIT:
                raise UsageError(f"{path}: the array {member!r} of the sparse matrix holds "
                                 f"{int(values.max())}, past {INDEX_LIMIT} (scipy would make "
                                 f"it a negative number)")
    if form == "dia":           # (scipy casts the offsets to the type its shape needs)
        shape = _member(archive, "shape", path)
        try:
            if shape.shape == (2,):
                check_offsets(_member(archive, "offsets", path), shape, path)
        except ValueError as error:
            raise UsageError(str(error)) from None


def _sparse_table(path: str, args, want_targets: bool, source) -> Table:
    """A sparse matrix saved by scipy.sparse.save_npz (CSR, CSC, ...; read as CSR, never
    densified): its columns are the features; the targets come from --targets FILE.npy.
    source: _readable(path)."""
    import scipy.sparse

    from fastbp._validation import as_csr, check_compressed

    try:
        matrix = scipy.sparse.load_npz(_rewound(source))  # np.load without pickle
    except (ValueError, TypeError, OSError, KeyError, *_DAMAGED) as error:   # (TypeError:
        # a 0-d shape array, "iteration over a 0-d array")
        raise UsageError(f"{path}: not a readable scipy.sparse matrix: {error}") from None
    if matrix.ndim != 2:
        raise UsageError(f"{path} holds a sparse array of shape {matrix.shape}; the "
                         f"features must be 2-D (rows, features)")
    if matrix.dtype.kind not in "biuf":
        raise UsageError(f"the features in {path} must be numbers; the matrix has dtype "
                         f"{matrix.dtype}")
    if matrix.shape[0] == 0:
        raise UsageError(f"the features in {path} have no rows")
    # scipy's conversions and column selection read the index arrays unchecked: a crafted
    # file with an index past the shape crashed the process
    try:
        if matrix.format == "csr":
            check_compressed(matrix, path, matrix.shape[0], matrix.shape[1])
        matrix = as_csr(matrix, path)
    except ValueError as error:
        raise UsageError(str(error)) from None
    table = _array_table(path, matrix)
    if want_targets:
        if getattr(args, "target", None):
            raise UsageError(f"{path} is a sparse matrix of features: give the targets with "
                             f"--targets FILE.npy, not --target")
        if getattr(args, "targets", None) is not None:
            _read_targets_file(table, args.targets)
    return table


def _read_targets_file(table, path):
    """--targets FILE.npy as the table's targets, named after the file (y.npy: y)."""
    table.targets = _load_npy(path, "the targets", features=False)
    table.target_source = path
    table.target_stem = name_as_text(os.path.splitext(os.path.basename(path))[0]) or "y"


def _member(archive, name, path):
    """The array `name` of an open NPZ archive; a UsageError naming it where it is not
    one."""
    _check_npy_member(archive, name, path)
    try:
        return archive[name]
    except _DAMAGED as error:                           # a damaged or truncated member
        raise UsageError(f"the array {name!r} in {path} is not readable: {error}") from None
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(f"the array {name!r} in {path} holds Python objects, which fastbp "
                             f"does not load (that needs pickle); save numbers or text") \
                from None
        raise UsageError(f"the array {name!r} in {path} is not readable: {error}") from None


def _check_npy_member(archive, name, path):
    """A UsageError unless the member `name` of an open NPZ archive holds NPY data (NumPy
    hands any other member over as its raw bytes, not as an array) of no more than its
    size (_check_claimed). Returns the (shape, dtype) of its header, or None (np.load
    then says what is wrong with it)."""
    stored = f"{name}.npy" if f"{name}.npy" in archive.zip.namelist() else name
    what = f"the array {name!r} in {path}"
    try:
        info = archive.zip.getinfo(stored)
        archive_bytes = _archive_bytes(archive.zip)
        with archive.zip.open(stored) as stream:
            if stream.read(len(NPY_SIGNATURE)) != NPY_SIGNATURE:
                raise UsageError(f"the member {stored!r} of {path} is not a NumPy array (.npy "
                                 f"data); an NPZ file is written by numpy.savez or "
                                 f"scipy.sparse.save_npz")
            stream.seek(0)
            return _check_claimed(stream, info.file_size, what, (info, archive_bytes))
    except _DAMAGED as error:
        raise UsageError(f"{what} is not readable: {error}") from None


# What a deflated zip entry of n bytes can expand to, at most: deflate's densest code
# spends 2 bits (a 1-bit length code, a 1-bit distance code) on a 258-byte match, 1032
# bytes out per byte in; 1100 per byte, plus 64 KiB for a short stream's first literals and
# block headers, is a bound that no real entry reaches. (A claim under it, but beyond the
# entry's data, is allocated by NumPy, at most about 1100 times the file, and then refused
# as truncated when the data runs out.)
DEFLATE_MOST_PER_BYTE = 1100
DEFLATE_MOST_EXTRA = 64 << 10


def _archive_bytes(zipped) -> int:
    """The size of an open zip archive's file (or buffer): no entry holds more bytes."""
    position = zipped.fp.tell()
    try:
        return zipped.fp.seek(0, io.SEEK_END)
    finally:
        zipped.fp.seek(position)


def _entry_holds(stream, info, archive_bytes, claimed) -> tuple:
    """(the most data bytes an NPZ member's zip entry can hold after its NPY header, where
    `stream` is; the words that say so), up to `claimed`. The entry's uncompressed size
    (info.file_size) is a number in the archive's directory, which may lie; its compressed
    bytes (no more than the archive has) bound it: as many (stored), about 1032 times as
    many (deflate); another method (bzip2, lzma: no such bound) is read, in blocks, up to
    the claim, decompressing such a member one more time."""
    start = stream.tell()
    compressed = min(info.compress_size, archive_bytes)
    entry = f"its zip entry {info.filename!r}, {compressed:,} bytes"
    if info.compress_type == zipfile.ZIP_STORED:
        return max(0, compressed - start), f"{entry} stored, can hold at most"
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return (max(0, DEFLATE_MOST_PER_BYTE * compressed + DEFLATE_MOST_EXTRA - start),
                f"{entry} deflated (about 1032-fold at most), can hold at most")
    try:
        from lzma import LZMAError
    except ImportError:         # (a Python built without lzma reads no lzma member)
        LZMAError = OSError
    held = 0
    try:
        while held < claimed:
            block = stream.read(min(1 << 20, claimed - held))
            if not block:
                break
            held += len(block)
    except (*_DAMAGED, OSError, ValueError, LZMAError):
        pass            # (where its data ends, damaged: what came out is what it holds)
    return held, f"{entry} compressed, holds"


def _check_claimed(stream, size, what, entry=None):
    """The (shape, dtype) that the NPY header at the start of a binary stream claims, or
    None where it is not readable (np.load then says why); a UsageError naming `what`
    where it claims more data than the `size` bytes there are: NumPy allocates the array
    before it reads, and a 176-byte file claiming 14.6 TiB was "not enough memory".
    entry: (zip info, the archive's size) of an NPZ member, whose `size` is what the
    archive's directory says: its compressed bytes bound the data too (_entry_holds)."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0   # (3.0's is laid out as 2.0's)
        shape, _, dtype = read(stream)
    except (ValueError, *_DAMAGED):
        return None
    if not dtype.hasobject:                 # (objects: refused by np.load, without pickle)
        claimed, held = math.prod(shape) * dtype.itemsize, max(0, size - stream.tell())
        damage, holder = "truncated", "it holds"
        if entry is not None and claimed <= held:
            (held, holder), damage = _entry_holds(stream, *entry, claimed), \
                "truncated or damaged"
        if claimed > held:
            raise UsageError(f"{what} is {damage}: its header claims an array of shape "
                             f"{shape} and dtype {dtype}, {claimed:,} bytes of data, and "
                             f"{holder} {held:,}")
    return shape, dtype


def _read_csv(path: str, delimiter: str) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{path} is empty; a CSV file needs a header row and rows "
                                 f"of data")
            names = [name.strip() for name in header]
            seen = set()
            for position, name in enumerate(names):
                if not name:
                    raise UsageError(f"{path}: column {position} of the header has no name; "
                                     f"every column needs one")
                if name in seen:
                    raise UsageError(f"{path}: the header names the column {name!r} twice")
                seen.add(name)
            rows, lines = [], []
            ended = reader.line_num         # the line the last row ended on
            for row in reader:
                began, ended = ended + 1, reader.line_num
                if len(row) <= 1 and not "".join(row).strip():
                    continue    # a blank line (one with a delimiter is a row of empty cells)
                if began != ended and any("\n" in field or "\r" in field for field in row):
                    # (the csv module reads a quote left open to the end of the file: the
                    # rows after it were one field, and silently lost)
                    raise UsageError(f"{path}, line {began}: a field runs on over several "
                                     f"lines: a quote opened there is never closed, or a "
                                     f"value holds a line break, which a table's cells may "
                                     f"not; close the quote (or remove it)")
                if len(row) != len(names):
                    raise UsageError(f"{path}, line {ended}: {len(row)} fields; "
                                     f"the header has {len(names)}")
                rows.append(row)
                lines.append(ended)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: is it a CSV file?") from None
    except csv.Error as error:
        raise UsageError(f"{path}: not readable as CSV: {error}") from None
    if not rows:
        unclosed = [position for position, name in enumerate(header) if "\n" in name]
        if unclosed:        # (the csv module reads an unclosed quote to the end of the file)
            raise UsageError(f"{path}, line 1: the quote that opens column {unclosed[0]} of "
                             f"the header is never closed; close it (or remove it)")
        raise UsageError(f"{path} has a header row but no rows of data")
    if len(names) > 1 and all(is_number(name) for name in names):
        warnings.warn(f"the first row of {path} holds numbers; fastbp reads it as the header "
                      f"(column names), not as data")
    return Table(path, names, True, columns=list(zip(*rows)), lines=lines)


def _readable(path: str):
    """`path` itself, or for a pipe (which can be read only once: opened again, its start
    would be gone) its whole content in memory, to be read as often as needed."""
    with open(path, "rb") as stream:
        if stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return path
        return io.BytesIO(stream.read())


def _rewound(source):
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


def _np_load(path: str, source=None):
    """np.load without pickle, with messages that say what the file is. source:
    _readable(path), when the caller reads it more than once."""
    import numpy as np

    source = _rewound(_readable(path) if source is None else source)
    stream = source if isinstance(source, io.BytesIO) else open(path, "rb")
    try:
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        start = stream.read(len(NPY_SIGNATURE))
        if not (start == NPY_SIGNATURE or start.startswith(b"PK")):
            raise UsageError(f"{path} is not a NumPy file (.npy or .npz): it does not start "
                             f"with either signature")
        if start == NPY_SIGNATURE:
            stream.seek(0)
            _check_claimed(stream, size, path)
    finally:
        if stream is not source:
            stream.close()
    source = _rewound(source)
    try:
        return np.load(source, allow_pickle=False)
    except _DAMAGED as error:                           # a truncated or damaged archive
        raise UsageError(f"{path}: not a readable NumPy file: {error}") from None
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UsageError(f"{path} holds Python objects (an object array), which fastbp "
                             f"does not load (that needs pickle); save numbers or text") \
                from None
        raise UsageError(f"{path}: not a readable NumPy file: {error}") from None


def _load_npy(path: str, what: str, features: bool = True):
    import numpy as np

    array = _np_load(path)
    if not isinstance(array, np.ndarray):
        array.close()
        raise UsageError(f"{path} is an NPZ archive, not an NPY file: use --format npz")
    return _check_features(array, path, what) if features else _check_targets(array, path)


def _check_features(array, path, what):
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{what} in {path} must be numbers; the array has dtype {array.dtype}")
    if array.ndim != 2:
        hint = " (reshape(-1, 1) for a single feature)" if array.ndim == 1 else ""
        raise UsageError(f"{what} in {path} must be a 2-D array (rows, features); got shape "
                         f"{array.shape}{hint}")
    if array.shape[0] == 0:
        raise UsageError(f"{what} in {path} has no rows")
    return array


def _check_targets(array, path):
    import numpy as np

    if array.dtype.kind == "S":         # bytes: read as UTF-8 text, as a CSV file is
        try:
            array = np.char.decode(array, "utf-8")
        except UnicodeDecodeError:
            where = next(index for index, value in np.ndenumerate(array)
                         if not is_utf8(bytes(value)))
            column = f", column {where[1]}" if len(where) > 1 else ""
            raise UsageError(f"{path}, row {where[0]}{column}: the targets are bytes, and "
                             f"{bytes(array[where])!r} is not UTF-8 text; save the labels as "
                             f"text (str) or numbers") from None
    if array.dtype.kind not in "biufU":
        raise UsageError(f"the targets in {path} must be numbers or text; the array has "
                         f"dtype {array.dtype}")
    if array.ndim not in (1, 2):
        raise UsageError(f"the targets in {path} must be a 1-D or 2-D array; got shape "
                         f"{array.shape}")
    if array.ndim == 2 and array.shape[1] == 0:
        raise UsageError(f"the targets in {path} have no columns (shape {array.shape}); "
                         f"give one column per output, or a 1-D array")
    return array


def _array_table(path, matrix) -> Table:
    return Table(path, None, False, matrix=matrix)


def select_columns(table: Table, args, sidecar, n_inputs=None, want_targets=True):
    """(feature indices, target columns [1-D arrays], target names) of a table."""
    dropped = {table.index(spec) for spec in (getattr(args, "drop", None) or [])}
    target_specs = getattr(args, "target", None)
    target_idx = []
    if want_targets:
        if table.targets is not None:
            target_cols = [table.targets] if table.targets.ndim == 1 else \
                [table.targets[:, k] for k in range(table.targets.shape[1])]
            if table.targets.shape[0] != table.n_rows:
                raise UsageError(f"{table.path} has {table.n_rows} rows but the targets "
                                 f"({table.target_source}) have {table.targets.shape[0]}")
            names = _target_names_of_array(table, sidecar, len(target_cols))
        else:
            if target_specs:
                target_idx = [table.index(spec) for spec in target_specs]
            elif sidecar and sidecar.get("targets") and table.named:
                missing = [name for name in sidecar["targets"] if name not in table.names]
                if missing:     # (not the last column: it may be one of the features)
                    raise UsageError(f"{table.path} lacks the target column(s) "
                                     f"{', '.join(map(repr, missing[:5]))} the model was "
                                     f"trained with: give --target COLUMN or --targets "
                                     f"FILE.npy")
                target_idx = [table.names.index(name) for name in sidecar["targets"]]
            elif table.named:
                target_idx = [len(table.names) - 1]
            elif hasattr(table._matrix, "tocsr"):     # a sparse matrix: features only
                raise UsageError(f"{table.path} is a sparse matrix of features: give its "
                                 f"targets with --targets FILE.npy")
            else:
                raise UsageError(f"which columns of {table.path} are the targets? give "
                                 f"--targets FILE.npy or --target INDEX")
            if len(set(target_idx)) != len(target_idx):
                raise UsageError("a column is named twice in --target")
            if len(target_idx) >= table.n_columns:
                raise UsageError(f"{table.path} has no column left for the features once "
                                 f"the targets are taken")
            target_cols = [table.raw(j) for j in target_idx]
            if table.named:
                names = [table.names[j] for j in target_idx]
            else:
                names = ["y"] if len(target_idx) == 1 else [f"y{k}" for k in range(len(target_idx))]
    else:
        target_cols, names = [], []
    if dropped & set(target_idx):
        raise UsageError("a column is both a --target and a --drop")

    wanted = sidecar.get("features") if sidecar else None
    if wanted and table.named:
        position = {name: j for j, name in enumerate(table.names)}   # (names are distinct)
        missing = [name for name in wanted if name not in position]
        if missing:     # (none of them: another file's columns, not to be taken by position)
            raise UsageError(f"{table.path} lacks the feature column(s) "
                             f"{', '.join(map(repr, missing[:5]))} the model was trained with")
        features = [position[name] for name in wanted]
        needed = [table.names[j] for j in features if j in dropped]
        if needed:
            raise UsageError(f"--drop {needed[0]}: the model was trained on this column, and "
                             f"it takes every feature it was trained with "
                             f"({short_list(wanted)}); --drop leaves out other columns")
        both = [j for j in features if j in target_idx]
        if both:
            raise UsageError(f"column {table.names[both[0]]!r} of {table.path} is one of the "
                             f"model's features: it cannot be a target too")
        _check_width(table, len(features), n_inputs)
    else:
        left_out = dropped | set(target_idx)
        _check_width(table, table.n_columns - len(left_out), n_inputs)
        if not left_out:
            features = range(table.n_columns)
        elif table.named:
            features = [j for j in range(table.n_columns) if j not in left_out]
        else:       # (an array's columns: a sparse header may claim 2**30 of them)
            features = Remaining(table.n_columns, left_out)
    return features, target_cols, names


class Remaining(Sequence):
    """The columns 0..n-1 of an array but a few left out (--drop, --target), in order:
    a sequence that holds only those few. A sparse file of a few KB may claim 2**30
    columns (and a model takes 2**31 - 1 inputs): a list of the others took GBs and
    minutes before anything was trained or refused."""

    def __init__(self, n: int, left_out):
        self.n, self.gone = n, sorted(left_out)     # (each in 0..n-1)
        self._gone_set = frozenset(self.gone)

    def __len__(self) -> int:
        return self.n - len(self.gone)

    def __contains__(self, j) -> bool:
        try:
            j = operator.index(j)
        except TypeError:
            return False
        return 0 <= j < self.n and j not in self._gone_set

    def __iter__(self):
        start = 0
        for gone in self.gone:
            yield from range(start, gone)
            start = gone + 1
        yield from range(start, self.n)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = operator.index(k)
        if not -len(self) <= k < len(self):
            raise IndexError("column position out of range")
        j = k % len(self)
        for gone in self.gone:      # (sorted: each one at or before j moves it on)
            if gone > j:
                break
            j += 1
        return j

    def __repr__(self) -> str:
        return f"Remaining({self.n}, left_out={self.gone})"

    def of(self, matrix):
        """The matrix's columns but those left out: a dense array's copy (as indexing
        with the list of the others gives), or a sparse matrix's stored values moved to
        their new columns, in time and memory that grow with the stored values only."""
        import numpy as np

        if not hasattr(matrix, "tocsr"):       # (a flag a column: the array holds more)
            keep = np.ones(self.n, dtype=bool)
            keep[self.gone] = False
            return matrix[:, keep]
        matrix = matrix.tocsr()                    # (CSR already: itself)
        gone = np.array(self.gone, dtype=np.int64)
        indices = matrix.indices.astype(np.int64)
        before = np.searchsorted(gone, indices)    # the columns left out before (or at) each
        hit = before < gone.size
        hit[hit] = gone[before[hit]] == indices[hit]
        keep = ~hit
        kept = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        return type(matrix)((matrix.data[keep],
                             (indices - before)[keep].astype(matrix.indices.dtype),
                             kept[matrix.indptr].astype(matrix.indptr.dtype)),
                            shape=(matrix.shape[0], len(self)))


def _check_width(table, n_features, n_inputs):
    """Refuse a count of feature columns that no model takes (n_inputs: the model's, None
    for one to train) before anything that grows with it: a sparse file's header alone
    sets it, and a list of its columns (or their names) would fill the memory."""
    from fastbp.model import MAX_LAYER_WIDTH

    if not n_features:
        raise UsageError(f"{table.path} has no feature columns left")
    if n_inputs is not None and n_features != n_inputs:
        raise UsageError(f"{table.path} gives {n_features:,} feature columns; the model "
                         f"takes {n_inputs:,} inputs (leave columns out with --drop)")
    if n_features > MAX_LAYER_WIDTH:
        raise UsageError(f"{table.path} gives {n_features:,} feature columns; a model takes "
                         f"at most {MAX_LAYER_WIDTH:,} inputs")


def _target_names_of_array(table, sidecar, n):
    if sidecar and sidecar.get("targets") and len(sidecar["targets"]) == n:
        return list(sidecar["targets"])
    stem = table.target_stem
    return [stem] if n == 1 else [f"{stem}{k}" for k in range(n)]
