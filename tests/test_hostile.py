"""Hostile and broken inputs, bad flags and bad output paths.

Every case must end the same way: one line on stderr (`graphprune: error: ...`), exit code 2, no
traceback (unless --debug), the input untouched and nothing left in the output folder — no
output, no temporary file. Writes are atomic: a failure or Ctrl-C in the middle of one leaves a
previous output exactly as it was. Most cases run the CLI in-process (click's CliRunner) for
speed; a few run it as a real process.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import graphprune
from graphprune.ir import files as model_io
from graphprune.ir import storage, writer
from graphprune.cli.main import main
from graphprune.errors import ValidationError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"


# ====================================================================== helpers
def conv_model(c_in=32, c_mid=64, c_out=8, hw=6, opset=17, domain_op=None) -> onnx.ModelProto:
    """x → Conv → Relu (or a custom op) → Conv → y; the first conv's weight is 73 KB (big
    enough to stay on disk when stored as external data)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((c_mid, c_in, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(c_mid).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((c_out, c_mid, 3, 3)).astype(np.float32), "w2")
    act = helper.make_node("Relu", ["h"], ["a"], name="relu")
    if domain_op:
        act = helper.make_node(domain_op[1], ["h"], ["a"], name="custom", domain=domain_op[0])
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             act,
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, c_in, hw, hw])],
                          [helper.make_tensor_value_info("y", 1, [1, c_out, hw, hw])], [w1, b1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def save_external(model: onnx.ModelProto, folder: Path, name="m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    onnx.save(model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location=name + ".data", size_threshold=0)
    return p


def edit_external(path: Path, tensor: str, **kv) -> None:
    """Rewrite external_data entries of one tensor in a saved model."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if t.name == tensor:
            for e in t.external_data:
                if e.key in kv:
                    e.value = str(kv.pop(e.key))
            for k, v in kv.items():
                e = t.external_data.add()
                e.key, e.value = k, str(v)
    path.write_bytes(m.SerializeToString())


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink() and p.exists()}


def cli(*args, cwd=None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def assert_refused(r, needle: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("graphprune: error: "), lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def refused_untouched(folder: Path, args, needle: str, cwd=None) -> None:
    """Run, expect a one-line refusal, and check the folder is exactly as before."""
    before = snapshot(folder)
    r = cli(*args, cwd=cwd)
    assert_refused(r, needle)
    assert snapshot(folder) == before, "input changed or output/temp files left behind"


# ====================================================================== external data
@pytest.mark.parametrize("location,needle", [
    ("../outside.data", "outside the model's folder"),
    ("sub/../../outside.data", "outside the model's folder"),
    ("/etc/passwd", "absolute path"),
])
def test_external_location_outside_folder_refused_before_reading(tmp_path, monkeypatch,
                                                                 location, needle):
    d = tmp_path / "model"
    p = save_external(conv_model(), d)
    (tmp_path / "outside.data").write_bytes(b"\0" * 100_000)
    edit_external(p, "w1", location=location)
    opened = []
    real_open = builtins.open

    def spy(f, *a, **k):
        opened.append(os.path.realpath(f) if isinstance(f, (str, os.PathLike)) else f)
        return real_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    refused_untouched(tmp_path, [p], needle)
    assert not any(isinstance(f, str) and (f.endswith("outside.data") or f == "/etc/passwd")
                   or isinstance(f, str) and f.endswith("m.onnx.data") for f in opened), \
        "a data file was opened before every location was checked"


def test_external_symlink_leading_outside_refused(tmp_path):
    d = tmp_path / "model"
    p = save_external(conv_model(), d)
    secret = tmp_path / "secret.bin"
    shutil.copy(d / "m.onnx.data", secret)
    (d / "link.data").symlink_to(secret)
    edit_external(p, "w1", location="link.data")
    refused_untouched(tmp_path, [p], "resolves outside the model's folder")


@pytest.mark.parametrize("edit,needle", [
    ({"length": 12}, "external data length"),
    ({"offset": 10 ** 9}, "which has only"),
    ({"offset": "x"}, "not integers"),
    ({"location": "missing.data"}, "missing"),
    ({"checksum_x": "1"}, "unknown external data key"),
])
def test_external_declared_size_mismatch_refused(tmp_path, edit, needle):
    p = save_external(conv_model(), tmp_path / "model")
    edit_external(p, "w1", **edit)
    refused_untouched(tmp_path, [p], needle)


def test_external_data_file_too_short_refused(tmp_path):
    p = save_external(conv_model(), tmp_path / "model")
    data = p.with_name("m.onnx.data")
    data.write_bytes(data.read_bytes()[:1000])
    refused_untouched(tmp_path, [p], "which has only")


# ====================================================================== broken files
@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_model_refused(tmp_path, cut):
    raw = DEMO.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(raw[:int(len(raw) * cut)])
    refused_untouched(tmp_path, [p], "")


def test_non_protobuf_bytes_refused(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(os.urandom(3000))
    refused_untouched(tmp_path, [p], "")


def test_empty_file_and_folder_refused(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    refused_untouched(tmp_path, [tmp_path / "empty.onnx"], "no graph nodes")
    (tmp_path / "dir.onnx").mkdir()
    refused_untouched(tmp_path, [tmp_path / "dir.onnx"], "")


# ====================================================================== graphs
def write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_domain_without_opset_import_refused(tmp_path):
    m = conv_model(domain_op=("my.ops", "Swish"))
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "does not import")


def test_custom_domain_ort_cannot_load_refused(tmp_path):
    m = conv_model(domain_op=("my.ops", "Swish"))
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "onnxruntime cannot load the input model")


def test_custom_domain_ort_can_run_is_pruned_with_its_groups_frozen(tmp_path):
    """A model-local function in its own domain: ORT runs it, graphprune has no rule for it, so
    the groups it touches are frozen and the rest is pruned."""
    m = conv_model(domain_op=("my.fns", "MyAct"))
    m.opset_import.append(helper.make_opsetid("my.fns", 1))
    fn = helper.make_function("my.fns", "MyAct", ["x"], ["y"],
                              [helper.make_node("Relu", ["x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    m.functions.append(fn)
    p = write(m, tmp_path / "m.onnx")
    r = cli(p, "-o", tmp_path / "out.onnx", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert "my.fns::MyAct" in rep["summary"]["unsupported_ops"]
    assert any("MyAct" in (g["frozen_reason"] or "") for g in rep["groups"])


def test_cycle_refused(tmp_path):
    m = conv_model()
    m.graph.node[0].input[0] = "y"  # conv1 reads conv2's output
    m.graph.input[0].name = "x_unused"
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "cycle")


def test_unsorted_acyclic_graph_is_sorted_and_pruned(tmp_path):
    m = conv_model()
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    p = write(m, tmp_path / "m.onnx")
    r = cli(p, "-o", tmp_path / "out.onnx", "--quiet")
    assert r.exit_code == 0, r.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")), full_check=True)


def test_dangling_input_refused(tmp_path):
    m = conv_model()
    m.graph.node[1].input[0] = "nobody_makes_this"
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "which no node, initializer or graph input produces")


def test_tensor_defined_twice_refused(tmp_path):
    m = conv_model()
    m.graph.node[1].output[0] = "h"
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "defined more than once")


def test_huge_declared_input_dim_refused(tmp_path):
    m = conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10 ** 12
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "dimension of 1,000,000,000,000")


def test_negative_declared_dim_is_read_as_unknown(tmp_path):
    """-1 for "unknown" (some converters write it; ORT reads it as symbolic) is accepted."""
    m = conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = -1
    p = write(m, tmp_path / "m.onnx")
    r = cli(p, "-o", tmp_path / "o.onnx", "--quiet")
    assert r.exit_code == 0, r.stderr


def test_large_input_refused_before_allocating(tmp_path):
    m = conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 200_000
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 200_000
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "refusing inputs over")


def test_initializer_declaring_huge_dims_refused(tmp_path):
    m = conv_model()
    w = m.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([10 ** 6, 10 ** 6])
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "declares shape")


def test_huge_constant_of_shape_refused(tmp_path):
    m = conv_model()
    m.graph.initializer.append(numpy_helper.from_array(np.array([10 ** 7, 10 ** 7], np.int64), "shp"))
    m.graph.node.append(helper.make_node("ConstantOfShape", ["shp"], ["big"], name="fill"))
    m.graph.output.append(helper.make_tensor_value_info("big", 1, None))
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "ConstantOfShape")


def test_model_proto_with_external_data_refused():
    m = conv_model()
    t = m.graph.initializer[0]
    storage.set_external(t, "w.data", 0, 4 * 64 * 32 * 9)
    with pytest.raises(graphprune.errors.UserError, match="folder is unknown"):
        graphprune.prune(m)


# ====================================================================== flags and paths
@pytest.mark.parametrize("flags,needle", [
    (["--ratio", "1.0"], "--ratio"), (["--ratio", "-0.1"], "--ratio"),
    (["--ratio", "nan"], "--ratio"), (["--ratio", "inf"], "--ratio"),
    (["--ratio", "abc"], "--ratio"), (["--round-to", "0"], "--round-to"),
    (["--min-keep", "0"], "--min-keep"), (["--seed", "-1"], "--seed"),
    (["--dims", "bogus"], "--dims"), (["--drop-blocks", "-2"], "--drop-blocks"),
    (["--criterion", "nope"], "--criterion"), (["--no-such-flag"], "no-such-flag"),
])
def test_flags_out_of_range_refused(tmp_path, flags, needle):
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", *flags], needle)


def test_output_equal_to_input_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(DEMO, d / "demo.onnx")
    refused_untouched(d, [d / "demo.onnx", "-o", d / "demo.onnx"], "equals the input")
    refused_untouched(d, ["demo.onnx", "-o", "./sub/../demo.onnx"], "equals the input", cwd=d)
    (d / "alias.onnx").symlink_to(d / "demo.onnx")
    refused_untouched(d, [d / "demo.onnx", "-o", d / "alias.onnx"], "equals the input")
    os.link(d / "demo.onnx", d / "hard.onnx")
    refused_untouched(d, [d / "demo.onnx", "-o", d / "hard.onnx"], "equals the input")


def test_output_overwriting_input_data_refused(tmp_path):
    """The report would replace the data file the input model reads: refused. An output model
    whose old fixed data-file name (`x.onnx.data`) is the input's data file writes its own
    content-named data file and leaves the input's in place (it is never removed as a
    previous output's)."""
    d = tmp_path / "d"
    p = save_external(conv_model(), d, name="m.onnx")
    os.rename(d / "m.onnx.data", d / "x.onnx.data")
    for t in ("w1", "b1", "w2"):
        edit_external(p, t, location="x.onnx.data")
    refused_untouched(d, [p, "-o", d / "o.onnx", "--report", d / "x.onnx.data"],
                      "would overwrite the input")
    inputs = {f: (d / f).read_bytes() for f in ("m.onnx", "x.onnx.data")}
    r = cli(p, "-o", d / "x.onnx", "--external-data", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert {f: (d / f).read_bytes() for f in inputs} == inputs
    data = [f.name for f in d.iterdir() if f.name.startswith("x.onnx.") and f.name != "x.onnx.data"]
    assert len(data) == 1 and re.fullmatch(r"x\.onnx\.[0-9a-f]{16}\.data", data[0]), data


def test_report_path_equal_to_output_refused(tmp_path):
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", tmp_path / "o.onnx", "--report",
                                 tmp_path / "o.onnx"], "would overwrite the output")


def test_output_folder_missing_or_unwritable_or_a_folder(tmp_path, monkeypatch):
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", tmp_path / "no" / "o.onnx"],
                      "does not exist")
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "--report", tmp_path / "no" / "r.json"],
                      "does not exist")
    (tmp_path / "adir").mkdir()
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", tmp_path / "adir"], "")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == ro
                        else real_access(p, m, **k))
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", ro / "o.onnx"], "not writable")


def test_write_permission_error_is_one_line(tmp_path, monkeypatch):
    """A folder that passes the access check but refuses the write (ACLs, read-only mounts)."""
    shutil.copy(DEMO, tmp_path / "demo.onnx")

    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writer.outputs.tempfile, "mkdtemp", deny)
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", tmp_path / "o.onnx"],
                      "Permission denied")


# ====================================================================== atomic writes
@pytest.fixture()
def previous_output(tmp_path):
    """A model and an already existing output (with a data file) that failures must not touch."""
    p = save_external(conv_model(c_in=64, c_mid=128, c_out=64), tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    r = cli(p, "-o", out / "o.onnx", "--ratio", "0.5", "--quiet")
    assert r.exit_code == 0, r.stderr
    return p, out


def test_failure_mid_external_write_leaves_previous_output(previous_output, monkeypatch):
    p, out = previous_output
    before = snapshot(out)
    calls = []
    import onnx_ir

    def failing_in(cls):
        real = cls.tofile

        def failing(self, f):
            calls.append(self.name)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, f)

        monkeypatch.setattr(cls, "tofile", failing)

    failing_in(onnx_ir.ExternalTensor)  # tensors copied from the input's data file
    failing_in(onnx_ir.Tensor)  # tensors the prune changed
    r = cli(p, "-o", out / "o.onnx", "--ratio", "0.2")
    assert_refused(r, "no space left")
    assert len(calls) == 2, "the failure should hit in the middle of the data file"
    assert snapshot(out) == before


def test_failure_mid_inline_write_leaves_previous_output(tmp_path, monkeypatch):
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous output")
    before = snapshot(tmp_path)

    def half(fd):  # the model's bytes are written, its fsync fails
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.outputs.os, "fsync", half)
    refused_untouched(tmp_path, [tmp_path / "demo.onnx", "-o", out], "Input/output error")
    assert snapshot(tmp_path) == before


def test_ctrl_c_during_write_exits_130_and_leaves_previous_output(previous_output, monkeypatch):
    p, out = previous_output
    before = snapshot(out)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.outputs.os, "fsync", interrupted)
    r = cli(p, "-o", out / "o.onnx")
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines() == ["graphprune: interrupted; no partial output left"]
    assert snapshot(out) == before


def test_ctrl_c_during_pruning_exits_130_with_nothing_written(tmp_path, monkeypatch):
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    before = snapshot(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphprune.pipeline.stages, "rewrite_plan", interrupted)
    r = cli(tmp_path / "demo.onnx", "--report", tmp_path / "r.json")
    assert r.exit_code == 130 and len(r.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_validation_failure_writes_nothing(previous_output, monkeypatch):
    p, out = previous_output
    before = snapshot(out)

    def fail(*a, **k):
        raise ValidationError("onnx checker: simulated")

    monkeypatch.setattr(graphprune.runtime.validate, "validate_file", fail)
    r = cli(p, "-o", out / "o.onnx", "--ratio", "0.1")
    assert_refused(r, "the pruned model failed validation, nothing written: onnx checker")
    assert snapshot(out) == before
    # measuring runs validate the model before it is written, weights on disk or not
    monkeypatch.setattr(graphprune.runtime.validate, "validate", fail)
    r = cli(p, "-o", out / "o.onnx", "--ratio", "0.1", "--benchmark")
    assert_refused(r, "the pruned model failed validation, nothing written: onnx checker")
    assert snapshot(out) == before


def test_measurement_failure_writes_nothing(previous_output, monkeypatch):
    """Fidelity and the benchmark run on the written files before they are renamed into place:
    a failure there leaves the previous output as it was and no temporary file."""
    from graphprune.errors import UserError
    from graphprune.pipeline import measure

    p, out = previous_output
    before = snapshot(out)

    def fail(*a, **k):
        raise UserError("onnxruntime cannot run the model: simulated")

    monkeypatch.setattr(measure.bench, "benchmark_pair", fail)
    r = cli(p, "-o", out / "o.onnx", "--ratio", "0.1", "--benchmark", "--report", out / "r.json")
    assert_refused(r, "onnxruntime cannot run the model: simulated")
    assert snapshot(out) == before


def test_save_model_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "t.onnx"
    target.write_bytes(b"old")
    monkeypatch.setattr(writer.outputs.os, "rename",
                        lambda *a: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    with pytest.raises(graphprune.errors.UserError, match="cross-device"):
        model_io.save_model(conv_model(), target)
    assert target.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["t.onnx"]


# ====================================================================== real processes
def gp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_real_process_one_line_and_debug_traceback(tmp_path):
    p = save_external(conv_model(), tmp_path / "m")
    edit_external(p, "w1", location="../../etc/passwd")
    r = gp(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "outside the model's folder" in r.stderr
    r = gp(p, "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("graphprune: error:")


# ====================================================================== ORT crashes
def test_model_that_crashes_onnxruntime_is_refused(tmp_path):
    """Inception v1 fed 16-pixel-high images: an ONNX Runtime pooling kernel divides by zero and
    kills its process. ORT runs in a forked child, so graphprune refuses the model cleanly."""
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    m = onnx.load(str(light / "light_inception_v1.onnx"))
    data = next(i for i in m.graph.input if i.name == "data_0")
    data.type.tensor_type.shape.dim[2].dim_value = 16
    p = write(m, tmp_path / "m.onnx")
    refused_untouched(tmp_path, [p], "onnxruntime crashed (signal SIGFPE) running the input model")


def test_isolated_runs_return_results_and_errors():
    from graphprune.runtime.isolate import isolated

    assert isolated(lambda x: {"y": np.arange(x)}, 3, crash=RuntimeError)["y"].tolist() == [0, 1, 2]
    with pytest.raises(graphprune.errors.UserError, match="bad input"):
        isolated(lambda: (_ for _ in ()).throw(graphprune.errors.UserError("bad input")),
                 crash=RuntimeError)
    with pytest.raises(ValidationError, match="died: signal SIGABRT"):
        isolated(os.abort, crash=lambda why: ValidationError(f"died: {why}"))


def test_internal_error_is_one_line_exit_3(tmp_path, monkeypatch):
    """A bug is neither bad input (2) nor a failed gate (1): exit 3, one line, nothing written."""
    shutil.copy(DEMO, tmp_path / "demo.onnx")
    before = snapshot(tmp_path)

    def bug(*a, **k):
        raise RuntimeError("something impossible\nsecond line")

    monkeypatch.setattr(graphprune.pipeline.stages, "analyze_graph", bug)
    r = cli(tmp_path / "demo.onnx")
    assert r.exit_code == 3
    assert r.stderr.strip().splitlines() == [
        "graphprune: internal error: RuntimeError: something impossible (a bug in graphprune; "
        "--debug shows the traceback)"]
    assert snapshot(tmp_path) == before
    r = cli(tmp_path / "demo.onnx", "--debug")
    assert r.exit_code == 3 and "Traceback" in r.stderr
