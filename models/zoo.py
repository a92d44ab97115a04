"""Small plain-torch models that reproduce the topology patterns a pruner must handle.

Each model is tiny (tens of KB of weights) but keeps the structural feature that
makes channel pruning hard in its family: residual ``Add`` coupling, grouped
(depthwise) convolutions, ``Concat`` of growing feature lists, channel split and
shuffle, squeeze-excitation gating, a ``Flatten`` feeding a ``Gemm`` and
upsample-plus-skip decoders.  ``resnet50`` is the exception: a full-size,
torchvision-compatible network used only for benchmarks.

Weights are random but deterministic and deliberately *not* uniform:

* every conv / linear layer gets He-scaled normal weights whose output channels
  are multiplied by factors in [0.1, 2], so magnitude-based importance scores
  actually rank channels differently;
* every BatchNorm gets random affine parameters and running statistics that are
  first calibrated on random data and then perturbed, so BN is never the
  identity (a pruner that drops or mis-slices BN state changes the output) while
  activations stay O(1) and numeric comparisons with an absolute tolerance stay
  meaningful even for deep models.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "INPUT_SHAPES", "ON_DEMAND", "build", "example_input"]


# ---------------------------------------------------------------------------
# Deterministic, non-trivial parameter initialisation
# ---------------------------------------------------------------------------


def _randomize(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Give ``model`` seeded random weights and non-identity BatchNorm state.

    BatchNorm running statistics are calibrated with one train-mode pass over
    random inputs (cumulative average, ``momentum=None``) before being
    perturbed; without calibration, residual networks amplify activations by
    orders of magnitude and absolute-tolerance checks become meaningless.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out_ch = m.weight.shape[0]
                fan_in = m.weight[0].numel()
                w = torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in)
                w *= uniform(out_ch, 0.1, 2.0).view(-1, *([1] * (w.dim() - 1)))
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(out_ch, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(uniform(n, 0.5, 1.5))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)

        # Calibrate running statistics so activations stay well scaled.
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        saved_momentum = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        batch = 16 if input_shape[-1] <= 64 else 4
        model.train()
        model(torch.randn((batch, *input_shape[1:]), generator=gen))
        for bn, momentum in zip(bns, saved_momentum):
            bn.momentum = momentum
            n = bn.num_features
            # Round the calibrated statistics to bfloat16 precision: they come from
            # a float forward pass whose last bits depend on the CPU's kernels, and
            # rounding keeps the exported files identical across machines in practice.
            bn.running_mean.copy_(bn.running_mean.to(torch.bfloat16).float())
            bn.running_var.copy_(bn.running_var.to(torch.bfloat16).float())
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.randn(n, generator=gen) * 0.2 * std)
            bn.running_var.mul_(uniform(n, 0.5, 2.0))
            bn.num_batches_tracked.zero_()
    return model.eval()


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


# ---------------------------------------------------------------------------
# ResNet family
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs and a residual ``Add``.

    With ``downsample`` the shortcut is a strided 1x1 conv + BN, which frees the
    block's output width from its input width; without it the output channels of
    ``conv2``/``bn2`` are tied to the block input through the ``Add``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50 block (v1.5: stride on the 3x3): 1x1 reduce, 3x3, 1x1 expand x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet (same module names, so state dicts line up).

    ``widths`` are the per-stage ``planes``; ``stem_width`` the stem conv width;
    ``stem_kernel``/``stem_stride`` let the tiny variants use a 3x3 stride-1 stem
    suited to 32x32 inputs while ``resnet50`` keeps the ImageNet 7x7/2 stem.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 widths: list[int], stem_width: int, num_classes: int,
                 stem_kernel: int = 7, stem_stride: int = 2) -> None:
        super().__init__()
        self.inplanes = stem_width
        self.conv1 = nn.Conv2d(3, stem_width, stem_kernel, stem_stride, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_tiny() -> nn.Module:
    """ResNet-18 pattern: identity-shortcut BasicBlocks plus strided 1x1 projections."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2], [8, 16, 32], stem_width=8, num_classes=10,
                   stem_kernel=3, stem_stride=1)
    return _randomize(model, INPUT_SHAPES["resnet_tiny"], seed=0)


def resnet_bottleneck() -> nn.Module:
    """ResNet-50 pattern: Bottleneck blocks with expansion 4 and projection shortcuts."""
    torch.manual_seed(1)
    model = ResNet(Bottleneck, [2, 2], [8, 16], stem_width=16, num_classes=10,
                   stem_kernel=3, stem_stride=1)
    return _randomize(model, INPUT_SHAPES["resnet_bottleneck"], seed=1)


def resnet50() -> nn.Module:
    """Full-size ResNet-50 (Bottleneck [3, 4, 6, 3], 1000 classes) for benchmarks only."""
    torch.manual_seed(8)
    model = ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], stem_width=64, num_classes=1000)
    return _randomize(model, INPUT_SHAPES["resnet50"], seed=8)


# ---------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (groups == channels), 1x1 linear project.

    The depthwise conv ties its input and output channels one-to-one, so the
    expand conv, both BNs and the depthwise conv must be pruned together.  The
    residual ``Add`` is used only when stride is 1 and the width is unchanged.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Tiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # (expand_ratio, out_channels, stride)
        cfg = [(1, 8, 1), (4, 12, 2), (4, 12, 1), (4, 16, 2), (4, 16, 1)]
        layers: list[nn.Module] = [*_conv_bn(3, 16, 3, 2), nn.ReLU6(inplace=True)]
        cin = 16
        for t, c, s in cfg:
            layers.append(InvertedResidual(cin, c, s, t))
            cin = c
        layers += [*_conv_bn(cin, 64, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenetv2_tiny() -> nn.Module:
    """MobileNetV2 pattern: inverted residuals with depthwise convs and ReLU6."""
    torch.manual_seed(2)
    return _randomize(MobileNetV2Tiny(), INPUT_SHAPES["mobilenetv2_tiny"], seed=2)


# ---------------------------------------------------------------------------
# DenseNet + Inception
# ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth`` new channels."""

    def __init__(self, cin: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and all earlier outputs.

    This makes every producer's channels appear at different offsets of several
    ``Concat`` outputs, the hardest index bookkeeping case for a pruner.
    """

    def __init__(self, num_layers: int, cin: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1, 1x1->3x3, 1x1->5x5, maxpool->1x1) concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()

        def cbr(a: int, b: int, k: int) -> nn.Sequential:
            return nn.Sequential(*_conv_bn(a, b, k), nn.ReLU(inplace=True))

        self.branch1 = cbr(cin, 8, 1)
        self.branch3 = nn.Sequential(cbr(cin, 6, 1), cbr(6, 8, 3))
        self.branch5 = nn.Sequential(cbr(cin, 4, 1), cbr(4, 4, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, 4, 1))
        self.out_channels = 8 + 8 + 4 + 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class DenseNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = DenseBlock(3, 16, growth=8)          # 16 -> 40 channels, 32x32
        self.trans1 = Transition(40, 20)                  # -> 20 channels, 16x16
        self.inception = InceptionBlock(20)               # -> 24 channels
        self.trans2 = Transition(self.inception.out_channels, 16)  # -> 16 channels, 8x8
        self.block2 = DenseBlock(2, 16, growth=8)         # -> 32 channels
        self.norm = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.block1(self.stem(x)))
        x = self.block2(self.trans2(self.inception(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return self.fc(torch.flatten(x, 1))


def densenet_tiny() -> nn.Module:
    """DenseNet dense blocks and transitions, plus an Inception-style concat block."""
    torch.manual_seed(3)
    return _randomize(DenseNetTiny(), INPUT_SHAPES["densenet_tiny"], seed=3)


# ---------------------------------------------------------------------------
# ShuffleNetV2
# ---------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channel groups; exported as Reshape-Transpose-Reshape, a fixed permutation."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit.

    Stride 1: split channels in half (``chunk``), transform one half, concat,
    shuffle; the untouched half passes straight through, so its channels are
    bound to the unit's input.  Stride 2: both branches transform the full input.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_conv_bn(cin, cin, 3, stride, groups=cin),
                *_conv_bn(cin, branch, 1), nn.ReLU(inplace=True),
            )
            b2_in = cin
        else:
            assert cin == cout
            self.branch1 = nn.Sequential()
            b2_in = branch
        self.branch2 = nn.Sequential(
            *_conv_bn(b2_in, branch, 1), nn.ReLU(inplace=True),
            *_conv_bn(branch, branch, 3, stride, groups=branch),
            *_conv_bn(branch, branch, 1), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Tiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(3, 16, 3, 1), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)                 # 16x16
        self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))  # 8x8
        self.stage3 = nn.Sequential(ShuffleUnit(32, 48, 2), ShuffleUnit(48, 48, 1))  # 4x4
        self.conv5 = nn.Sequential(*_conv_bn(48, 64, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
        x = self.conv5(x).mean([2, 3])   # global pool as ReduceMean, as torchvision does
        return self.fc(x)


def shufflenetv2_tiny() -> nn.Module:
    """ShuffleNetV2 pattern: channel split, concat and channel shuffle."""
    torch.manual_seed(4)
    return _randomize(ShuffleNetV2Tiny(), INPUT_SHAPES["shufflenetv2_tiny"], seed=4)


# ---------------------------------------------------------------------------
# Squeeze-excitation
# ---------------------------------------------------------------------------


class SEConv(nn.Module):
    """SE gate built from 1x1 convs: pool -> reduce -> ReLU -> expand -> Sigmoid -> Mul."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * s


class SELinear(nn.Module):
    """SE gate built from Linear layers, so the gate goes through Flatten/Reshape and Gemm."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.view(b, c, 1, 1)


class SEBlock(nn.Module):
    """SE-ResNet style block: conv-BN-HardSwish x2, SE gate, residual Add."""

    def __init__(self, channels: int, se: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(channels, channels, 3), nn.Hardswish(),
            *_conv_bn(channels, channels, 3),
        )
        self.se = se
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.se(self.body(x)))


class SENetTiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 2), nn.Hardswish())          # 16x16
        self.block1 = SEBlock(16, SEConv(16))
        self.down = nn.Sequential(*_conv_bn(16, 32, 3, 2), nn.ReLU(inplace=True))  # 8x8
        self.block2 = SEBlock(32, SELinear(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def se_net_tiny() -> nn.Module:
    """Squeeze-excitation gates (conv and linear variants) inside residual blocks, HardSwish."""
    torch.manual_seed(5)
    return _randomize(SENetTiny(), INPUT_SHAPES["se_net_tiny"], seed=5)


# ---------------------------------------------------------------------------
# VGG with a Flatten -> Gemm head
# ---------------------------------------------------------------------------


class VGGFlatten(nn.Module):
    """Flattening a 16x4x4 map means each conv channel owns 16 consecutive Gemm inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def cbr(a: int, b: int) -> list[nn.Module]:
            return [*_conv_bn(a, b, 3), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *cbr(3, 8), *cbr(8, 8), nn.MaxPool2d(2),      # 16x16
            *cbr(8, 16), nn.MaxPool2d(2),                 # 8x8
            *cbr(16, 16), nn.MaxPool2d(2),                # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg_flatten() -> nn.Module:
    """VGG-style conv stack whose spatial map is flattened into a Linear head."""
    torch.manual_seed(6)
    return _randomize(VGGFlatten(), INPUT_SHAPES["vgg_flatten"], seed=6)


# ---------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_conv_bn(cin, cout, 3), nn.ReLU(inplace=True),
                         *_conv_bn(cout, cout, 3), nn.ReLU(inplace=True))


class UNetTiny(nn.Module):
    """Two-level U-Net; one decoder stage uses ``nn.Upsample``, the other ``F.interpolate``.

    Decoder convs consume ``Concat(upsampled, skip)``, so their input channels
    come from two unrelated producers at fixed offsets.
    """

    def __init__(self, out_channels: int = 2) -> None:
        super().__init__()
        self.enc1 = DoubleConv(3, 8)            # 32x32
        self.enc2 = DoubleConv(8, 16)           # 16x16
        self.bottleneck = DoubleConv(16, 32)    # 8x8
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = DoubleConv(32 + 16, 16)
        self.dec1 = DoubleConv(16 + 8, 8)
        self.head = nn.Conv2d(8, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.head(d1)


def unet_tiny() -> nn.Module:
    """U-Net pattern: pooling encoder, nearest upsampling, skip concatenation, 2-channel map."""
    torch.manual_seed(7)
    return _randomize(UNetTiny(), INPUT_SHAPES["unet_tiny"], seed=7)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

INPUT_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "resnet_tiny": (1, 3, 32, 32),
    "resnet_bottleneck": (1, 3, 32, 32),
    "mobilenetv2_tiny": (1, 3, 32, 32),
    "densenet_tiny": (1, 3, 32, 32),
    "shufflenetv2_tiny": (1, 3, 32, 32),
    "se_net_tiny": (1, 3, 32, 32),
    "vgg_flatten": (1, 3, 32, 32),
    "unet_tiny": (1, 3, 32, 32),
    "resnet50": (1, 3, 224, 224),
}

MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet_tiny": resnet_tiny,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenetv2_tiny": mobilenetv2_tiny,
    "densenet_tiny": densenet_tiny,
    "shufflenetv2_tiny": shufflenetv2_tiny,
    "se_net_tiny": se_net_tiny,
    "vgg_flatten": vgg_flatten,
    "unet_tiny": unet_tiny,
    "resnet50": resnet50,
}

#: Models too large to bundle as ONNX files; exported only when asked for by name.
ON_DEMAND: frozenset[str] = frozenset({"resnet50"})


def build(name: str) -> nn.Module:
    """Return a fresh eval-mode instance of the named model."""
    return MODELS[name]()


def example_input(name: str, seed: int = 1234) -> torch.Tensor:
    """Deterministic input of the model's shape, independent of the global RNG state."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(INPUT_SHAPES[name], generator=gen)
