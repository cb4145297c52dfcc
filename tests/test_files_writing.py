"""What saving and loading do with paths that are not plain new files (issue 14, defects 2,
7, 11, 12 and the FIFO of 13): a FIFO or a character device is written into, never replaced;
a folder, a block device or a socket is refused; a replaced file keeps its mode and owner; any
valid name can be saved; a file's claimed size cannot make load allocate or read more than the
file really holds; a model can be read from a FIFO."""
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _files, _format

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def model(seed=0):
    return fastbp.MLP([5, 16, 3], ["relu", "softmax"], seed=seed)


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def read_fifo_while(path, action, timeout=20):
    """The bytes a `cat` of the FIFO at `path` receives while `action()` runs."""
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    try:
        action()
        output, _ = reader.communicate(timeout=timeout)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    return output


# ---------------------------------------------------------------- non-regular targets

def test_saving_into_a_fifo_writes_through_it_and_keeps_it(tmp_path):
    fifo = tmp_path / "pipe.fbp"
    os.mkfifo(fifo)
    net = model()
    received = read_fifo_while(fifo, lambda: net.save(fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == net.to_bytes()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not IS_ROOT, reason="creating a device node needs root (the FIFO test "
                    "covers the same path for other users)")
def test_saving_onto_a_character_device_writes_into_it(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))     # what /dev/null is
    model().save(null)
    found = os.lstat(null)
    assert stat.S_ISCHR(found.st_mode) and found.st_rdev == os.makedev(1, 3)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not IS_ROOT, reason="creating a device node needs root")
def test_saving_onto_a_block_device_is_refused(tmp_path):
    disk = tmp_path / "loop"
    os.mknod(disk, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    with pytest.raises(ValueError, match="block device"):
        model().save(disk)
    assert stat.S_ISBLK(os.lstat(disk).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["loop"]


def test_saving_onto_a_socket_or_a_folder_is_refused(tmp_path):
    path = tmp_path / "s.fbp"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(ValueError, match="socket"):
            model().save(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder"):
        model().save(tmp_path / "folder")
    assert leftovers(tmp_path) == []


def test_onnx_export_and_checkpoints_write_through_the_same_function(tmp_path, monkeypatch):
    """Every writer goes through _files.write_files (so each gets the guards above)."""
    calls = []
    real = _files.write_files
    monkeypatch.setattr(_files, "write_files", lambda items: calls.append(
        [os.fspath(path) for path, _ in items]) or real(items))
    net = model()
    net.save(tmp_path / "a.fbp")
    rng = np.random.default_rng(0)
    fastbp.Trainer("cce", epochs=1, batch_size=10).fit(
        net, rng.normal(size=(20, 5)), rng.integers(0, 3, 20),
        callbacks=[fastbp.callbacks.ModelCheckpoint(tmp_path / "b.fbp", monitor="loss")])
    # (the first fit of a shape in the process also caches its measured thread count,
    # through the same function, in the run's own cache folder)
    cache = os.environ.get("FASTBP_CACHE_DIR", "\0")
    mine = [paths for paths in calls if not paths[0].startswith(cache)]
    assert mine == [[str(tmp_path / "a.fbp")], [str(tmp_path / "b.fbp")]]


# ---------------------------------------------------------------- mode and owner

def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "private.fbp"
    old_umask = os.umask(0o022)
    try:
        model(1).save(path)
        os.chmod(path, 0o600)
        model(2).save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        os.chmod(path, 0o640)
        model(3).save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        fresh = tmp_path / "fresh.fbp"
        model(3).save(fresh)                     # a new file: 0o666 less the umask
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644
    finally:
        os.umask(old_umask)
    assert fastbp.load(path).to_bytes() == model(3).to_bytes()


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_a_replaced_file_keeps_its_owner_and_group(tmp_path):
    path = tmp_path / "theirs.fbp"
    model(1).save(path)
    os.chown(path, 4321, 8765)
    os.chmod(path, 0o600)
    model(2).save(path)
    found = os.stat(path)
    assert (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode)) == (4321, 8765, 0o600)


# ---------------------------------------------------------------- long names

@pytest.mark.parametrize("name", ["m" * 255, "m" * 234, "é" * 127 + "x", "é" * 120 + ".fbp"])
def test_any_valid_file_name_can_be_saved(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    path = tmp_path / name
    model(1).save(path)
    model(2).save(path)                          # and replaced
    assert fastbp.load(path).to_bytes() == model(2).to_bytes()
    assert leftovers(tmp_path) == []


def test_temporary_names_are_short_whatever_the_target(tmp_path):
    for name in ("a", "m" * 255, "é" * 127):
        temporary = os.path.basename(_files.temporary_name(str(tmp_path / name)))
        assert len(os.fsencode(temporary)) <= 38 and temporary.endswith(".tmp")
        assert temporary.startswith(".")


def test_a_name_too_long_for_the_file_system_fails_before_writing(tmp_path):
    with pytest.raises(OSError, match="too long"):
        model().save(tmp_path / ("m" * 256))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- claimed sizes

def model_file_header(layer_sizes, dtype="float32"):
    header = ('{"layer_sizes": %s, "activations": %s, "dtype": "%s"}' % (
        list(layer_sizes), ["identity"] * (len(layer_sizes) - 1), dtype)).replace("'", '"')
    raw = header.encode()
    return b"\x89FASTBP\n" + struct.pack("<II", 1, len(raw)) + raw


def sparse_model_file(path, layer_sizes, checksum=0):
    """A file whose size is what the header claims, nearly all of it a hole."""
    start = model_file_header(layer_sizes)
    total = len(start) + _format.parameter_count(layer_sizes) * 4 + 4
    with open(path, "wb") as stream:
        stream.write(start)
        stream.seek(total - 4)
        stream.write(struct.pack("<I", checksum))
    return start, total


def test_a_sparse_hostile_file_is_refused_without_a_large_allocation(tmp_path):
    path = tmp_path / "hostile.fbp"
    _, total = sparse_model_file(path, [8192, 8192])          # 256 MiB claimed
    assert os.stat(path).st_size == total
    assert os.stat(path).st_blocks * 512 < 1 << 20              # hardly anything on disk
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(ValueError, match="checksum"):
            fastbp.load(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert elapsed < 5


def test_a_sparse_file_claiming_more_than_the_machines_memory_is_refused_at_once(tmp_path):
    """A 4 KiB file with holes whose header claims 2^20 x 2^20 float64 weights (8 TiB),
    its size what that calls for: the checksum was checked by reading the holes through,
    0.4 GB/s here (hours), before it could be refused; no such model could have loaded."""
    sizes = [1 << 20, 1 << 20]
    start = model_file_header(sizes, "float64")
    total = len(start) + _format.parameter_count(sizes) * 8 + 4
    path = tmp_path / "huge.fbp"
    with open(path, "wb") as stream:
        stream.write(start)
        try:
            stream.truncate(total)
        except OSError as error:     # (a file system without files that large)
            pytest.skip(f"no {total} byte file here: {error}")
    # (in a child: before, it read for hours)
    code = ("import sys, fastbp\ntry:\n    fastbp.load(sys.argv[1])\n"
            "except ValueError as error:\n    print(error)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("fastbp.load read the holes of an 8 TiB claim for over 60 s")
    assert re.search(r"the file's parameters would need 8,192\.0 GiB, more than this "
                     r"machine's .* of memory", done.stdout), (done.stdout, done.stderr)


def test_a_sparse_file_with_the_right_checksum_loads(tmp_path):
    """A file with holes may be a real model (zeros stored as a hole): it loads."""
    import zlib
    sizes = [300, 500, 7]
    start = model_file_header(sizes)
    n_bytes = _format.parameter_count(sizes) * 4
    path = tmp_path / "zeros.fbp"
    sparse_model_file(path, sizes, zlib.crc32(b"\0" * n_bytes, zlib.crc32(start)))
    loaded = fastbp.load(path)
    assert loaded.layer_sizes == (300, 500, 7)
    assert not loaded._params.any()
    assert loaded.to_bytes() == path.read_bytes()


def test_from_bytes_checks_the_claimed_size_against_the_bytes_given():
    data = model_file_header([8192, 8192]) + bytes(4096)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="bytes where its layer sizes need"):
            fastbp.MLP.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ---------------------------------------------------------------- reading a FIFO

def test_a_model_is_read_from_a_fifo(tmp_path):
    net = model(5)
    source = tmp_path / "m.fbp"
    net.save(source)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(source), str(fifo)])
    try:
        loaded = fastbp.load(fifo)
        assert writer.wait(timeout=20) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert loaded.to_bytes() == net.to_bytes()


def test_a_damaged_model_from_a_fifo_names_the_problem(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = model().to_bytes()
    cut = len(data) - 50
    writer = subprocess.Popen(["sh", "-c", 'head -c %d > "$1"' % cut, "sh", str(fifo)],
                              stdin=subprocess.PIPE)
    try:
        writer.stdin.write(data)
        writer.stdin.close()
        with pytest.raises(ValueError, match=f"{cut} bytes where its layer sizes need"):
            fastbp.load(fifo)
    finally:
        writer.wait(timeout=20)


def test_a_checkpoint_onto_a_folder_or_socket_fails_before_training(tmp_path):
    net = model()
    before = net.to_bytes()
    (tmp_path / "folder").mkdir()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 5)), rng.integers(0, 3, 20)
    for path, error in ((tmp_path / "folder", ValueError), (tmp_path / ("m" * 256), OSError)):
        checkpoint = fastbp.callbacks.ModelCheckpoint(path, monitor="loss")
        with pytest.raises(error):
            fastbp.Trainer("cce", epochs=2, batch_size=10).fit(net, X, y,
                                                                callbacks=[checkpoint])
        assert net.to_bytes() == before and checkpoint.saved_epochs == []


def test_a_path_through_a_missing_folder_is_refused_as_open_would(tmp_path, monkeypatch):
    """"missing/../m.fbp" names nothing open() can write (the folder "missing" is looked up
    first): it was written as ./m.fbp (realpath drops ".."), and "missing/.." failed on the
    temporary's name after writing it. Refused, nothing written; through a folder that
    exists the same path is written where it says."""
    monkeypatch.chdir(tmp_path)
    model = fastbp.MLP([2, 2], ["identity"], seed=0)
    for path in ("missing/../m.fbp", "missing/.."):
        with pytest.raises(FileNotFoundError, match="folder missing"):
            model.save(path)
        with pytest.raises(FileNotFoundError):
            open(path, "wb")
    assert os.listdir(tmp_path) == []
    os.mkdir("there")
    with pytest.raises(ValueError, match="it is a folder"):
        model.save("there/..")
    model.save("there/../m.fbp")
    assert sorted(os.listdir(tmp_path)) == ["m.fbp", "there"]
    np.testing.assert_array_equal(fastbp.load("m.fbp").parameter_vector(),
                                  model.parameter_vector())
