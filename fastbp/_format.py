"""The fastbp model file (format version 1); docs/file-format.md is its description.

    magic      8 bytes   b"\\x89FASTBP\\n"
    version    uint32 little-endian (1)
    header_len uint32 little-endian
    header     header_len bytes of UTF-8 JSON:
               {"layer_sizes": [...], "activations": [...], "dtype": "float32"|"float64"}
               and, for a model with dropout, "dropout": [rate per weight layer]
    parameters W1, b1, W2, b2, ... little-endian, W row-major (n_in, n_out)
    crc32      uint32 little-endian, of every byte before it

Reading never unpickles or evaluates anything: the header is JSON, checked field by field,
the parameter count must match the layer sizes and the file's length before anything is
allocated, and the checksum must match.
"""
from __future__ import annotations

import json
import os
import struct
import stat
import zlib

import numpy as np

MAGIC = b"\x89FASTBP\n"
VERSION = 1
PREFIX = struct.Struct("<8sII")
CHECKSUM = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20
REQUIRED_KEYS = {"layer_sizes", "activations", "dtype"}
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


# The parameters go to a stream this many bytes at a time (write, below)
WRITE_BYTES = 1 << 24


def encode(layer_sizes, activations, params: np.ndarray, dropout=()) -> bytes:
    """The file's bytes (one copy of the parameters: the answer)."""
    start, parameters = _parts(layer_sizes, activations, params, dropout)
    checksum = zlib.crc32(parameters, zlib.crc32(start))
    return b"".join((start, parameters, CHECKSUM.pack(checksum)))


def write(stream, layer_sizes, activations, params: np.ndarray, dropout=()) -> None:
    """encode's bytes written to a binary stream, the parameters a piece at a time from
    the model's own memory (a save made two whole copies of them first: a model that
    trained could not be saved in the memory left)."""
    start, parameters = _parts(layer_sizes, activations, params, dropout)
    stream.write(start)
    checksum = zlib.crc32(start)
    for offset in range(0, len(parameters), WRITE_BYTES):
        piece = parameters[offset:offset + WRITE_BYTES]
        checksum = zlib.crc32(piece, checksum)
        stream.write(piece)
    stream.write(CHECKSUM.pack(checksum))


def _parts(layer_sizes, activations, params: np.ndarray, dropout) -> tuple:
    """(the signature and header, the parameters' little-endian bytes: a view of params
    but on a big-endian machine)."""
    fields = {"layer_sizes": list(layer_sizes), "activations": list(activations),
              "dtype": params.dtype.name}
    if any(dropout):
        fields["dropout"] = [float(rate) for rate in dropout]
    header = json.dumps(fields).encode()
    values = np.ascontiguousarray(params.astype(DTYPES[params.dtype.name], copy=False))
    return PREFIX.pack(MAGIC, VERSION, len(header)) + header, memoryview(values).cast("B")


def parameter_count(layer_sizes) -> int:
    """Weights and biases of a network with these widths, in Python integers (no overflow)."""
    return sum(n_in * n_out + n_out for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]))


def _damaged(why: str) -> ValueError:
    return ValueError(f"not a valid fastbp model file: {why}")


def _read_start(data: bytes):
    """Check the signature and header at the start of `data`.

    Returns (layer_sizes, activations, dtype, dropout, header_end, total_size): where the
    parameters start and how long the whole file must be.
    """
    if len(data) < PREFIX.size:
        raise _damaged(f"only {len(data)} bytes long")
    magic, version, header_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _damaged("it does not start with the fastbp signature")
    if version != VERSION:
        raise ValueError(f"fastbp model file version {version} is not supported "
                         f"(this fastbp reads version {VERSION})")
    header_end = PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or header_end > len(data):
        raise _damaged("the header length is out of range (truncated file?)")
    try:
        header = json.loads(data[PREFIX.size:header_end].decode("utf-8"),
                            object_pairs_hook=without_repeats)
    except RepeatedKey as error:
        raise _damaged(f"the header names {error} twice") from None
    except (ValueError, RecursionError):   # not UTF-8, not JSON, or an integer too long
        raise _damaged("the header is not valid JSON") from None     # for Python to read
    layer_sizes, activations, dtype, dropout = _check_header(header)
    n_params = parameter_count(layer_sizes)
    total_size = header_end + n_params * dtype.itemsize + CHECKSUM.size
    return layer_sizes, activations, dtype, dropout, header_end, total_size


class RepeatedKey(ValueError):
    """A JSON object that names a key twice (the key's repr is the message)."""


def without_repeats(pairs) -> dict:
    """A JSON object as a dict, refusing a key given twice (json's object_pairs_hook: it
    would keep the last, where which one was meant cannot be told)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        raise RepeatedKey(next(repr(key) for key, _ in pairs if key in seen or seen.add(key)))
    return document


def _check_size(actual: int, expected: int) -> None:
    if actual != expected:
        raise _damaged(f"{actual} bytes where its layer sizes need {expected} "
                       f"(truncated or damaged)")


def decode(data: bytes):
    """(layer_sizes, activations, params, dropout) from the bytes of a model file."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a model is read from bytes; got {type(data).__name__}")
    if not isinstance(data, bytes):
        data = bytes(data)                # a snapshot: a bytearray could change as it is read
    layer_sizes, activations, dtype, dropout, header_end, total_size = _read_start(data)
    _check_size(len(data), total_size)
    (stored_checksum,) = CHECKSUM.unpack_from(data, len(data) - CHECKSUM.size)
    if zlib.crc32(memoryview(data)[:-CHECKSUM.size]) != stored_checksum:
        raise _damaged("the checksum does not match (the file is damaged)")
    n_params = (total_size - header_end - CHECKSUM.size) // dtype.itemsize
    stored = np.frombuffer(data, dtype=dtype, count=n_params, offset=header_end)
    params = parameter_buffer(n_params, dtype.newbyteorder("="))
    params[...] = stored
    return layer_sizes, activations, params, dropout


def _check_header(header):
    if (not isinstance(header, dict) or not REQUIRED_KEYS <= set(header)
            or not set(header) <= REQUIRED_KEYS | {"dropout"}):
        raise _damaged("the header must hold exactly layer_sizes, activations and dtype "
                       "(and dropout, optionally)")
    layer_sizes, activations, dtype = header["layer_sizes"], header["activations"], header["dtype"]
    if (not isinstance(layer_sizes, list) or len(layer_sizes) < 2
            or not all(type(size) is int and 0 < size < 2**31 for size in layer_sizes)):
        raise _damaged("layer_sizes must be a list of at least two positive integers")
    if (not isinstance(activations, list) or len(activations) != len(layer_sizes) - 1
            or not all(isinstance(name, str) for name in activations)):
        raise _damaged("activations must be a list of names, one per weight layer")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _damaged(f"dtype must be one of {', '.join(DTYPES)}")
    dropout = header.get("dropout", [0.0] * len(activations))
    if (not isinstance(dropout, list) or len(dropout) != len(activations)
            or not all(type(rate) in (int, float) and 0 <= rate < 1 for rate in dropout)
            or dropout[-1] != 0):
        raise _damaged("dropout must be a list of rates in [0, 1), one per weight layer, "
                       "0 for the output layer")
    return tuple(layer_sizes), tuple(activations), DTYPES[dtype], tuple(map(float, dropout))


def read_file(path):
    """decode() of the file at `path`, reading no more than it holds.

    A regular file's size must be what its header calls for before the parameters are read;
    they are read straight into their array with the checksum computed on the way, so memory
    and work are bounded by the file's size (one copy). A file with holes (sparse: its
    size is not backed by data on disk) is first read through once to check its checksum
    without allocating, so a hostile header over a hole cannot make fastbp allocate. A file
    whose parameters would need more than the machine's memory is refused before any of
    them is read (a 4 KiB file with holes claiming 8.8 TB was read through for hours to
    find its checksum wrong; it could never have loaded). A FIFO or a character device is
    read to its end (at most the size the header calls for, plus one byte to notice more),
    memory growing only with the bytes that arrive.
    """
    from fastbp.model import check_allocation
    with open(os.fspath(path), "rb", buffering=0) as stream:
        found = os.fstat(stream.fileno())
        sparse = stat.S_ISREG(found.st_mode) and _has_holes(stream.fileno(), found.st_size)
        start = _read_header(stream)
        layer_sizes, activations, dtype, dropout, header_end, total_size = _read_start(start)
        if not stat.S_ISREG(found.st_mode):
            return decode(start + _read_up_to(stream, total_size - len(start) + 1))
        _check_size(found.st_size, total_size)
        n_params = (total_size - header_end - CHECKSUM.size) // dtype.itemsize
        check_allocation(n_params, dtype, "the file's parameters")
        if sparse:
            _check_checksum(zlib.crc32(start), stream, total_size - len(start))
            stream.seek(len(start))
        params = parameter_buffer(n_params, dtype)
        checksum = _read_into(stream, memoryview(params).cast("B"), zlib.crc32(start))
        (stored_checksum,) = CHECKSUM.unpack(_read_up_to(stream, CHECKSUM.size))
        if checksum != stored_checksum:
            raise _damaged("the checksum does not match (the file is damaged)")
    return layer_sizes, activations, params.astype(dtype.newbyteorder("="), copy=False), dropout


READ_CHUNK_BYTES = 1 << 22

# A model's flat parameters start on this boundary (a cache line, an AVX-512 vector), and
# so does every layer whose offset is a multiple of it: numpy's large arrays start 16
# bytes into a page, and the few-row kernels read a W that starts mid-line 1.1-1.45x
# slower on 2-8 rows (each vector load then spans two lines: docs/serving.md).
PARAMETER_ALIGNMENT = 64


def parameter_buffer(n_params: int, dtype, zeroed: bool = False) -> np.ndarray:
    """A C-contiguous array of n_params values of `dtype` (zeros if `zeroed`, else
    uninitialised) whose first element is PARAMETER_ALIGNMENT-aligned (a view into a
    slightly larger allocation)."""
    dtype = np.dtype(dtype)
    spare = PARAMETER_ALIGNMENT // dtype.itemsize
    raw = (np.zeros if zeroed else np.empty)(n_params + spare, dtype=dtype)
    skip = (-raw.ctypes.data % PARAMETER_ALIGNMENT) // dtype.itemsize
    return raw[skip:skip + n_params]


def _read_header(stream) -> bytes:
    """The prefix and the header, as far as the prefix says (never more than it allows)."""
    prefix = _read_up_to(stream, PREFIX.size)
    if len(prefix) < PREFIX.size or prefix[:len(MAGIC)] != MAGIC:
        return prefix                       # _read_start explains what is wrong
    (header_len,) = struct.unpack_from("<I", prefix, PREFIX.size - 4)
    return prefix + _read_up_to(stream, min(header_len, MAX_HEADER_BYTES + 1))


def _read_up_to(stream, limit: int) -> bytes:
    """Up to `limit` bytes, fewer only at the end of the file; memory grows with what is read."""
    parts, remaining = [], limit
    while remaining > 0:
        part = stream.read(min(remaining, READ_CHUNK_BYTES))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _read_into(stream, target: memoryview, checksum: int) -> int:
    """Fill `target` from the stream; the CRC-32 continued over those bytes."""
    done = 0
    while done < len(target):
        count = stream.readinto(target[done:done + READ_CHUNK_BYTES])
        if not count:
            raise _damaged(f"it ended after {done} bytes of parameters (truncated while "
                           f"being read?)")
        checksum = zlib.crc32(target[done:done + count], checksum)
        done += count
    return checksum


def _check_checksum(checksum: int, stream, remaining: int) -> None:
    """Check the CRC-32 of the rest of the file a chunk at a time, allocating nothing."""
    buffer = memoryview(bytearray(min(READ_CHUNK_BYTES, remaining)))
    while remaining > CHECKSUM.size:
        count = stream.readinto(buffer[:min(len(buffer), remaining - CHECKSUM.size)])
        if not count:
            raise _damaged("it ended early (truncated while being read?)")
        checksum = zlib.crc32(buffer[:count], checksum)
        remaining -= count
    (stored_checksum,) = CHECKSUM.unpack(_read_up_to(stream, CHECKSUM.size).ljust(4, b"\0"))
    if checksum != stored_checksum:
        raise _damaged("the checksum does not match (the file is damaged)")


def _has_holes(handle: int, size: int) -> bool:
    """Whether the file has holes (regions not backed by data), where the system says;
    leaves the file position at the start."""
    try:
        return os.lseek(handle, 0, os.SEEK_HOLE) < size
    except (OSError, AttributeError):
        return False
    finally:
        os.lseek(handle, 0, os.SEEK_SET)
