"""`graphprune.torch.prune_module`: the pruned nn.Module computes what the pruned ONNX does."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from graphprune.runtime import session as ortb  # noqa: E402
from graphprune.torch import apply_plan, prune_module  # noqa: E402
from graphprune.torch.apply import MappingError  # noqa: E402
from models import zoo  # noqa: E402


def onnx_out(model, x: torch.Tensor) -> np.ndarray:
    sess = ortb.session(model)
    return ortb.run(sess, {sess.get_inputs()[0].name: x.numpy()})[sess.get_outputs()[0].name]


def float_state_numel(m: torch.nn.Module) -> int:
    return sum(t.numel() for t in m.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenetv2_tiny", "densenet_tiny"])
def test_pruned_module_matches_pruned_onnx(name):
    module = zoo.build(name)
    n_before = float_state_numel(module)
    module, res = prune_module(module, zoo.example_input(name), ratio=0.5)
    x = zoo.example_input(name, seed=7)  # not the input used for export
    with torch.no_grad():
        got = module(x).numpy()
    np.testing.assert_allclose(got, onnx_out(res.model, x), atol=1e-4, rtol=1e-4)
    # the graph's other float constants (Clip bounds, ...) are the same before and after
    rep = res.report["params"]
    assert rep["before"] - n_before == rep["after"] - float_state_numel(module)
    assert res.report["params"]["after"] < res.report["params"]["before"]
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.out_channels == m.weight.shape[0]
            assert m.in_channels == m.weight.shape[1] * m.groups
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
        elif isinstance(m, torch.nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape)


def test_pruned_module_can_be_fine_tuned():
    module, _ = prune_module(zoo.build("resnet_tiny"), zoo.example_input("resnet_tiny"), 0.3)
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    loss = module(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in module.parameters())


def test_module_that_cannot_follow_is_restored():
    module = zoo.build("shufflenetv2_tiny")  # forward uses chunk(2): fixed halves
    x = zoo.example_input("shufflenetv2_tiny")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError, match="hard-codes"):
        prune_module(module, x, ratio=0.5)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    module(x)


def test_unmapped_tensor_is_a_clear_error():
    import graphprune
    from pathlib import Path

    demo = Path(__file__).resolve().parent.parent / "models" / "demo.onnx"
    res = graphprune.prune(str(demo), ratio=0.5)  # folded export: names like onnx::Conv_177
    module = zoo.build("resnet_tiny")
    with pytest.raises(MappingError, match="not a parameter or buffer"):
        apply_plan(module, res)


def test_core_does_not_import_torch():
    code = ("import sys, graphprune, graphprune.cli.main, graphprune.pipeline.measure, "
            "graphprune.pipeline.sweep, graphprune.report.html, graphprune.runtime.bench; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_fresh_batchnorm_with_equal_bias_and_mean_round_trips():
    """A fresh BatchNorm's zero bias and zero running mean are equal values: the export must not
    merge them into one tensor (the other would be an untied copy without a parameter)."""
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                           nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(32, 10)).eval()
    module, res = prune_module(module, (torch.randn(2, 3, 16, 16),), ratio=0.3)
    assert module[0].out_channels == module[1].num_features == 12
    assert module[1].running_mean.shape == (12,) and module[3].out_channels == 23


def test_shared_parameter_maps_back_through_its_untied_copy():
    """A layer applied twice reads one parameter from two nodes; the analysis unties it into
    `name__use1`, which maps back to the same parameter when both keep the same positions."""
    nn = torch.nn

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.body = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.body(x)) + x
            x = torch.relu(self.body(x)) + x
            return self.head(x.mean((2, 3)))

    module = Twice().eval()
    x = torch.randn(2, 3, 8, 8)
    module, res = prune_module(module, (x,), ratio=0.5)
    assert module.body.out_channels == module.stem.out_channels == 4
    np.testing.assert_allclose(module(x).detach().numpy(), onnx_out(res.model, x), atol=1e-4)


ZOO = sorted(set(zoo.MODELS) - set(zoo.ON_DEMAND))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", ZOO)
def test_round_trip_on_every_bundled_model(name, mode):
    """Every bundled model definition, handed over in eval or train mode: the pruned module
    reproduces the pruned ONNX model, keeps its mode, or (a forward that hard-codes sizes) is
    restored unchanged with a clear error."""
    module = zoo.build(name)
    module.train(mode == "train")
    x = zoo.example_input(name)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    try:
        module, res = prune_module(module, x, ratio=0.3)
    except RuntimeError as e:
        assert name == "shufflenetv2_tiny" and "hard-codes" in str(e)
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
        return
    assert module.training == (mode == "train")
    assert res.report["params"]["after"] < res.report["params"]["before"]
    module.eval()
    x2 = zoo.example_input(name, seed=7)
    with torch.no_grad():
        np.testing.assert_allclose(module(x2).numpy(), onnx_out(res.model, x2), atol=1e-4,
                                   rtol=1e-4)
