"""What the commands write, and what they refuse to write (issue 16, items 1, 2, 3, 5, 8, 10).

Every output file of every command (the model and its data file, the JSON report, the HTML
report, sweep.json/csv/png) goes through one writer (`graphprune.ir.writer`): it never writes
through a link or into a device, FIFO or folder, stages everything in the target folder and
commits a command's files together, removes its temporary files on any exit, and switches a
model and its content-named data file so that a kill at any instant leaves the previous pair
or the new one. Results printed on stdout that cannot be written are one line too.

Each test's docstring says what the code before this change did with the same input; the
tests were run against that code and fail there.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from test_hostile import DEMO, assert_refused, cli, conv_model, save_external, snapshot

STAGING = (".graphprune-", ".tmp")

# A graphprune process with a fault injected (argv[1]): the signal it sends itself, and when.
INJECT = r'''
import os, signal, sys

mode = sys.argv.pop(1)
kind, _, arg = mode.partition(":")
me = os.getpid()

if kind == "kill-after-data-rename":
    # SIGKILL right after a model's data file is renamed into place, before the model is
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def wrapped(src, dst, *a, _real=real, **k):
            _real(src, dst, *a, **k)
            d = os.fspath(dst)
            if d.endswith(".data") and ".graphprune-" not in d:
                os.kill(me, signal.SIGKILL)

        setattr(os, name, wrapped)
elif kind == "signal-at-fsync":
    # the signal arrives while the first output file is being written
    real_fsync, sig = os.fsync, getattr(signal, arg)

    def fsync(fd, _done=[]):
        if not _done:
            _done.append(1)
            os.kill(me, sig)
        return real_fsync(fd)

    os.fsync = fsync
elif kind == "kill-at-step":
    # SIGKILL at a named step of the writer's commit (prefix match)
    from graphprune.ir import writer

    def hook(step):  # "NAME" matches that step, "PREFIX." / "PREFIX:" every step it begins
        if step == arg or (arg[-1] in ".:" and step.startswith(arg)):
            os.kill(me, signal.SIGKILL)

    writer.set_step_hook(hook)
sys.argv[0] = "graphprune"
from graphprune.cli.main import main

main()
'''


def gp(*args, cwd=None, timeout=180, stdout=subprocess.PIPE, inject=None, tmp=None):
    """graphprune in a fresh process (the tree under test: tests/conftest.py sets PYTHONPATH);
    `inject` runs it under the INJECT wrapper (written into `tmp`)."""
    cmd = [sys.executable, "-m", "graphprune.cli.main"]
    if inject is not None:
        script = Path(tmp) / "inject.py"
        script.write_text(INJECT)
        cmd = [sys.executable, str(script), inject]
    return subprocess.run(cmd + [str(a) for a in args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=cwd, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def outputs_of(model: Path) -> list[np.ndarray]:
    """The outputs of the model file on a fixed input: it must load with its data file."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    x = np.random.default_rng(7).standard_normal([d if isinstance(d, int) else 1
                                                  for d in i.shape]).astype(np.float32)
    return sess.run(None, {i.name: x})


def data_files(folder: Path, model: str = "o.onnx") -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(model + ".")
                  and n.endswith(".data"))


# ====================================================================== model + data switch
@pytest.fixture(scope="module")
def pair_versions(tmp_path_factory):
    """An input with external data, and the outputs of pruning it at two ratios (the
    "previous" output on disk, and the "new" one a killed run was writing)."""
    root = tmp_path_factory.mktemp("pairs")
    p = save_external(conv_model(c_in=64, c_mid=128, c_out=64), root / "in")
    runs = {}
    for tag, ratio in (("old", "0.5"), ("new", "0.2")):
        d = root / tag
        d.mkdir()
        t0 = time.monotonic()
        r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", ratio, "--quiet")
        assert r.returncode == 0, r.stderr
        runs[tag] = {"ratio": ratio, "out": outputs_of(d / "o.onnx"), "folder": d,
                     "wall": time.monotonic() - t0,
                     "params": json.loads((d / "o.json").read_text())["params"]["after"]}
    return p, runs


def case(tmp_path: Path, pair_versions) -> tuple[Path, Path, dict, dict]:
    """A folder holding a copy of the input and of the previous ("old") output."""
    src, runs = pair_versions
    d = tmp_path / "work"
    d.mkdir()
    for f in src.parent.iterdir():
        shutil.copy(f, d / f.name)
    for f in runs["old"]["folder"].iterdir():
        shutil.copy(f, d / f.name)
    p = d / src.name
    inputs = {f: f.read_bytes() for f in (p, d / "m.onnx.data")}
    return d, p, inputs, runs


def live(d: Path, runs: dict) -> str:
    """Which complete output `o.onnx` is: it loads with its data file, runs, and gives the
    outputs of the old or of the new prune; `o.json` is one of the two reports."""
    out = outputs_of(d / "o.onnx")
    tag = next((t for t, v in runs.items() if len(v["out"]) == len(out) and all(
        a.shape == b.shape and np.allclose(a, b, atol=1e-5) for a, b in zip(v["out"], out))),
        None)
    assert tag is not None, "o.onnx is neither the previous nor the new output"
    m = onnx.load(str(d / "o.onnx"), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert len(locs) == 1 and (d / locs.pop()).is_file()
    assert json.loads((d / "o.json").read_text())["params"]["after"] in {
        v["params"] for v in runs.values()}
    return tag


def leftovers(d: Path) -> set[str]:
    m = onnx.load(str(d / "o.onnx"), load_external_data=False)
    used = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return set(os.listdir(d)) - {"m.onnx", "m.onnx.data", "o.onnx", "o.json", "inject.py"} - used


def test_kill_between_data_and_model_rename_keeps_the_previous_pair(tmp_path, pair_versions):
    """Item 1. A SIGKILL right after the new data file is renamed into place, before the new
    model is. Before: the data file had a fixed name (`o.onnx.data`) and was renamed over the
    previous one first, so the previous model was left reading the new data (wrong offsets:
    not loadable, or wrong outputs). Now the data file is named by its content: the previous
    pair stays whole, and the next write removes the stray file."""
    d, p, inputs, runs = case(tmp_path, pair_versions)
    r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", runs["new"]["ratio"],
           "--quiet", inject="kill-after-data-rename", tmp=d)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert live(d, runs) == "old"
    assert {f: f.read_bytes() for f in inputs} == inputs
    r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", runs["new"]["ratio"],
           "--quiet")
    assert r.returncode == 0, r.stderr
    assert live(d, runs) == "new" and not leftovers(d), leftovers(d)


@pytest.mark.parametrize("step", ["locked", "renamed:o.onnx.", "renamed:o.onnx", "removed:"])
def test_cli_killed_at_each_commit_step(tmp_path, pair_versions, step):
    """The fault suite of the writer, on the real command: `graphprune` writing a model, its
    data file and the report is SIGKILLed at each step of the commit. The output is always a
    complete pair (previous or new), the input byte-identical; what a kill leaves (a hidden
    staging folder, an unreferenced data file) goes with the next write. Before: there was no
    commit to step through (this test cannot run there)."""
    d, p, inputs, runs = case(tmp_path, pair_versions)
    r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", runs["new"]["ratio"],
           "--quiet", inject=f"kill-at-step:{step}", tmp=d)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    tag = live(d, runs)
    assert tag == ("old" if step in ("locked", "renamed:o.onnx.") else "new")
    assert {f: f.read_bytes() for f in inputs} == inputs
    extra = leftovers(d)
    for n in extra:
        assert (n.startswith(STAGING[0]) and n.endswith(STAGING[1])) or n.endswith(".data"), n
    if not extra:
        return
    r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", runs["old"]["ratio"],
           "--quiet")
    assert r.returncode == 0, r.stderr
    assert live(d, runs) == "old" and not leftovers(d), leftovers(d)


@pytest.mark.parametrize("seed", range(4))
def test_cli_killed_at_random_instants(tmp_path, pair_versions, seed):
    """`graphprune` writing model + data + report, killed (SIGKILL, SIGTERM or SIGINT) at a
    random instant of the end of its run (where it validates and writes): the output is the
    previous or the new complete, runnable pair, the report one of the two, the input
    byte-identical; after SIGTERM/SIGINT no temporary file is left, after SIGKILL only what
    the next write removes. The instants are random, so on the code before this change the
    test fails only when a kill lands inside a write (SIGTERM left `.tmp` files, a kill
    between the two renames broke the previous pair); the tests above hit those instants
    deterministically."""
    d, p, inputs, runs = case(tmp_path, pair_versions)
    rng = random.Random(seed)
    sig = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGKILL][seed]
    wall = runs["new"]["wall"]
    at = rng.uniform(0.7, 1.05) * wall
    proc = subprocess.Popen([sys.executable, "-m", "graphprune.cli.main", str(p), "-o",
                             str(d / "o.onnx"), "--report", str(d / "o.json"), "--ratio",
                             runs["new"]["ratio"], "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(at)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    rc = proc.returncode
    allowed = {signal.SIGKILL: {0, -9}, signal.SIGTERM: {0, -15, 143},
               signal.SIGINT: {0, -2, 130}}[sig]  # negative: before the handlers were set
    assert rc in allowed, (rc, err)
    if rc > 0:
        assert len(err.strip().splitlines()) == 1, err
    live(d, runs)
    assert {f: f.read_bytes() for f in inputs} == inputs
    extra = leftovers(d)
    if sig != signal.SIGKILL:
        assert not extra, extra
    else:
        for n in extra:
            assert (n.startswith(STAGING[0]) and n.endswith(STAGING[1])) or n.endswith(".data")
        r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio",
               runs["new"]["ratio"], "--quiet")
        assert r.returncode == 0, r.stderr
        assert live(d, runs) == "new" and not leftovers(d)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path, pair_versions, sig):
    """Item 8. SIGTERM (or SIGHUP) while the outputs are being written: one line, exit
    128 + signal, the previous outputs exactly as they were and no temporary file. Before:
    no handler, the process died at once and left its `.tmp` files in the output folder."""
    d, p, inputs, runs = case(tmp_path, pair_versions)
    before = snapshot(d)
    r = gp(p, "-o", d / "o.onnx", "--report", d / "o.json", "--ratio", runs["new"]["ratio"],
           "--quiet", inject=f"signal-at-fsync:{sig}", tmp=d)
    (d / "inject.py").unlink()
    assert r.returncode == 128 + getattr(signal, sig), (r.returncode, r.stderr)
    assert one_line(r.stderr) == f"graphprune: terminated by {sig}; no partial output left"
    assert snapshot(d) == before


# ====================================================================== one set, refused paths
def test_outputs_are_all_or_nothing_when_the_html_cannot_be_made(tmp_path, monkeypatch):
    """Item 5. The HTML report fails to render: nothing is written, not the model either.
    Before: the model (and the JSON report) were already in place when the HTML failed."""
    import graphprune.report.html as html
    from graphprune.errors import UserError

    (tmp_path / "in").mkdir()
    model = tmp_path / "in" / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    out = tmp_path / "out"
    out.mkdir()

    def broken(report):
        raise UserError("cannot render the report (simulated)")

    monkeypatch.setattr(html, "render", broken)
    r = cli(model, "-o", out / "o.onnx", "--report", out / "r.json", "--html", out / "r.html")
    assert_refused(r, "simulated")
    assert os.listdir(out) == []


def _tiny_fs(tmp_path: Path, size: str = "64k") -> Path:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("mounting a small tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    return d


@pytest.fixture()
def tiny_fs(tmp_path):
    d = _tiny_fs(tmp_path)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(folder: Path) -> None:
    """Fill a file system to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for block in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def test_report_on_a_full_disk_writes_no_model(tmp_path, tiny_fs):
    """Item 5. The report goes to a full file system: exit 2 in one line and the model is not
    written either. Before: the model was in place when the report failed, yet the command
    said "nothing written" (exit 2)."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    _fill(tiny_fs)
    r = cli(model, "-o", tmp_path / "o.onnx", "--report", tiny_fs / "r.json", "--quiet")
    assert_refused(r, "no space left")
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "tiny"]
    assert os.listdir(tiny_fs) == ["filler"]


def test_html_equal_to_report_refused(tmp_path):
    """Item 5. `--html` naming the same file as `--report`. Before: accepted, and the HTML
    silently replaced the JSON report."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    before = snapshot(tmp_path)
    r = cli(model, "--report", tmp_path / "r.out", "--html", tmp_path / "r.out")
    assert_refused(r, "are the same file")
    r = cli(model, "-o", tmp_path / "o.onnx", "--html", tmp_path / "o.onnx")
    assert_refused(r, "would overwrite the output model")
    assert snapshot(tmp_path) == before


def _make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _run_with_deadline(fn, fifo: Path, seconds: float = 60.0):
    """fn() in a thread: a write that blocks on the FIFO fails the test instead of hanging."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn()), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets a writer stuck on it go on
        raise AssertionError("the command blocked on a FIFO")
    return box["r"]


@pytest.mark.parametrize("flag", ["-o", "--report", "--html"])
def test_fifo_output_refused_and_kept(tmp_path, flag):
    """Item 3. A FIFO as an output: refused at once in one line, the FIFO left in place.
    Before: it was replaced by a regular file."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    fifo = _make_fifo(tmp_path / "out.fifo")
    args = [model, "-o", tmp_path / "o.onnx", "--quiet"] if flag != "-o" else [model, "--quiet"]
    r = _run_with_deadline(lambda: cli(*args, flag, fifo), fifo)
    assert_refused(r, "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "out.fifo"]


def test_device_output_refused_and_kept(tmp_path):
    """Item 3. A character device (a private null device made with mknod) as `-o`: refused,
    the device node left as it is. Before: replaced by a regular file (for `-o /dev/null`,
    as root, that replaced the system's /dev/null)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("mknod needs root")
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as e:
        pytest.skip(f"cannot make a device node here: {e}")
    r = cli(model, "-o", dev, "--quiet")
    assert_refused(r, "character device")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    r = cli(model, "-o", tmp_path / "o.onnx", "--report", dev, "--quiet")
    assert_refused(r, "character device")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_fd_link_output_refused_and_kept(tmp_path):
    """Item 3. A symlink to /proc/self/fd/1 (what /dev/stdout is) as `--report`: refused, the
    link left as it is. Before: the link was replaced by a regular file."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    r = cli(model, "-o", tmp_path / "o.onnx", "--report", link, "--quiet")
    assert_refused(r, "symbolic link")
    assert os.readlink(link) == "/proc/self/fd/1"
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "stdout"]


@pytest.mark.parametrize("flag,path,needle", [
    ("-o", "/dev/null", "character device"), ("--report", "/dev/stdout", "symbolic link"),
    ("--html", "/dev/stderr", "symbolic link"), ("-o", "/proc/self/fd/1", "symbolic link")])
def test_system_devices_and_stdout_refused(tmp_path, flag, path, needle):
    """Item 3. `-o /dev/null`, `--report /dev/stdout`, `--html /dev/stderr`,
    `-o /proc/self/fd/1`: refused in one line (the writer never writes through a device or a
    link; --json prints the report on stdout). The writer's own check runs first, so a
    regression can never replace a system file from this test."""
    from graphprune.errors import UserError
    from graphprune.ir.writer import check_target

    with pytest.raises(UserError):
        check_target(path)
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    args = [model, "--quiet", flag, path] + ([] if flag == "-o" else ["-o", tmp_path / "o.onnx"])
    r = cli(*args)
    assert_refused(r, needle)
    assert os.listdir(tmp_path) == ["demo.onnx"]


def test_output_with_a_trailing_separator_refused(tmp_path):
    """Item 10. `-o newdir/`. Before: click turned it into `newdir` and a model file named
    `newdir` was written."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    r = cli(model, "-o", str(tmp_path / "newdir") + os.sep, "--quiet")
    assert_refused(r, "names a folder")
    assert os.listdir(tmp_path) == ["demo.onnx"]


# ====================================================================== sweep
def test_sweep_never_writes_through_a_link_to_the_input(tmp_path):
    """Item 2. `MODEL.sweep/sweep.json -> ../MODEL.onnx`: refused before any work, the input
    byte-identical and the link in place. Before: the sweep wrote its JSON through the link,
    over the input model."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    (tmp_path / "demo.sweep").mkdir()
    (tmp_path / "demo.sweep" / "sweep.json").symlink_to("../demo.onnx")
    r = cli("sweep", model, "--ratios", "0.2", "--no-latency", "--quiet")
    assert_refused(r, "symbolic link")
    assert model.read_bytes() == DEMO.read_bytes()
    assert os.readlink(tmp_path / "demo.sweep" / "sweep.json") == "../demo.onnx"
    assert os.listdir(tmp_path / "demo.sweep") == ["sweep.json"]


def test_sweep_on_a_full_or_read_only_disk(tmp_path, tiny_fs):
    """Item 2. The sweep's outputs on a full file system, then on a read-only one: one line,
    exit 2, nothing left (not even the `--out` folder it made). Before: exit 3 ("a bug") and
    a 0-byte sweep.csv."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    _fill(tiny_fs)
    r = cli("sweep", model, "--ratios", "0.2", "--no-latency", "--quiet", "--out",
            tiny_fs / "sw")
    assert_refused(r, "no space left")
    assert os.listdir(tiny_fs) == ["filler"]
    (tiny_fs / "filler").unlink()
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    r = cli("sweep", model, "--ratios", "0.2", "--no-latency", "--quiet", "--out",
            tiny_fs / "sw")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "read-only" in r.stderr.lower()
    assert os.listdir(tiny_fs) == []


def test_sweep_outputs_are_written_together(tmp_path):
    """sweep.json, sweep.csv and sweep.png land together through the writer, beside nothing
    else (no staging left)."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    r = cli("sweep", model, "--ratios", "0.2,0.4", "--no-latency", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "demo.sweep")) == ["sweep.csv", "sweep.json",
                                                           "sweep.png"]
    assert (tmp_path / "demo.sweep" / "sweep.csv").read_text().count("\n") == 3


# ====================================================================== stdout
@pytest.mark.parametrize("command", [["analyze", "{m}", "--json"],
                                     ["bench", "{m}", "--json", "--repeats", "2",
                                      "--warmup", "0"],
                                     ["{m}", "-o", "{o}", "--json"]])
def test_stdout_on_a_full_disk_is_one_line(tmp_path, command):
    """`--json` output redirected to a full device (/dev/full): one line on stderr, exit 2.
    Before: exit 3, "internal error: OSError ... (a bug in graphprune)"."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    args = [a.format(m=model, o=tmp_path / "o.onnx") for a in command]
    with open("/dev/full", "w") as full:
        r = gp(*args, stdout=full)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert one_line(r.stderr) == ("graphprune: error: cannot write to standard output: No space "
                                  "left on device")


# ====================================================================== plan and batch
def test_save_plan_goes_through_the_writer(tmp_path):
    """`--save-plan` is one of the command's outputs: a link or a FIFO is refused before any
    work, and the plan lands with the model and the report. Before: `--save-plan` to a
    symlink replaced the link with a file."""
    model = tmp_path / "demo.onnx"
    model.write_bytes(DEMO.read_bytes())
    link = tmp_path / "plan.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    r = cli(model, "-o", tmp_path / "o.onnx", "--save-plan", link, "--quiet")
    assert_refused(r, "symbolic link")
    assert os.readlink(link) == str(tmp_path / "elsewhere.json")
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "plan.json"]
    link.unlink()
    r = cli(model, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json", "--save-plan",
            tmp_path / "plan.json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "o.onnx", "plan.json", "r.json"]
    assert json.loads((tmp_path / "plan.json").read_text())["graphprune_plan"] == 1


def test_batch_report_refused_up_front_when_it_is_a_link(tmp_path):
    """`graphprune batch --report LINK`: refused before any model is pruned, the link and the
    models untouched. Before: every model was pruned and written, then the link was replaced
    by the batch report."""
    d = tmp_path / "models"
    d.mkdir()
    (d / "a.onnx").write_bytes(DEMO.read_bytes())
    link = tmp_path / "batch.json"
    link.symlink_to(d / "a.onnx")
    r = cli("batch", d, "--report", link, "--jobs", "1", "--quiet")
    assert_refused(r, "symbolic link")
    assert os.readlink(link) == str(d / "a.onnx")
    assert os.listdir(d) == ["a.onnx"] and (d / "a.onnx").read_bytes() == DEMO.read_bytes()
