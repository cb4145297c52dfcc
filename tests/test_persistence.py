"""Saving and loading: exact round trips, exactly the given path, the documented format, and
damaged or hostile files refused with a clear error, never unpickled. Models also pickle."""
import copy
import json
import os
import pathlib
import pickle
import stat
import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest

import fastbp
from fastbp.model import ACTIVATIONS

DTYPES = ["float32", "float64"]
HIDDEN = [a for a in ACTIVATIONS if a != "softmax"]
MAGIC = b"\x89FASTBP\n"


def trained_model(sizes, activations, dtype, seed=0):
    """A model whose parameters are not just the initial ones (nonzero biases too)."""
    model = fastbp.MLP(sizes, activations, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20, sizes[0]))
    Y = rng.uniform(0.05, 0.95, size=(20, sizes[-1]))
    if activations[-1] == "softmax":
        Y = Y / Y.sum(axis=1, keepdims=True)
        loss = "cce"
    elif activations[-1] == "sigmoid":
        loss = "bce"
    else:
        loss = "mse"
    fastbp.Trainer(loss, learning_rate=0.05, epochs=2, batch_size=7, seed=seed).fit(model, X, Y)
    return model


def probe(n_in, seed=1):
    return np.random.default_rng(seed).normal(size=(17, n_in))


def assert_same_model(a, b):
    assert type(b) is fastbp.MLP
    assert a.layer_sizes == b.layer_sizes
    assert a.activations == b.activations
    assert a.dtype == b.dtype
    assert a.n_params == b.n_params
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)
    X = probe(a.layer_sizes[0])
    pa, pb = a.predict(X), b.predict(X)
    assert pa.dtype == pb.dtype
    assert np.array_equal(pa, pb)


def small_file_bytes(dtype="float32"):
    return trained_model([2, 3, 1], ["tanh", "sigmoid"], dtype).to_bytes()


def build_file(header, params=b"", version=1, magic=MAGIC, header_bytes=None, checksum=True,
               header_len=None):
    """A file laid out as docs/file-format.md says, with any header we like."""
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    body = magic + struct.pack("<II", version, length) + raw + params
    crc = zlib.crc32(body) if checksum is True else checksum
    return body + struct.pack("<I", crc & 0xFFFFFFFF)


def good_header(dtype="float32"):
    return {"layer_sizes": [2, 3, 1], "activations": ["tanh", "sigmoid"], "dtype": dtype}


def good_params(dtype="float32"):
    return np.arange(13, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output", list(ACTIVATIONS))
def test_save_load_round_trip_every_activation(tmp_path, dtype, hidden, output):
    model = trained_model([3, 5, 4, 2], [hidden, hidden, output], dtype)
    path = tmp_path / "model.fbp"
    model.save(path)
    loaded = fastbp.load(path)
    assert_same_model(model, loaded)
    assert loaded.activations == (hidden, hidden, output)
    assert loaded.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes, activations", [
    ([1, 1], ["identity"]),
    ([5, 3], ["softmax"]),
    ([3, 7, 2], "relu"),
    ([4, 2, 2, 2, 3], ["leaky_relu", "sigmoid", "tanh", "softmax"]),
])
def test_save_load_round_trip_shapes(tmp_path, dtype, sizes, activations):
    model = trained_model(sizes, activations if isinstance(activations, list)
                          else [activations] * (len(sizes) - 2) + ["identity"], dtype)
    model.save(str(tmp_path / "m"))
    loaded = fastbp.load(str(tmp_path / "m"))
    assert_same_model(model, loaded)
    assert fastbp.MLP.from_bytes(model.to_bytes()).layer_sizes == tuple(sizes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_survive_bit_exactly(tmp_path, dtype):
    model = fastbp.MLP([3, 4, 2], ["tanh", "identity"], dtype=dtype, seed=0)
    info = np.finfo(dtype)
    specials = np.array([-0.0, info.tiny, info.tiny / 4, info.max, -info.max, info.eps,
                         1 / 3, -1e-30], dtype=dtype)
    flat = np.resize(specials, model.weights[0].size).reshape(model.weights[0].shape)
    model.weights[0][...] = flat
    model.biases[1][...] = [np.nextafter(np.array(1, dtype), 2), -0.0]
    model.save(tmp_path / "m")
    loaded = fastbp.load(tmp_path / "m")
    for x, y in zip(model.weights + model.biases, loaded.weights + loaded.biases):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_loaded_model_trains_exactly_like_the_original(tmp_path, dtype):
    model = trained_model([4, 6, 3], ["relu", "softmax"], dtype)
    model.save(tmp_path / "m")
    loaded = fastbp.load(tmp_path / "m")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    for m in (model, loaded):
        fastbp.Trainer("cce", learning_rate=0.1, epochs=3, batch_size=8, seed=5).fit(m, X, y)
    assert_same_model(model, loaded)


def test_loaded_parameters_are_writable_live_and_independent(tmp_path):
    model = trained_model([3, 4, 2], ["tanh", "identity"], "float32")
    model.save(tmp_path / "m")
    loaded = fastbp.load(tmp_path / "m")
    before = model.weights[0].copy()
    loaded.weights[0][...] = 0.5                     # live, writable
    assert np.all(loaded.weights[0] == 0.5)
    assert np.array_equal(model.weights[0], before)  # independent of the original
    X = probe(3)
    assert not np.array_equal(loaded.predict(X), model.predict(X))
    fastbp.Trainer("mse", epochs=1, seed=0).fit(loaded, X, np.zeros((17, 2)))


# ---------------------------------------------------------------- exactly the given path

@pytest.mark.parametrize("name", ["model", "model.fbp", "model.npz", "model.pkl", "a.b.c",
                                  "no_suffix_at_all", "weird name with spaces", "ünïcode.bin"])
@pytest.mark.parametrize("kind", [str, pathlib.Path])
def test_save_writes_exactly_the_given_path(tmp_path, name, kind):
    model = trained_model([3, 4, 2], ["relu", "identity"], "float64")
    target = tmp_path / name
    model.save(kind(target))
    assert sorted(os.listdir(tmp_path)) == [name], "save added a suffix or left files behind"
    assert target.read_bytes() == model.to_bytes()
    assert_same_model(model, fastbp.load(kind(target)))


def test_save_accepts_any_path_like(tmp_path):
    class PathLike:
        def __fspath__(self):
            return str(tmp_path / "via_fspath")

    model = trained_model([3, 2], ["identity"], "float32")
    model.save(PathLike())
    assert os.listdir(tmp_path) == ["via_fspath"]
    assert_same_model(model, fastbp.load(PathLike()))


def test_save_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = trained_model([3, 2], ["identity"], "float32")
    model.save("relative")
    assert os.listdir(tmp_path) == ["relative"]
    assert_same_model(model, fastbp.load("relative"))


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"old content that is longer than nothing" * 100)
    first = trained_model([3, 2], ["identity"], "float32", seed=1)
    second = trained_model([5, 4, 3], ["tanh", "softmax"], "float64", seed=2)
    first.save(path)
    assert_same_model(first, fastbp.load(path))
    second.save(path)
    assert_same_model(second, fastbp.load(path))
    assert os.listdir(tmp_path) == ["m"]


def test_save_into_a_missing_folder_fails_and_leaves_nothing(tmp_path):
    model = trained_model([3, 2], ["identity"], "float32")
    with pytest.raises(OSError):
        model.save(tmp_path / "missing" / "m")
    assert os.listdir(tmp_path) == []


def test_saved_file_has_ordinary_permissions(tmp_path):
    """The file is created as open(path, 'wb') would create it (0o666 minus the umask), not
    with the 0o600 of a private temporary file."""
    umask = os.umask(0o022)
    try:
        path = tmp_path / "m"
        trained_model([3, 2], ["identity"], "float32").save(path)
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "nothing here")


# ---------------------------------------------------------------- the documented format

@pytest.mark.parametrize("dtype", DTYPES)
def test_file_layout_is_the_documented_one(tmp_path, dtype):
    model = trained_model([3, 4, 2], ["relu", "softmax"], dtype)
    model.save(tmp_path / "m")
    data = (tmp_path / "m").read_bytes()
    assert data[:8] == MAGIC
    version, header_len = struct.unpack_from("<II", data, 8)
    assert version == 1
    header = json.loads(data[16:16 + header_len].decode("utf-8"))
    assert header == {"layer_sizes": [3, 4, 2], "activations": ["relu", "softmax"],
                      "dtype": dtype}
    expected = b"".join(np.ascontiguousarray(p).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
                        for pair in zip(model.weights, model.biases) for p in pair)
    params_end = 16 + header_len + len(expected)
    assert data[16 + header_len:params_end] == expected
    assert len(data) == params_end + 4
    assert struct.unpack_from("<I", data, params_end)[0] == zlib.crc32(data[:params_end])


def test_format_is_documented():
    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "file-format.md"
    assert doc.exists(), "docs/file-format.md (named in MLP.save's docstring) is missing"
    text = doc.read_text()
    assert "version" in text.lower() and "FASTBP" in text and "CRC" in text.upper()


def test_a_hand_built_file_loads():
    """A writer that follows only the documentation produces a loadable model."""
    data = build_file(good_header("float64"), good_params("float64"))
    model = fastbp.MLP.from_bytes(data)
    assert model.layer_sizes == (2, 3, 1)
    assert model.dtype == np.float64
    assert np.array_equal(model.weights[0], np.arange(6).reshape(2, 3))
    assert np.array_equal(model.biases[1], [12.0])


# ---------------------------------------------------------------- damaged files

@pytest.mark.parametrize("dtype", DTYPES)
def test_every_truncation_is_refused(tmp_path, dtype):
    data = small_file_bytes(dtype)
    for length in range(len(data)):
        with pytest.raises(ValueError, match=r"not a valid fastbp model file"):
            fastbp.MLP.from_bytes(data[:length])
    path = tmp_path / "t"
    for length in sorted({0, 1, 7, 8, 15, 16, 17, len(data) // 2, len(data) - 5, len(data) - 1}):
        path.write_bytes(data[:length])
        with pytest.raises(ValueError, match=r"not a valid fastbp model file"):
            fastbp.load(path)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extra_bytes_at_the_end_are_refused(tmp_path, dtype):
    data = small_file_bytes(dtype)
    for tail in (b"\0", b"x" * 4, data):
        with pytest.raises(ValueError, match=r"not a valid fastbp model file"):
            fastbp.MLP.from_bytes(data + tail)
    (tmp_path / "m").write_bytes(data + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"not a valid fastbp model file"):
        fastbp.load(tmp_path / "m")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_flipped_byte_is_refused(dtype, mask):
    data = bytearray(small_file_bytes(dtype))
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= mask
        with pytest.raises(ValueError):
            fastbp.MLP.from_bytes(bytes(damaged))


def test_flipped_parameter_byte_names_the_checksum(tmp_path):
    data = bytearray(small_file_bytes())
    header_len = struct.unpack_from("<I", data, 12)[0]
    data[16 + header_len + 5] ^= 0x10
    (tmp_path / "m").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checksum"):
        fastbp.load(tmp_path / "m")


# ---------------------------------------------------------------- hostile files

HOSTILE = [
    ("empty", b"", r"only 0 bytes"),
    ("wrong-magic", b"GIF89a" + small_file_bytes()[6:], r"signature"),
    ("npy", b"\x93NUMPY\x01\x00" + b"\0" * 100, r"signature"),
    ("zip", b"PK\x03\x04" + b"\0" * 100, r"signature"),
    ("text", b"layer_sizes = [2, 3, 1]\n" * 4, r"signature"),
    ("future-version", build_file(good_header(), good_params(), version=2),
     r"version 2 is not supported"),
    ("version-0", build_file(good_header(), good_params(), version=0), r"version 0"),
    ("version-huge", build_file(good_header(), good_params(), version=2**32 - 1), r"version"),
    ("header-len-huge", build_file(good_header(), good_params(), header_len=2**32 - 1),
     r"header length"),
    ("header-len-over-1MiB", build_file(None, header_bytes=b" " * (2**20 + 1)), r"header length"),
    ("header-len-too-short", build_file(good_header(), good_params(), header_len=10),
     r"not valid JSON"),
    ("non-json", build_file(None, good_params(), header_bytes=b"not json at all"),
     r"not valid JSON"),
    ("not-utf8", build_file(None, good_params(), header_bytes=b"\xff\xfe{}"), r"not valid JSON"),
    ("deep-json", build_file(None, header_bytes=b"[" * 200000 + b"]" * 200000), r"JSON|header"),
    ("integer-past-python's-digit-limit",
     build_file(None, header_bytes=b'{"layer_sizes": [' + b"9" * 5000 + b', 1]}'),
     r"not a valid fastbp model file: the header is not valid JSON"),
    ("header-list", build_file([2, 3, 1], good_params()), r"exactly layer_sizes"),
    ("header-null", build_file(None, good_params()), r"exactly layer_sizes"),
    ("extra-key", build_file({**good_header(), "code": "import os"}, good_params()),
     r"exactly layer_sizes, activations and dtype"),
    ("missing-key", build_file({"layer_sizes": [2, 3, 1], "activations": ["tanh", "sigmoid"]},
                               good_params()), r"exactly layer_sizes"),
    ("sizes-string", build_file({**good_header(), "layer_sizes": "2,3,1"}, good_params()),
     r"layer_sizes must be a list"),
    ("sizes-float", build_file({**good_header(), "layer_sizes": [2, 3.0, 1]}, good_params()),
     r"layer_sizes must be a list of at least two positive integers"),
    ("sizes-bool", build_file({**good_header(), "layer_sizes": [2, True, 1]}, good_params()),
     r"layer_sizes"),
    ("sizes-zero", build_file({**good_header(), "layer_sizes": [2, 0, 1]}, b""), r"layer_sizes"),
    ("sizes-negative", build_file({**good_header(), "layer_sizes": [2, -3, 1]}, good_params()),
     r"layer_sizes"),
    ("sizes-one-layer", build_file({**good_header(), "layer_sizes": [2], "activations": []}),
     r"layer_sizes"),
    ("sizes-2**31", build_file({**good_header(), "layer_sizes": [2, 2**31, 1]}, good_params()),
     r"layer_sizes"),
    ("sizes-bignum", build_file({**good_header(), "layer_sizes": [2, 10**400, 1]}, good_params()),
     r"layer_sizes|JSON"),
    ("sizes-nan", build_file(None, good_params(), header_bytes=b'{"layer_sizes": [2, NaN, 1], '
                             b'"activations": ["tanh", "sigmoid"], "dtype": "float32"}'),
     r"layer_sizes"),
    ("huge-gigabytes", build_file({"layer_sizes": [2**31 - 1, 2**31 - 1],
                                   "activations": ["relu"], "dtype": "float64"},
                                  good_params()), r"bytes where its layer sizes need"),
    ("huge-many-layers", build_file({"layer_sizes": [2**30] * 50, "activations": ["relu"] * 49,
                                     "dtype": "float64"}, good_params()),
     r"bytes where its layer sizes need"),
    ("activations-string", build_file({**good_header(), "activations": "tanh"}, good_params()),
     r"activations must be a list"),
    ("activations-count", build_file({**good_header(), "activations": ["tanh"]}, good_params()),
     r"one per weight layer"),
    ("activations-types", build_file({**good_header(), "activations": ["tanh", 7]}, good_params()),
     r"activations must be a list of names"),
    ("activations-unknown", build_file({**good_header(), "activations": ["tanh", "__import__"]},
                                       good_params()), r"unknown activation '__import__'"),
    ("activations-hidden-softmax", build_file({**good_header(),
                                               "activations": ["softmax", "sigmoid"]},
                                              good_params()), r"softmax"),
    ("dtype-float16", build_file({**good_header(), "dtype": "float16"}, good_params()[:26]),
     r"dtype must be one of float32, float64"),
    ("dtype-number", build_file({**good_header(), "dtype": 32}, good_params()), r"dtype"),
    ("dtype-list", build_file({**good_header(), "dtype": ["float32"]}, good_params()), r"dtype"),
    ("dtype-empty-list", build_file({**good_header(), "dtype": []}, good_params()), r"dtype"),
    ("dtype-dict", build_file({**good_header(), "dtype": {"name": "float32"}}, good_params()),
     r"dtype"),
    ("dtype-object", build_file({**good_header(), "dtype": "object"}, good_params()), r"dtype"),
    ("dtype-big-endian", build_file({**good_header(), "dtype": ">f4"}, good_params()), r"dtype"),
    ("params-short", build_file(good_header(), good_params()[:-4]), r"bytes where"),
    ("params-long", build_file(good_header(), good_params() + b"\0" * 4), r"bytes where"),
    ("bad-checksum", build_file(good_header(), good_params(), checksum=12345), r"checksum"),
    ("no-checksum", build_file(good_header(), good_params())[:-4], r"bytes where"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_files_are_refused(tmp_path, case):
    _, data, message = case
    path = tmp_path / "hostile"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        fastbp.load(path)
    with pytest.raises(ValueError, match=message):
        fastbp.MLP.from_bytes(data)


@pytest.mark.parametrize("sizes", [[2**31 - 1, 2**31 - 1], [2**30] * 50, [2, 2**31 - 1, 2]])
def test_huge_claimed_sizes_allocate_nothing(tmp_path, sizes):
    data = build_file({"layer_sizes": sizes, "activations": ["relu"] * (len(sizes) - 1),
                       "dtype": "float64"}, good_params() * 10)
    path = tmp_path / "huge"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bytes where its layer sizes need"):
            fastbp.load(path)
        with pytest.raises(ValueError, match=r"bytes where its layer sizes need"):
            fastbp.MLP.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"refusing a hostile header allocated {peak} bytes"


def test_from_bytes_refuses_non_bytes():
    with pytest.raises(TypeError, match=r"bytes"):
        fastbp.MLP.from_bytes("\x89FASTBP\n")
    with pytest.raises(TypeError, match=r"bytes"):
        fastbp.MLP.from_bytes(None)
    data = small_file_bytes()
    assert fastbp.MLP.from_bytes(bytearray(data)).layer_sizes == (2, 3, 1)
    assert fastbp.MLP.from_bytes(memoryview(data)).layer_sizes == (2, 3, 1)


class _Marker:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_pickles(marker):
    payload = pickle.dumps(_Marker(marker), protocol=2)
    assert payload[:1] == b"\x80"
    # an evil pickle alone, one where the header should be, one where the parameters should be
    # (with the right size and a valid checksum), and one after a valid header prefix
    k = -(-len(payload) // 8)          # a [1, k] model has 2k float32 parameters: 8k bytes
    sizes = {"layer_sizes": [1, k], "activations": ["identity"], "dtype": "float32"}
    sized_params = payload + b"." * (8 * k - len(payload))
    return {
        "pickle-alone": payload,
        "pickle-protocol-0": pickle.dumps(_Marker(marker), protocol=0),
        "pickle-highest": pickle.dumps(_Marker(marker), protocol=pickle.HIGHEST_PROTOCOL),
        "pickle-as-header": build_file(None, good_params(), header_bytes=payload),
        "pickle-as-params": build_file(good_header(), payload),
        "pickle-as-sized-params": build_file(sizes, sized_params),
        "pickle-after-magic": MAGIC + payload,
    }


def test_pickle_payloads_never_execute(tmp_path):
    marker = tmp_path / "marker_created_by_pickle"
    # sanity: the payload does run when unpickled on purpose
    pickle.loads(pickle.dumps(_Marker(marker)))
    assert marker.exists()
    marker.unlink()

    for name, data in _evil_pickles(marker).items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        try:
            model = fastbp.load(path)
        except ValueError:
            pass
        else:  # a well-formed file whose parameters happen to be pickle bytes: plain numbers
            assert isinstance(model, fastbp.MLP), name
        try:
            fastbp.MLP.from_bytes(data)
        except ValueError:
            pass
        assert not marker.exists(), f"{name}: loading ran the pickle"


@pytest.mark.parametrize("name", ["pickle-alone", "pickle-protocol-0", "pickle-highest",
                                  "pickle-as-header", "pickle-after-magic"])
def test_pickle_files_get_a_clear_error(tmp_path, name):
    marker = tmp_path / "marker"
    data = _evil_pickles(marker)[name]
    path = tmp_path / "evil"
    path.write_bytes(data)
    # the bytes after the signature read as an absurd version number: also a clear refusal
    with pytest.raises(ValueError, match=r"not a valid fastbp model file|version \d+ is not "
                                         r"supported"):
        fastbp.load(path)
    assert not marker.exists()


# ---------------------------------------------------------------- pickle and copy

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_models_pickle(dtype, protocol):
    model = trained_model([3, 5, 2], ["leaky_relu", "softmax"], dtype)
    clone = pickle.loads(pickle.dumps(model, protocol=protocol))
    assert_same_model(model, clone)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copies_are_equal_and_independent(dtype, copier):
    model = trained_model([3, 5, 2], ["sigmoid", "identity"], dtype)
    clone = copier(model)
    assert clone is not model
    assert_same_model(model, clone)
    clone.weights[0][...] = 0
    clone.biases[1][...] = 1
    assert not np.array_equal(model.weights[0], clone.weights[0])
    assert not np.array_equal(model.biases[1], clone.biases[1])


def test_deepcopy_inside_a_container():
    model = trained_model([3, 2], ["identity"], "float32")
    box = {"a": model, "b": [model]}
    clone = copy.deepcopy(box)
    assert_same_model(model, clone["a"])
    assert clone["a"] is clone["b"][0], "deepcopy memo not honoured: one model became two"


def test_pickle_stores_the_file_format_bytes():
    model = trained_model([3, 2], ["identity"], "float64")
    payload = pickle.dumps(model)
    assert model.to_bytes() in payload


class _Tagged(fastbp.MLP):
    def describe(self):
        return f"tagged {self.version}"


def test_copies_and_pickles_keep_a_subclass_and_the_attributes_set_on_a_model():
    """copy, deepcopy and pickle made a plain MLP of a subclass and dropped the attributes
    a caller set on the model (a service's version tag); the model's own plans and caches
    are made afresh, the parameters never shared."""
    import copy
    import pickle

    model = _Tagged([4, 8, 2], "relu", seed=0)
    model.version = "2026-01"
    model.owner = model                                  # (a cycle, for deepcopy's memo)
    X = np.ones((3, 4), np.float32)
    for how, made in (("copy", copy.copy(model)), ("deepcopy", copy.deepcopy(model)),
                      ("pickle", pickle.loads(pickle.dumps(model)))):
        assert type(made) is _Tagged and made.describe() == "tagged 2026-01", how
        np.testing.assert_array_equal(made.predict(X), model.predict(X))
        assert not np.shares_memory(made.parameter_vector(), model.parameter_vector())
        assert made._predictor is not model._predictor
        assert (made.owner is model) == (how == "copy"), how
        if how != "copy":
            assert made.owner is made, how
        made.weights[0][...] = 0
        assert model.weights[0].any()
    assert type(_Tagged.from_bytes(model.to_bytes())) is _Tagged
    assert type(fastbp.MLP.from_bytes(model.to_bytes())) is fastbp.MLP


class _Slotted(fastbp.MLP):
    __slots__ = ("tag", "__private")

    def set_private(self, value):
        self.__private = value

    def private(self):
        return self.__private


def test_copies_and_pickles_keep_a_subclass_s_slots():
    """A subclass's __slots__ attribute was dropped by copy, deepcopy and pickle (they
    took vars() only)."""
    model = _Slotted([4, 3, 2], ["relu", "softmax"], seed=0)
    model.tag = "v1"
    model.set_private(7)                                 # (a mangled name: _Slotted__private)
    for made in (copy.copy(model), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(made) is _Slotted and made.tag == "v1" and made.private() == 7
    bare = _Slotted([4, 3, 2], ["relu", "softmax"], seed=0)
    assert not hasattr(pickle.loads(pickle.dumps(bare)), "tag")


def _read_only_round_trip(obj):
    """pickle protocol 5 with its buffers handed back as bytes: arrays arrive read-only,
    as joblib's memory maps of arrays of 1 MB or more do (loky's arguments)."""
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[bytes(buffer.raw()) for buffer in buffers])


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_a_trainer_whose_state_arrives_read_only_trains_on_exactly(optimizer):
    """A read-only optimizer state (a trainer sent to a joblib/loky worker once its state
    reached 1 MB, or loaded with mmap_mode='r') made every later fit fail ('assignment
    destination is read-only'); it goes on as the original does, bit for bit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    rule = fastbp.optimizers.Adam(0.01) if optimizer == "adam" else \
        fastbp.optimizers.SGD(0.05, momentum=0.9)
    model = fastbp.MLP([6, 8, 3], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", optimizer=rule, batch_size=16, seed=1, n_threads=1)
    trainer.partial_fit(model, X, y)
    model_copy, trainer_copy = _read_only_round_trip((model, trainer))
    for _ in range(2):
        trainer.partial_fit(model, X, y)
        trainer_copy.partial_fit(model_copy, X, y)
    np.testing.assert_array_equal(model_copy.parameter_vector(), model.parameter_vector())
    joblib = pytest.importorskip("joblib")
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trainer.joblib")
        joblib.dump((model, trainer), path)
        model_copy, trainer_copy = joblib.load(path, mmap_mode="r")
    trainer.partial_fit(model, X, y)
    trainer_copy.partial_fit(model_copy, X, y)
    np.testing.assert_array_equal(model_copy.parameter_vector(), model.parameter_vector())


def test_an_early_stopping_estimator_whose_arrays_arrive_read_only_refits_warm():
    """A warm-started refit writes early stopping's best parameters in place: where they
    arrived read-only (joblib's memory maps, as for the trainer's state) it failed."""
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 5)).astype(np.float32), rng.integers(0, 3, 120)
    estimator = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, warm_start=True,
                              max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
        copied = _read_only_round_trip(estimator)
        for refit in (estimator, copied):
            refit.set_params(max_iter=5).fit(X, y)
    np.testing.assert_array_equal(copied.coefs_[0], estimator.coefs_[0])


def test_a_header_that_names_a_key_twice_is_refused():
    """JSON keeps the last of a repeated key: a header with two "activations" loaded as
    whichever came last (docs/file-format.md: exactly those keys)."""
    text = ('{"layer_sizes": [2, 3, 1], "activations": ["relu", "identity"], '
            '"activations": ["tanh", "sigmoid"], "dtype": "float32"}')
    data = build_file(None, good_params(), header_bytes=text.encode())
    with pytest.raises(ValueError, match="the header names 'activations' twice"):
        fastbp.MLP.from_bytes(data)
    text = text.replace('"activations": ["relu", "identity"], ', "")
    assert fastbp.MLP.from_bytes(build_file(None, good_params(), header_bytes=text.encode())
                                 ).activations == ("tanh", "sigmoid")


def test_save_writes_the_parameters_from_the_model_without_a_copy(tmp_path):
    """save made three copies of the parameters before writing (the bytes, the file's
    body, the body and its checksum: 2x the parameters at the peak), so a model that had
    trained in the memory left could not be saved (an empty MemoryError). It writes them
    a piece at a time from the model now; to_bytes holds one copy, its answer."""
    model = fastbp.MLP([1000, 4000, 10], ["relu", "identity"], seed=0)
    n_bytes = model.parameter_vector().nbytes
    path = tmp_path / "large.fbp"
    tracemalloc.start()
    try:
        model.save(path)
        _, saving = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        data = model.to_bytes()
        _, encoding = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert saving < n_bytes / 8, f"save held {saving / n_bytes:.2f}x the parameters"
    assert encoding < 1.1 * n_bytes, f"to_bytes held {encoding / n_bytes:.2f}x"
    assert path.read_bytes() == data
    assert_same_model(fastbp.load(path), model)
