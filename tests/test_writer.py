"""graphprune.ir.writer: what it refuses to write, how a set of outputs commits or leaves nothing,
how a model's data file is named and switched, signals and forked children.

Faults (full disk, kills, concurrent writers) are in test_write_faults.py.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import stat
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphprune.ir import writer
from graphprune.errors import UserError


def listing(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() if (folder / n).is_file() else b"<dir>"
            for n in sorted(os.listdir(folder))}


def assert_one_line(e: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(e.value) and str(e.value)


@pytest.fixture()
def model_in(tmp_path):
    """An input model with its data file, which no output may overwrite."""
    (tmp_path / "in.onnx").write_bytes(b"input model")
    (tmp_path / "in.onnx.data").write_bytes(b"input data")
    return [tmp_path / "in.onnx", tmp_path / "in.onnx.data"]


# ====================================================================== plain writes
def test_atomic_write_text_replaces_and_leaves_nothing_else(tmp_path):
    """A report written twice: the second replaces the first, the file gets the usual mode
    (0666 minus the umask, not mkstemp's 0600) and no staging is left."""
    p = tmp_path / "r.json"
    writer.atomic_write_text(p, "one\n")
    writer.atomic_write_text(str(p), "two\n")
    assert listing(tmp_path) == {"r.json": b"two\n"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    writer.atomic_write_bytes(p, b"\0\1")
    assert p.read_bytes() == b"\0\1"


def test_relative_target(tmp_path, monkeypatch):
    """A bare file name writes into the current folder."""
    monkeypatch.chdir(tmp_path)
    writer.atomic_write_text("r.json", "x")
    assert listing(tmp_path) == {"r.json": b"x"}


# ====================================================================== refused targets
def test_symlink_to_regular_file_is_refused(tmp_path):
    """A symlink target (to a regular file) must not be written through, nor replaced: the
    link and the file it points to stay as they were."""
    (tmp_path / "real.json").write_text("keep")
    (tmp_path / "link.json").symlink_to("real.json")
    before = listing(tmp_path)
    with pytest.raises(UserError, match="symbolic link") as e:
        writer.atomic_write_text(tmp_path / "link.json", "new")
    assert_one_line(e)
    assert listing(tmp_path) == before and (tmp_path / "link.json").is_symlink()


def test_symlink_to_the_input_model_is_refused(tmp_path, model_in):
    """`-o link` where link -> the input model: refused, the input byte-identical (also when the
    check runs up front with check_targets, as a CLI does)."""
    (tmp_path / "o.onnx").symlink_to(model_in[0])
    before = listing(tmp_path)
    with pytest.raises(UserError, match="symbolic link"):
        writer.check_targets([tmp_path / "o.onnx"], protect=model_in)
    with pytest.raises(UserError):
        with writer.OutputSet(protect=model_in) as out:
            out.add_model(tmp_path / "o.onnx", b"pruned")
    assert listing(tmp_path) == before


def test_dangling_symlink_is_refused(tmp_path):
    """A symlink to a file that does not exist yet: writing through it would create a file
    elsewhere."""
    (tmp_path / "o.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UserError, match="symbolic link"):
        writer.atomic_write_text(tmp_path / "o.json", "x")
    assert not (tmp_path / "elsewhere.json").exists()


def test_protected_input_through_relative_path_and_hard_link(tmp_path, model_in, monkeypatch):
    """The input model and its data file are protected also when named through a relative
    path, a symlinked folder or a hard link."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hard.onnx").hardlink_to(model_in[0])
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub").mkdir()
    before = listing(tmp_path)
    for target in ["in.onnx", "./in.onnx.data", "alias/in.onnx", "hard.onnx",
                   tmp_path / "sub" / ".." / "in.onnx"]:
        with pytest.raises(UserError, match="would overwrite the input") as e:
            writer.atomic_write_bytes(target, b"x", protect=model_in)
        assert_one_line(e)
    assert listing(tmp_path) == before


def test_fifo_target_is_refused_without_hanging(tmp_path):
    """A FIFO target: opening it for writing would block forever (or feed a reader); refused
    at once. The write runs in a thread so a regression fails instead of hanging."""
    fifo = tmp_path / "o.json"
    os.mkfifo(fifo)
    result: list = []

    def attempt():
        try:
            writer.atomic_write_text(fifo, "x")
            result.append("written")
        except UserError as e:
            result.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the writer before failing
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("writing to a FIFO blocked")
    assert isinstance(result[0], UserError) and "FIFO" in str(result[0])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["o.json"]


def test_dev_null_is_refused():
    """`-o /dev/null`: as root a rename would replace the device node for the whole system.
    Refused whatever the user (the check looks at the node, so the message proves it ran)."""
    with pytest.raises(UserError, match="character device"):
        writer.atomic_write_text("/dev/null", "x")
    with pytest.raises(UserError, match="character device"):
        writer.check_target("/dev/null")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_stdout_names_are_refused(tmp_path):
    """No output goes to stdout or through a descriptor link: `-`, /dev/stdout and
    /proc/self/fd/N are refused (the CLI's --json prints on stdout)."""
    with pytest.raises(UserError, match="--json"):
        writer.atomic_write_text("-", "x")
    for p in ("/dev/stdout", "/dev/stderr"):
        if os.path.lexists(p):
            with pytest.raises(UserError, match="symbolic link"):
                writer.check_target(p)
    with open(tmp_path / "held.json", "w") as f:
        with pytest.raises(UserError, match="symbolic link"):
            writer.atomic_write_text(f"/proc/self/fd/{f.fileno()}", "x")
    assert (tmp_path / "held.json").read_text() == ""


def test_socket_target_is_refused(tmp_path):
    """A Unix socket at the target path."""
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tmp_path / "o.json"))
        with pytest.raises(UserError, match="socket"):
            writer.atomic_write_text(tmp_path / "o.json", "x")
    finally:
        s.close()


def test_directory_target_is_refused(tmp_path):
    """A folder at the target path (also through a symlink to it) is not replaced."""
    (tmp_path / "o.onnx").mkdir()
    (tmp_path / "o.onnx" / "keep").write_text("k")
    with pytest.raises(UserError, match="is a folder"):
        writer.atomic_write_text(tmp_path / "o.onnx", "x")
    assert (tmp_path / "o.onnx" / "keep").read_text() == "k"


def test_trailing_separator_is_refused(tmp_path):
    """`-o newdir/` must not write a file named `newdir`; nor `existing/`, `.` or `..`."""
    (tmp_path / "existing").mkdir()
    for p in (f"{tmp_path}/newdir/", f"{tmp_path}/existing/", f"{tmp_path}/.",
              f"{tmp_path}/..", ""):
        with pytest.raises(UserError, match="names a folder") as e:
            writer.atomic_write_text(p, "x")
        assert_one_line(e)
    assert sorted(os.listdir(tmp_path)) == ["existing"]
    assert os.listdir(tmp_path / "existing") == []


def test_missing_or_non_folder_parent(tmp_path):
    """A target in a folder that does not exist or is a file: one line, nothing created."""
    (tmp_path / "file").write_text("f")
    with pytest.raises(UserError, match="does not exist"):
        writer.atomic_write_text(tmp_path / "nope" / "r.json", "x")
    with pytest.raises(UserError, match="is not a folder"):
        writer.atomic_write_text(tmp_path / "file" / "r.json", "x")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_create_folders(tmp_path):
    """`create_folders=True` (sweep --out DIR) makes a missing folder, and still refuses a
    file in the way."""
    with writer.OutputSet(create_folders=True) as out:
        out.add_text(tmp_path / "a" / "b" / "sweep.json", "{}")
    assert (tmp_path / "a" / "b" / "sweep.json").read_text() == "{}"
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError):
        with writer.OutputSet(create_folders=True) as out:
            out.add_text(tmp_path / "f" / "sweep.json", "{}")


def test_two_targets_that_are_the_same_file(tmp_path, monkeypatch):
    """Two outputs of one command naming the same file (relative and absolute, through a
    symlinked folder, or hard links): refused, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a.json").write_text("a")
    (tmp_path / "b.json").hardlink_to(tmp_path / "a.json")
    before = listing(tmp_path)
    for pair in (("r.json", tmp_path / "r.json"), ("r.json", "alias/r.json"),
                 ("a.json", "b.json")):
        with pytest.raises(UserError, match="same file"):
            writer.check_targets(pair)
        with pytest.raises(UserError, match="same file"):
            with writer.OutputSet() as out:
                out.add_text(pair[0], "1")
                out.add_text(pair[1], "2")
        assert listing(tmp_path) == before


# ====================================================================== sets
def test_failure_before_commit_replaces_nothing(tmp_path):
    """An error while rendering the third artifact: the first two (already staged) are not
    committed, the previous outputs stay, the staging folder is gone."""
    for n in ("o.onnx", "r.json"):
        (tmp_path / n).write_text("previous")
    before = listing(tmp_path)

    def boom(f):
        f.write(b"half")
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError, match="render failed"):
        with writer.OutputSet() as out:
            out.add_model(tmp_path / "o.onnx", b"new model")
            out.add_text(tmp_path / "r.json", "new report")
            out.add_stream(tmp_path / "r.html", boom)
    assert listing(tmp_path) == before


def test_ctrl_c_while_rendering_replaces_nothing(tmp_path):
    """KeyboardInterrupt in the middle of a streamed file."""
    (tmp_path / "o.onnx").write_text("previous")
    before = listing(tmp_path)

    def interrupted(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with writer.OutputSet() as out:
            d = out.add_data(tmp_path / "o.onnx", interrupted)
            out.add_model(tmp_path / "o.onnx", b"m", d)
    assert listing(tmp_path) == before


def test_a_caught_failure_cannot_commit_the_rest(tmp_path):
    """A caller that catches an artifact's error and carries on must not commit the others:
    a failed add aborts the whole set."""
    with writer.OutputSet() as out:
        out.add_text(tmp_path / "r.json", "report")
        with pytest.raises(UserError):
            out.add_text(tmp_path / "nope" / "r.html", "html")
        with pytest.raises(RuntimeError, match="aborted"):
            out.add_text(tmp_path / "r.csv", "csv")
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError, match="aborted"):
        out.commit()


def test_data_file_without_its_model_is_a_bug(tmp_path):
    """A staged data file whose model was never staged would be an orphan: commit refuses
    (RuntimeError, a bug in the caller) and writes nothing."""
    with pytest.raises(RuntimeError, match="without its model"):
        with writer.OutputSet() as out:
            out.add_data(tmp_path / "o.onnx", lambda f: f.write(b"d"))
            out.add_text(tmp_path / "r.json", "r")
    assert os.listdir(tmp_path) == []


def test_target_changed_into_a_symlink_before_commit(tmp_path):
    """The target is checked again at commit: a symlink planted while the files were being
    rendered is refused, nothing replaced."""
    (tmp_path / "real").write_text("keep")
    with pytest.raises(UserError, match="symbolic link"):
        with writer.OutputSet() as out:
            out.add_text(tmp_path / "a.json", "a")
            out.add_text(tmp_path / "r.json", "r")
            (tmp_path / "r.json").symlink_to("real")
    assert sorted(os.listdir(tmp_path)) == ["r.json", "real"]
    assert (tmp_path / "real").read_text() == "keep"


# ====================================================================== model + data
def _onnx_model(location: str | None, w: np.ndarray) -> bytes:
    t = TensorProto()
    t.name, t.data_type = "W", TensorProto.FLOAT
    t.dims.extend(w.shape)
    if location is None:
        t.raw_data = w.tobytes()
    else:
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(w.shape))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(w.shape))],
                          [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def write_pair(folder: Path, w: np.ndarray, protect=(), name="o.onnx",
               check_staged=False) -> writer.DataFile:
    """Stream w as the data file, then stage the model referencing it, as save_model will."""
    with writer.OutputSet(protect=protect) as out:
        d = out.add_data(folder / name, lambda f: [f.write(memoryview(w)), f.tell()][1])
        out.add_model(folder / name, _onnx_model(d.name, w), d)
        if check_staged:  # the staged pair, read where it lies, with its final names
            staged = out.temp_path(folder / name)
            assert staged.parent == d.temp_path.parent != folder
            sess = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
            y = sess.run(None, {"X": np.zeros_like(w)})[0]
            assert np.array_equal(y, w)
            assert not (folder / d.name).exists()
    return d


def test_data_file_named_by_content_and_switched(tmp_path):
    """The data file is `<model>.<sha256[:16]>.data`; a new pair replaces the old one and the
    old data file goes; the staged pair can be validated before commit."""
    w1 = np.arange(1000, dtype=np.float32)
    d1 = write_pair(tmp_path, w1, check_staged=True)
    assert d1.name == f"o.onnx.{hashlib.sha256(w1.tobytes()).hexdigest()[:16]}.data"
    assert d1.size == w1.nbytes and d1.result == w1.nbytes
    assert sorted(os.listdir(tmp_path)) == ["o.onnx", d1.name]
    w2 = -w1
    d2 = write_pair(tmp_path, w2)
    assert d2.name != d1.name and sorted(os.listdir(tmp_path)) == ["o.onnx", d2.name]
    m = onnx.load(str(tmp_path / "o.onnx"))
    assert np.array_equal(onnx.numpy_helper.to_array(m.graph.initializer[0]), w2)


def test_same_model_gives_byte_identical_files(tmp_path):
    """Same weights: the same names and bytes in a fresh folder and when written again over
    itself (no alternating names, nothing else left)."""
    w = np.linspace(0, 1, 500, dtype=np.float32)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_pair(tmp_path / "a", w)
    write_pair(tmp_path / "b", w)
    first = listing(tmp_path / "a")
    assert first == listing(tmp_path / "b")
    write_pair(tmp_path / "a", w)
    assert listing(tmp_path / "a") == first


def test_inline_model_removes_old_data_files(tmp_path):
    """A model now keeping its weights inline replaces a pair: its old data file (and one of
    the fixed `o.onnx.data` name older versions wrote) are removed; files of other models and
    other names stay."""
    w = np.ones(10, np.float32)
    d = write_pair(tmp_path, w)
    keep = {"o.onnx.notes.data": b"n", "other.onnx.0123456789abcdef.data": b"o",
            "o.onnx.0123456789abcdef.data.bak": b"b"}
    for n, b in keep.items():
        (tmp_path / n).write_bytes(b)
    (tmp_path / "o.onnx.data").write_bytes(b"legacy")
    with writer.OutputSet() as out:
        out.add_model(tmp_path / "o.onnx", _onnx_model(None, w))
    names = set(os.listdir(tmp_path))
    assert d.name not in names and "o.onnx.data" not in names
    assert names == {"o.onnx"} | set(keep)


def test_protected_data_files_are_never_removed_or_replaced(tmp_path):
    """The input's data file named like the output's (the input is a copy of an earlier
    output's model): never removed after the switch; and a new data file that would land on a
    protected one is refused."""
    w = np.ones(10, np.float32)
    d = write_pair(tmp_path, w)
    (tmp_path / "in.onnx").write_bytes(_onnx_model(d.name, w))  # shares o.onnx's data file
    protect = [tmp_path / "in.onnx", tmp_path / d.name]
    with pytest.raises(UserError, match="would overwrite the input"):
        write_pair(tmp_path, w, protect=protect)
    write_pair(tmp_path, 2 * w, protect=protect)
    assert (tmp_path / d.name).exists()
    sess = ort.InferenceSession(str(tmp_path / "in.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"X": np.zeros(10, np.float32)})[0].tolist() == [1.0] * 10


def test_data_sink_accepts_numpy_views(tmp_path):
    """The data stream takes what the model saver writes: bytes, memoryviews of arrays (also
    non-contiguous ones), and reports the offset with tell()."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    offsets = []

    def stream(f):
        for chunk in (b"\0" * 3, memoryview(a), a[:, ::2], a.T):
            f.write(chunk)
            offsets.append(f.tell())

    with writer.OutputSet() as out:
        d = out.add_data(tmp_path / "o.onnx", stream)
        out.add_model(tmp_path / "o.onnx", b"m", d)
    data = (tmp_path / d.name).read_bytes()
    assert data == b"\0" * 3 + a.tobytes() + a[:, ::2].tobytes() + a.T.tobytes()
    assert offsets == [3, 51, 75, 123]


# ====================================================================== stale staging
def test_stale_staging_is_swept_and_live_staging_kept(tmp_path):
    """Staging left by a killed process (its flock is free) is removed by the next write into
    the folder; staging another live writer holds locked is not touched, nor other dot
    files."""
    stale = tmp_path / f"{writer.STAGE_PREFIX}abcdefgh{writer.STAGE_SUFFIX}"
    live = tmp_path / f"{writer.STAGE_PREFIX}livelive{writer.STAGE_SUFFIX}"
    other = tmp_path / ".graphprune-notours.tmp"
    for d in (stale, live, other):
        d.mkdir()
        (d / "o.onnx").write_bytes(b"partial")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer.atomic_write_text(tmp_path / "r.json", "x")
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "r.json"])
    finally:
        os.close(fd)


# ====================================================================== signals and fork
@pytest.fixture()
def handlers():
    restore = writer.install_signal_handlers()
    try:
        yield
    finally:
        restore()


def test_sigterm_becomes_terminated_and_cleans_up(tmp_path, handlers):
    """SIGTERM while rendering: `Terminated` (exit code 143) unwinds the set, nothing is
    replaced, no staging left."""
    (tmp_path / "o.onnx").write_text("previous")

    def killed(f):
        f.write(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"never")

    with pytest.raises(writer.Terminated) as e:
        with writer.OutputSet() as out:
            out.add_stream(tmp_path / "o.onnx", killed)
    assert e.value.exit_code == 143 and not isinstance(e.value, Exception)
    assert listing(tmp_path) == {"o.onnx": b"previous"}


def test_signal_during_commit_is_held_until_it_is_done(tmp_path, monkeypatch):
    """Ctrl-C between the data file's rename and the model's: the commit completes (the new
    pair is whole), then KeyboardInterrupt is raised."""
    w = np.ones(4, np.float32)
    write_pair(tmp_path, w)

    def hook(step):
        if step.startswith("renamed:") and step.endswith(".data"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(writer.steps, "_hook", hook)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            write_pair(tmp_path, 3 * w)
    finally:
        signal.signal(signal.SIGINT, old)
    monkeypatch.setattr(writer.steps, "_hook", None)
    m = onnx.load(str(tmp_path / "o.onnx"))
    assert np.array_equal(onnx.numpy_helper.to_array(m.graph.initializer[0]), 3 * w)
    assert len(os.listdir(tmp_path)) == 2


def _reap(pid: int, timeout: float = 10.0) -> int:
    """The child's exit code; a child still running after `timeout` is killed and fails the
    test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child did not end")


def test_forked_child_does_not_clean_up_the_parents_files(tmp_path, handlers):
    """A child made with os.fork (as ONNX Runtime validation runs are) that fails inside the
    parent's `with OutputSet()` must not remove the parent's staging, nor commit; a SIGTERM to
    such a child just ends it. The parent then commits normally."""
    with writer.OutputSet() as out:
        staged = out.add_text(tmp_path / "r.json", "parent")
        pid = os.fork()
        if pid == 0:
            try:
                try:
                    out.commit()
                except RuntimeError:
                    pass
                with out:
                    raise ValueError("child fails inside the parent's set")
            except BaseException:
                pass
            finally:
                os._exit(7)
        assert _reap(pid) == 7
        assert staged.exists() and not (tmp_path / "r.json").exists()

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                with out:
                    os.write(w, b"!")  # past the fork handlers: a signal now is not lost
                    signal.pause()
            finally:
                os._exit(8)
        os.close(w)
        assert os.read(r, 1) == b"!"
        os.close(r)
        os.kill(pid, signal.SIGTERM)
        assert _reap(pid) == -signal.SIGTERM
        assert staged.exists()
    assert listing(tmp_path) == {"r.json": b"parent"}


def test_install_signal_handlers_keeps_ignored_signals(handlers):
    """A signal the process ignores (SIGHUP under nohup) stays ignored; SIGTERM is ours."""
    assert signal.getsignal(signal.SIGTERM) is writer.signals._on_signal
    restore = writer.install_signal_handlers()
    restore()
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        restore = writer.install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        restore()
    finally:
        signal.signal(signal.SIGHUP, old)
