"""graphprune.ir.writer under faults: a full disk, I/O errors, a read-only file system, a writer
killed (SIGKILL, SIGTERM, SIGINT) between any two steps of a model + data file switch, and two
processes writing the same output at once.

The killed writers run in child processes that load only `graphprune.ir.writer` (no onnx, so each
starts in milliseconds) and stop at a named step through the writer's test hook; the checks load
the result with onnx and run it in ONNX Runtime.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphprune
from graphprune.ir import writer
from graphprune.errors import UserError

PKG = str(Path(graphprune.__file__).parent)
N = 1 << 16  # float32 weights: a 256 KiB data file, streamed in 16 chunks
CHUNK = 16 << 10
OPSET = 17

CHILD = r'''
import json, os, signal, sys, time, types
cfg = json.load(open(sys.argv[1]))
for name, sub in (("graphprune", ""), ("graphprune.ir", "ir")):
    pkg = types.ModuleType(name)  # the writer alone: no onnx, no numpy
    pkg.__path__ = [os.path.join(cfg["pkg"], sub)]
    sys.modules[name] = pkg
from graphprune.ir import writer

signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
writer.install_signal_handlers()
pause = cfg.get("pause")


def hook(step):
    if step == pause:
        os.write(1, ("paused " + step + "\n").encode())
        os.read(0, 1)  # the parent sends the signal, then releases us


writer.set_step_hook(hook)


def stream(f):
    with open(cfg["source"], "rb") as src:
        i = 0
        while True:
            b = src.read(cfg["chunk"])
            if not b:
                break
            f.write(b)
            writer.steps.step("chunk:%d" % i)
            i += 1
            if cfg["sleep"]:
                time.sleep(cfg["sleep"])


try:
    if cfg.get("wait_go"):
        os.read(0, 1)
    os.write(1, b"ready\n")
    with writer.OutputSet(protect=cfg["protect"]) as out:
        d = out.add_data(cfg["model"], stream)
        assert d.name == cfg["data_name"], d.name
        with open(cfg["model_bytes"], "rb") as f:
            out.add_model(cfg["model"], f.read(), d)
        out.add_text(cfg["report"], cfg["report_text"])
except writer.Terminated as e:
    sys.exit(e.exit_code)
except KeyboardInterrupt:
    sys.exit(130)
os.write(1, b"done\n")
'''


# ====================================================================== models
def _model_bytes(location: str, n: int = N) -> bytes:
    w = TensorProto()
    w.name, w.data_type = "W", TensorProto.FLOAT
    w.dims.append(n)
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m.SerializeToString()


class Version:
    """One model + data pair to write at `o.onnx`: weights, data bytes, model bytes."""

    def __init__(self, root: Path, tag: str, weights: np.ndarray):
        self.tag, self.weights = tag, weights.astype(np.float32)
        self.data = self.weights.tobytes()
        self.data_name = writer.data_file_name("o.onnx", hashlib.sha256(self.data).hexdigest())
        self.model = _model_bytes(self.data_name)
        self.report = json.dumps({"version": tag}) + "\n"
        self.source = root / f"{tag}.bin"
        self.source.write_bytes(self.data)
        self.model_file = root / f"{tag}.model"
        self.model_file.write_bytes(self.model)

    def write(self, folder: Path, protect=()) -> None:
        """In-process, as a command would."""
        with writer.OutputSet(protect=protect) as out:
            d = out.add_data(folder / "o.onnx", lambda f: f.write(self.data))
            assert d.name == self.data_name
            out.add_model(folder / "o.onnx", self.model, d)
            out.add_text(folder / "o.json", self.report)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    base = np.arange(N, dtype=np.float32)
    vs = {"old": Version(root, "old", base), "new": Version(root, "new", 2 * base + 1),
          "third": Version(root, "third", -base)}
    (root / "child.py").write_text(CHILD)
    return root, vs


def _input_pair(folder: Path) -> list[Path]:
    data = (np.arange(N, dtype=np.float32) % 7).tobytes()
    (folder / "in.onnx.data").write_bytes(data)
    (folder / "in.onnx").write_bytes(_model_bytes("in.onnx.data"))
    return [folder / "in.onnx", folder / "in.onnx.data"]


def live_version(folder: Path, vs: dict) -> str:
    """Which version `o.onnx` is: it must load with its data and run in ONNX Runtime, and its
    output must be that version's; its data file must be that version's content-named file."""
    m = onnx.load(str(folder / "o.onnx"))  # with its external data
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    sess = ort.InferenceSession(str(folder / "o.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"X": np.ones(N, np.float32)})[0]
    for tag, v in vs.items():
        if np.array_equal(w, v.weights):
            assert np.array_equal(y, v.weights + 1)
            assert (folder / v.data_name).read_bytes() == v.data
            return tag
    raise AssertionError("o.onnx holds weights of no version written")


def leftovers(folder: Path, tag: str, vs: dict) -> set[str]:
    """Names in `folder` besides the input pair and the complete `tag` output."""
    expected = {"in.onnx", "in.onnx.data", "o.onnx", "o.json", vs[tag].data_name}
    return set(os.listdir(folder)) - expected


# ====================================================================== child processes
class Child:
    def __init__(self, root: Path, folder: Path, v: Version, protect, pause=None,
                 sleep=0.0, wait_go=False):
        cfg = {"pkg": PKG, "source": str(v.source), "chunk": CHUNK, "sleep": sleep,
               "model": str(folder / "o.onnx"), "data_name": v.data_name,
               "model_bytes": str(v.model_file), "report": str(folder / "o.json"),
               "report_text": v.report, "protect": [str(p) for p in protect], "pause": pause,
               "wait_go": wait_go}
        path = folder.parent / f"{folder.name}.{os.getpid()}.{id(self)}.json"
        path.write_text(json.dumps(cfg))
        self.p = subprocess.Popen([sys.executable, "-S", str(root / "child.py"), str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, bufsize=0)
        self._buf = b""

    def line(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.p.stdout], [], [], max(left, 0))
            if not r:
                self.p.kill()
                raise AssertionError("the child did not answer in time")
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                err = self.p.stderr.read().decode(errors="replace")
                raise AssertionError(f"the child ended early: {err[-2000:]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self) -> None:
        try:
            self.p.stdin.write(b"x")
        except (BrokenPipeError, OSError):
            pass

    def wait(self, timeout: float = 20.0) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError("the child hung")
        self.stderr = self.p.stderr.read().decode(errors="replace")
        self.finished = b"done" in self._buf + self.p.stdout.read()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()
        return rc


def _case_folder(tmp_path: Path, vs: dict) -> tuple[Path, list[Path], dict[Path, bytes]]:
    folder = tmp_path / "out"
    folder.mkdir()
    protect = _input_pair(folder)
    vs["old"].write(folder, protect)
    return folder, protect, {p: p.read_bytes() for p in protect}


# The steps of writing the new pair over the old one, in order. DATA / OLD stand for the new
# and the old data file's names. A signal at one of the last five lands inside the commit.
STEPS = ["stage", "chunk:0", "chunk:9", "written:DATA", "written:o.onnx", "written:o.json",
         "locked", "renamed:DATA", "renamed:o.onnx", "renamed:o.json", "removed:OLD",
         "committed"]
IN_COMMIT = STEPS.index("locked")
MODEL_SWITCHED = STEPS.index("renamed:o.onnx")
EXIT = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 130, signal.SIGKILL: -9}


def _check_after_kill(folder, protect, before, vs, sig, rc, expect=None) -> str:
    """The output is one complete pair; the input is untouched; temporary files are gone
    after SIGTERM/SIGINT, and after SIGKILL only hidden staging folders and unreferenced data
    files of the target are left, which the next write removes."""
    assert rc == EXIT[sig], rc
    assert {p: p.read_bytes() for p in protect} == before, "the input changed"
    tag = live_version(folder, vs)
    if expect is not None:
        assert tag == expect
    assert json.loads((folder / "o.json").read_text())["version"] in ("old", "new")
    extra = leftovers(folder, tag, vs)
    if sig != signal.SIGKILL:
        assert not extra, extra
        return tag
    for n in extra:
        staging = n.startswith(".") and n.endswith(".tmp")
        stale_data = n in (vs["old"].data_name, vs["new"].data_name)
        assert staging or stale_data, n
    vs["third"].write(folder, protect)
    assert live_version(folder, vs) == "third"
    assert not leftovers(folder, "third", vs), "the next write left the killed one's files"
    assert {p: p.read_bytes() for p in protect} == before
    return tag


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["KILL", "TERM", "INT"])
@pytest.mark.parametrize("step", STEPS)
def test_kill_between_steps_leaves_one_complete_pair(tmp_path, versions, step, sig):
    """A kill at any instant of a model + data switch (notably between the data file's rename
    and the model's) must leave the old complete pair or the new one, never the old model with
    new data, and never touch the input. SIGTERM/SIGINT before the commit replace nothing and
    leave no temporary file; inside the commit they are held until it is done."""
    root, vs = versions
    folder, protect, before = _case_folder(tmp_path, vs)
    pause = step.replace("DATA", vs["new"].data_name).replace("OLD", vs["old"].data_name)
    c = Child(root, folder, vs["new"], protect, pause=pause)
    assert c.line() == "ready"
    assert c.line() == f"paused {pause}"
    if step == "renamed:DATA":  # the kill lands exactly between the two renames
        assert (folder / vs["new"].data_name).exists()
        assert live_version(folder, vs) == "old"
    os.kill(c.p.pid, sig)
    c.send()
    rc = c.wait()
    i = STEPS.index(step)
    if sig == signal.SIGKILL:
        expect = "new" if i >= MODEL_SWITCHED else "old"
    else:
        expect = "new" if i >= IN_COMMIT else "old"
    _check_after_kill(folder, protect, before, vs, sig, rc, expect)


@pytest.mark.parametrize("seed", range(6))
def test_kill_at_random_instants(tmp_path, versions, seed):
    """Kills at instants no hook chose (mostly SIGKILL) still leave one complete pair."""
    root, vs = versions
    rng = random.Random(seed)
    sig = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGINT,
           signal.SIGKILL][seed]
    folder, protect, before = _case_folder(tmp_path, vs)
    c = Child(root, folder, vs["new"], protect, sleep=0.002)
    assert c.line() == "ready"
    time.sleep(rng.uniform(0, 0.06))
    os.kill(c.p.pid, sig)
    rc = c.wait()
    if c.finished:  # it was done before the signal came
        assert live_version(folder, vs) == "new" and not leftovers(folder, "new", vs)
        return
    _check_after_kill(folder, protect, before, vs, sig, rc)


def test_two_processes_writing_the_same_output(tmp_path, versions):
    """Two processes writing the same model + data + report at once: each stages its own
    files, commits are serialized, the result is one complete set (model, data file and report
    of the same writer) and nothing else is left."""
    root, vs = versions
    folder, protect, before = _case_folder(tmp_path, vs)
    for _ in range(4):
        kids = [Child(root, folder, vs[t], protect, wait_go=True, sleep=0.001)
                for t in ("new", "third")]
        for k in kids:
            k.send()
        for k in kids:
            assert k.line() == "ready"
        for k in kids:
            assert k.wait() == 0, k.stderr
        tag = live_version(folder, vs)
        assert json.loads((folder / "o.json").read_text())["version"] == tag
        assert not leftovers(folder, tag, vs)
    assert {p: p.read_bytes() for p in protect} == before


def test_interleaved_writers_last_commit_wins(tmp_path, versions):
    """A writer that staged everything, then waited while another committed, commits a
    complete pair of its own and removes the other's data file."""
    root, vs = versions
    folder, protect, _ = _case_folder(tmp_path, vs)
    slow = Child(root, folder, vs["new"], protect, pause="written:o.json")
    assert slow.line() == "ready"
    assert slow.line() == "paused written:o.json"
    fast = Child(root, folder, vs["third"], protect)
    assert fast.line() == "ready"
    assert fast.wait() == 0, fast.stderr
    assert live_version(folder, vs) == "third"
    slow.send()
    assert slow.wait() == 0, slow.stderr
    assert live_version(folder, vs) == "new"
    assert json.loads((folder / "o.json").read_text())["version"] == "new"
    assert not leftovers(folder, "new", vs)


def test_writer_waits_for_a_commit_in_progress(tmp_path, versions):
    """A writer arriving while another holds the folder's lock (mid-commit) waits for it
    instead of mixing its renames into the other's."""
    root, vs = versions
    folder, protect, _ = _case_folder(tmp_path, vs)
    first = Child(root, folder, vs["new"], protect, pause="renamed:" + vs["new"].data_name)
    assert first.line() == "ready"
    assert first.line().startswith("paused renamed:")
    second = Child(root, folder, vs["third"], protect)
    assert second.line() == "ready"
    time.sleep(0.3)
    assert second.p.poll() is None, "the second writer did not wait for the lock"
    first.send()
    assert first.wait() == 0, first.stderr
    assert second.wait() == 0, second.stderr
    assert live_version(folder, vs) == "third"
    assert not leftovers(folder, "third", vs)


# ====================================================================== disk faults
def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (root only)."""
    if not _is_root():
        pytest.skip("mounting a small tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_disk_full_replaces_nothing(tiny_fs):
    """ENOSPC while writing (a real full file system): one-line UserError, the previous output
    unchanged, no temporary file left."""
    writer.atomic_write_text(tiny_fs / "r.json", "previous\n")
    before = _snapshot(tiny_fs)
    with pytest.raises(UserError, match="no space left") as e:
        writer.atomic_write_bytes(tiny_fs / "r.json", b"x" * (256 << 10))
    assert "\n" not in str(e.value) and "nothing was replaced" in str(e.value)
    assert _snapshot(tiny_fs) == before


def test_disk_full_mid_data_stream_keeps_previous_pair(tiny_fs):
    """ENOSPC in the middle of a streamed data file: the previous model + data pair and the
    report stay as they were."""
    with writer.OutputSet() as out:
        d = out.add_data(tiny_fs / "o.onnx", lambda f: f.write(b"\1" * 1000))
        out.add_model(tiny_fs / "o.onnx", b"m1:" + d.name.encode(), d)
        out.add_text(tiny_fs / "o.json", "{}\n")
    before = _snapshot(tiny_fs)

    def stream(f):
        for _ in range(64):
            f.write(b"\2" * (8 << 10))

    with pytest.raises(UserError, match="no space left"):
        with writer.OutputSet() as out:
            d = out.add_data(tiny_fs / "o.onnx", stream)
            out.add_model(tiny_fs / "o.onnx", b"m2:" + d.name.encode(), d)
    assert _snapshot(tiny_fs) == before


def test_read_only_file_system(tiny_fs):
    """A read-only mount: refused up front in one line (check_target and the writer), previous
    output unchanged."""
    writer.atomic_write_text(tiny_fs / "r.json", "previous\n")
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    with pytest.raises(UserError, match="read-only file system"):
        writer.check_target(tiny_fs / "r.json")
    with pytest.raises(UserError, match="read-only file system"):
        writer.atomic_write_text(tiny_fs / "r.json", "new\n")
    assert (tiny_fs / "r.json").read_text() == "previous\n"


def test_enospc_and_eio_from_fsync(tmp_path, monkeypatch):
    """A disk that fails at fsync (ENOSPC on thin provisioning, EIO): UserError, nothing
    replaced, staging removed."""
    (tmp_path / "r.json").write_text("previous\n")
    real = os.fsync
    for code, msg in ((errno.EIO, "Input/output error"), (errno.ENOSPC, "no space left"),
                      (errno.EDQUOT, "no space left")):
        def failing(fd, code=code):
            if os.path.isfile(f"/proc/self/fd/{fd}"):
                raise OSError(code, os.strerror(code))
            return real(fd)

        monkeypatch.setattr(os, "fsync", failing)
        with pytest.raises(UserError, match=msg):
            writer.atomic_write_text(tmp_path / "r.json", "new\n")
        monkeypatch.setattr(os, "fsync", real)
        assert _snapshot(tmp_path) == {"r.json": b"previous\n"}


def test_unwritable_folder(tmp_path, monkeypatch):
    """A folder the user may not write into: one line before anything is written. As root
    (who may write anywhere) the access check is made to fail instead."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if _is_root():
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == ro
                            else real(p, m, **k))
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable") as e:
            writer.atomic_write_text(ro / "r.json", "x")
        assert "\n" not in str(e.value)
        with pytest.raises(UserError, match="not writable"):
            writer.check_target(ro / "r.json")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_permission_denied_while_staging(tmp_path, monkeypatch):
    """A folder that passes the access check but refuses to create files (ACLs, some network
    mounts): one-line UserError, nothing written."""
    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writer.outputs.tempfile, "mkdtemp", deny)
    with pytest.raises(UserError, match="Permission denied") as e:
        writer.atomic_write_text(tmp_path / "r.json", "x")
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_kill_leftovers_are_only_hidden_staging(tmp_path, versions):
    """After a SIGKILL mid-write the folder holds the previous output plus hidden `.tmp`
    staging only (nothing a user would take for an output)."""
    root, vs = versions
    folder, protect, _ = _case_folder(tmp_path, vs)
    c = Child(root, folder, vs["new"], protect, pause="chunk:3")
    assert c.line() == "ready" and c.line() == "paused chunk:3"
    os.kill(c.p.pid, signal.SIGKILL)
    assert c.wait() == -9
    extra = leftovers(folder, "old", vs)
    assert extra and all(n.startswith(writer.STAGE_PREFIX) and n.endswith(".tmp")
                         for n in extra)
    assert live_version(folder, vs) == "old"
    shutil.rmtree(folder / next(iter(extra)))
