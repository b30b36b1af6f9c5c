"""A zoo of well-known architectures, written out as in their papers and torchvision, scaled
down to 32 px inputs and a few channels (random weights, eval mode), and their ONNX exports.

Each builder returns a module in eval mode with non-trivial BatchNorm statistics;
``MIDDLE[name]`` is a spatial layer in the middle of the net (after an SE block where the
architecture has one), named as the torch backend names modules.
"""
import io

import torch
import torch.nn.functional as F
from torch import nn

from zoo_transformers import SIZE, ConvNeXt, VisionTransformer


def conv_bn(c_in, c_out, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: ``x * gate(fc2(act(fc1(avgpool(x)))))``."""

    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


# --------------------------------------------------------------------------- ResNet (He et al. 2016)
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, width, stride=1):
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 4))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- DenseNet (Huang et al. 2017)
class DenseLayer(nn.Module):
    def __init__(self, c_in, growth, bn_size):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers, c_in, growth, bn_size=2):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(c_in + i * growth, growth, bn_size))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm, self.relu = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    def __init__(self, classes=5, growth=8):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 16, 3, 1, 1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(16))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        self.features.add_module("denseblock1", DenseBlock(3, 16, growth))
        self.features.add_module("transition1", Transition(16 + 3 * growth, 20))
        self.features.add_module("denseblock2", DenseBlock(3, 20, growth))
        self.features.add_module("norm5", nn.BatchNorm2d(20 + 3 * growth))
        self.classifier = nn.Linear(20 + 3 * growth, classes)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


# --------------------------------------------------------------------------- Inception (Szegedy et al. 2015)
class Inception(nn.Module):
    """GoogLeNet's block: 1x1, 1x1 -> 3x3, 1x1 -> 5x5 and 3x3 max pool -> 1x1, concatenated."""

    def __init__(self, c_in, ch1, ch3red, ch3, ch5red, ch5, pool_proj):
        super().__init__()
        self.branch1 = conv_bn(c_in, ch1, 1)
        self.branch2 = nn.Sequential(conv_bn(c_in, ch3red, 1), conv_bn(ch3red, ch3, 3))
        self.branch3 = nn.Sequential(conv_bn(c_in, ch5red, 1), conv_bn(ch5red, ch5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(c_in, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = conv_bn(3, 16, 3, 2)
        self.inception3a = Inception(16, 8, 8, 12, 4, 6, 6)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(32, 12, 8, 12, 4, 8, 8)
        self.avgpool, self.dropout = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2)
        self.fc = nn.Linear(40, classes)

    def forward(self, x):
        x = self.inception4a(self.maxpool3(self.inception3a(self.conv1(x))))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# --------------------------------------------------------------------------- MobileNetV3 (Howard et al. 2019)
class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise k x k -> (SE) -> project 1x1, a residual where shapes allow."""

    def __init__(self, c_in, expanded, c_out, k, stride, act, se):
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        layers = [conv_bn(c_in, expanded, 1, act=act)] if expanded != c_in else []
        layers.append(conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
        if se:
            layers.append(se(expanded))
        layers.append(conv_bn(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res_connect else out


def _mobilenet_se(c):
    return SqueezeExcitation(c, max(8, c // 4), nn.ReLU, nn.Hardsigmoid)


class MobileNetV3(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=hs),
            InvertedResidual(16, 16, 16, 3, 2, re, _mobilenet_se),
            InvertedResidual(16, 48, 24, 3, 1, re, None),
            InvertedResidual(24, 64, 24, 5, 1, hs, _mobilenet_se),
            InvertedResidual(24, 72, 32, 5, 2, hs, _mobilenet_se),
            conv_bn(32, 64, 1, act=hs))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(64, 48), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(48, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------- EfficientNet (Tan and Le 2019)
class MBConv(nn.Module):
    def __init__(self, c_in, ratio, c_out, k, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and c_in == c_out
        expanded = c_in * ratio
        layers = [conv_bn(c_in, expanded, 1, act=nn.SiLU)] if ratio != 1 else []
        layers += [conv_bn(expanded, expanded, k, stride, groups=expanded, act=nn.SiLU),
                   SqueezeExcitation(expanded, max(1, c_in // 4), nn.SiLU, nn.Sigmoid),
                   conv_bn(expanded, c_out, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res_connect else out  # no stochastic depth in eval mode


class EfficientNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.SiLU),
            MBConv(16, 1, 16, 3, 1),
            MBConv(16, 4, 24, 3, 2),
            MBConv(24, 4, 24, 5, 1),
            conv_bn(24, 64, 1, act=nn.SiLU))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------- ShuffleNetV2 (Ma et al. 2018)
def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.stride, half = stride, c_out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(c_in, c_in, 3, stride, groups=c_in, act=None), conv_bn(c_in, half, 1))
        else:
            self.branch1 = nn.Sequential()
        b_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(b_in, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = conv_bn(3, 16, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(32, 48, 2), ShuffleUnit(48, 48, 1))
        self.conv5 = conv_bn(48, 64, 1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.conv5(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(x.mean([2, 3]))


# --------------------------------------------------------------------------- RegNet (Radosavovic et al. 2020)
class ResBottleneckBlock(nn.Module):
    """1x1 -> grouped 3x3 (stride) -> SE -> 1x1, shortcut projected where shapes change."""

    def __init__(self, c_in, c_out, stride, group_width=8, se_ratio=0.25):
        super().__init__()
        self.proj = None
        if c_in != c_out or stride != 1:
            self.proj = conv_bn(c_in, c_out, 1, stride, act=None)
        self.f = nn.Sequential()
        self.f.add_module("a", conv_bn(c_in, c_out, 1))
        self.f.add_module("b", conv_bn(c_out, c_out, 3, stride, groups=c_out // group_width))
        self.f.add_module("se", SqueezeExcitation(c_out, int(round(se_ratio * c_in))))
        self.f.add_module("c", conv_bn(c_out, c_out, 1, act=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.trunk_output = nn.Sequential(
            nn.Sequential(ResBottleneckBlock(16, 24, 2), ResBottleneckBlock(24, 24, 1)),
            nn.Sequential(ResBottleneckBlock(24, 48, 2)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        x = self.trunk_output(self.stem(x))
        return self.fc(self.avgpool(x).flatten(start_dim=1))


# --------------------------------------------------------------------------- the zoo
ZOO = {"resnet": ResNet, "densenet": DenseNet, "inception": InceptionNet, "mobilenet_v3": MobileNetV3,
       "efficientnet": EfficientNet, "convnext": ConvNeXt, "shufflenet_v2": ShuffleNetV2, "regnet": RegNet,
       "vit": VisionTransformer}

# a spatial layer in the middle of each net (after an SE block where there is one)
MIDDLE = {"resnet": "layer1.1", "densenet": "features.transition1.conv", "inception": "inception3a",
          "mobilenet_v3": "features.3.block.2", "efficientnet": "features.2.block.2",
          "convnext": "features.1.0", "shufflenet_v2": "stage2.0", "regnet": "trunk_output.0.0.f.se",
          "vit": "conv_proj"}


def build(name, seed=0):
    """The architecture ``name`` with random weights (fixed seed) and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ZOO[name]()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def export(model) -> bytes:
    """The ONNX export (opset 17, TorchScript exporter) of ``model``, with a dynamic batch axis."""
    buffer = io.BytesIO()
    # with gradients enabled, nn.MultiheadAttention takes its decomposed path, not the fused
    # aten::_native_multi_head_attention, which has no ONNX symbolic
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return buffer.getvalue()
