"""Fuzzing the paths fastbp writes (issue 14's new input families): non-regular output paths
(FIFOs with a reader, sockets, folders, links, dangling links, names up to and past the
limit) and outputs that are inputs or other outputs (the same name, a symbolic or hard link,
a path through '..'). Whatever the combination, `model.save` raises a ValueError/OSError or
writes exactly the model; the command line exits 0 or 2 without a traceback; an input is
never changed, a FIFO or socket is never replaced, and no temporary file is left."""
import contextlib
import io
import os
import socket
import stat
import subprocess

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import fastbp  # noqa: E402
from fastbp.__main__ import main  # noqa: E402

FEW = settings(max_examples=40, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
KINDS = ["new", "regular", "fifo", "socket", "folder", "symlink_to_input", "hardlink_to_input",
         "dotdot_to_input", "the_input", "dangling_link", "long_name", "too_long_name"]


class Workspace:
    """A folder with data.csv (an input), model.fbp (+ sidecar) and outputs of each kind."""

    def __init__(self, directory):
        self.directory = directory
        rng = np.random.default_rng(0)
        X = rng.normal(size=(30, 2))
        lines = ["a,b,label"] + [f"{x[0]:.3f},{x[1]:.3f},{'yes' if x.sum() > 0 else 'no'}"
                                 for x in X]
        self.data = os.path.join(directory, "data.csv")
        with open(self.data, "w") as stream:
            stream.write("\n".join(lines) + "\n")
        self.model = os.path.join(directory, "model.fbp")
        assert main(["train", self.data, "--target", "label", "--hidden", "3", "--epochs", "1",
                     "--quiet", "--output", self.model]) == 0
        self.sockets, self.readers = [], []

    def path(self, kind, index):
        base = os.path.join(self.directory, f"out{index}")
        if kind == "regular":
            with open(base, "wb") as stream:
                stream.write(b"previous")
        elif kind == "fifo":
            os.mkfifo(base)
            # a reader that drains whatever is written, so a write cannot block
            self.readers.append(subprocess.Popen(["cat", base], stdout=subprocess.DEVNULL))
        elif kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(base)
            self.sockets.append(server)
        elif kind == "folder":
            os.mkdir(base)
        elif kind == "symlink_to_input":
            os.symlink(self.data, base)
        elif kind == "hardlink_to_input":
            os.link(self.data, base)
        elif kind == "dotdot_to_input":
            os.mkdir(base)
            return os.path.join(base, "..", "data.csv")
        elif kind == "the_input":
            return self.data
        elif kind == "dangling_link":
            os.symlink(os.path.join(self.directory, f"missing{index}"), base)
        elif kind == "long_name":
            return os.path.join(self.directory, "L" * 200 + f"{index:02d}")
        elif kind == "too_long_name":
            return os.path.join(self.directory, "T" * 300)
        return base

    def inputs(self):
        return {path: open(path, "rb").read()
                for path in (self.data, self.model, self.model + ".json")}

    def close(self):
        for server in self.sockets:
            server.close()
        for reader in self.readers:
            if reader.poll() is None:
                # a FIFO nobody wrote to: open it for writing so that the reader ends
                with contextlib.suppress(OSError):
                    os.close(os.open(reader.args[1], os.O_WRONLY | os.O_NONBLOCK))
            try:
                reader.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reader.kill()
                reader.wait()

    def special_files_kept(self):
        for name in os.listdir(self.directory):
            assert not name.endswith(".tmp"), name
        for server in self.sockets:
            assert stat.S_ISSOCK(os.lstat(server.getsockname()).st_mode)
        for reader in self.readers:
            assert stat.S_ISFIFO(os.lstat(reader.args[1]).st_mode)


@pytest.fixture
def workspace(tmp_path_factory):
    def make():
        return Workspace(str(tmp_path_factory.mktemp("files")))
    return make


@FEW
@given(kind=st.sampled_from(KINDS))
def test_model_save_to_any_kind_of_path(workspace, kind):
    space = workspace()
    try:
        path = space.path(kind, 0)
        model = fastbp.MLP([2, 3, 2], ["relu", "softmax"], seed=1)
        try:
            model.save(path)
        except (ValueError, OSError) as error:
            assert str(error)
        else:
            if kind not in ("fifo",):
                assert fastbp.load(path).to_bytes() == model.to_bytes()
        space.special_files_kept()
    finally:
        space.close()


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


@FEW
@given(command=st.sampled_from(["train", "predict"]),
       output=st.sampled_from(KINDS), plot=st.sampled_from([None] + KINDS))
def test_cli_outputs_of_any_kind(workspace, command, output, plot):
    pytest.importorskip("matplotlib")
    space = workspace()
    try:
        before = space.inputs()
        output_path = space.path(output, 0)
        if command == "train":
            argv = ["train", space.data, "--target", "label", "--hidden", "3", "--epochs", "1",
                    "--quiet", "--output", output_path]
            if plot is not None:
                argv += ["--plot", space.path(plot, 1) if plot != output else output_path]
        else:
            argv = ["predict", space.model, space.data, "--output", output_path]
        status, err = run(argv)
        assert status in (0, 2), err
        assert "Traceback" not in err
        if status == 2:
            assert err.startswith(f"fastbp {command}: error: ")
        after = space.inputs()
        assert after == before
        space.special_files_kept()
    finally:
        space.close()
