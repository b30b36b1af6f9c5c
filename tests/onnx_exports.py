"""Small torch architectures written out in the style of well-known networks, exported to ONNX
the way users export them (``torch.onnx.export``, opset 17, the TorchScript exporter), for the
layer-record tests of the ONNX backend. Each is a few layers of the real design, at 32 x 32.

* ``mobilenet``: MobileNetV3 (Howard et al. 2019): Hardswish stem, depthwise conv, a
  squeeze-excitation gate (mean over (2, 3), 1x1 convs, Hardsigmoid), an inverted residual,
  the last 1x1 conv, adaptive average pooling, Linear-Hardswish-Dropout-Linear;
* ``convnext``: ConvNeXt (Liu et al. 2022): 4x4/4 stem, LayerNorm2d through permutes, blocks of
  7x7 depthwise conv, permute, LayerNorm, Linear, GELU, Linear, layer scale, permute back,
  residual; head: adaptive average pool, LayerNorm2d, Flatten, Linear (torchvision's order);
* ``shufflenet``: ShuffleNetV2 (Ma et al. 2018): torch.chunk on channels, a branch, concat,
  channel shuffle (view, transpose, view), a strided unit, x.mean([2, 3]) head;
* ``vit``: ViT (Dosovitskiy et al. 2021): 4x4/4 patch conv, flatten(2).transpose(1, 2), class
  token, position embedding, pre-norm attention as timm writes it, GELU MLP, x[:, 0] head;
* ``densenet``: DenseNet (Huang et al. 2017): dense layers concatenated, a transition
  (BN-ReLU-1x1-avgpool), final BatchNorm, F.relu, adaptive average pool, Linear;
* ``padded``: F.pad, nn.ZeroPad2d, a crop by slicing, nn.Upsample (nearest, x2) and a
  ConvTranspose2d (stride 2, output_padding 1), ending in global average pooling.
"""
import io
import warnings

import pytest

SIZE = 32


def modules():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class SqueezeExcite(nn.Module):
        def __init__(self, c, squeezed):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeezed, 1), nn.Conv2d(squeezed, c, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.block = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
                                       nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32),
                                       nn.Hardswish(), SqueezeExcite(32, 8), nn.Conv2d(32, 16, 1, bias=False),
                                       nn.BatchNorm2d(16))
            self.last = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.Hardswish())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 5))

        def forward(self, x):
            x = self.stem(x)
            x = x + self.block(x)
            x = self.pool(self.last(x))
            return self.classifier(torch.flatten(x, 1))

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(torch.full((dim, 1, 1), 0.5))

        def forward(self, x):
            h = self.dwconv(x).permute(0, 2, 3, 1)
            h = self.pw2(F.gelu(self.pw1(self.norm(h)))).permute(0, 3, 1, 2)
            return x + self.gamma * h

    class ConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
            self.stage1 = ConvNeXtBlock(16)
            self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, stride=2))
            self.stage2 = ConvNeXtBlock(24)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(LayerNorm2d(24), nn.Flatten(1), nn.Linear(24, 5))

        def forward(self, x):
            x = self.stage2(self.down(self.stage1(self.stem(x))))
            return self.classifier(self.avgpool(x))

    def shuffle(x, groups=2):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, c):
            super().__init__()
            half = c // 2
            self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
                                        nn.Conv2d(half, half, 3, 1, 1, groups=half), nn.BatchNorm2d(half),
                                        nn.Conv2d(half, half, 1), nn.ReLU())

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            return shuffle(torch.cat((a, self.branch(b)), dim=1))

    class ShuffleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.unit = ShuffleUnit(16)
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
            self.conv5 = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU())
            self.fc = nn.Linear(64, 5)

        def forward(self, x):
            x = self.conv5(self.down(self.unit(self.maxpool(self.conv1(x)))))
            return self.fc(x.mean([2, 3]))

    class ViT(nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads = heads
            self.patch = nn.Conv2d(3, dim, 4, stride=4)  # 8 x 8 patches
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 65, dim) * 0.1)
            self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
            self.head = nn.Linear(dim, 5)

        def attend(self, h):
            n, t, d = h.shape
            q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
            t = t + self.attend(self.norm1(t))
            t = t + self.mlp(self.norm2(t))
            return self.head(self.norm(t)[:, 0])

    class DenseLayer(nn.Module):
        def __init__(self, c, growth):
            super().__init__()
            self.norm, self.conv = nn.BatchNorm2d(c), nn.Conv2d(c, growth, 3, padding=1, bias=False)

        def forward(self, x):
            return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                DenseLayer(16, 8), DenseLayer(24, 8),
                nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False), nn.AvgPool2d(2, 2),
                DenseLayer(16, 8), nn.BatchNorm2d(24))
            self.classifier = nn.Linear(24, 5)

        def forward(self, x):
            out = F.relu(self.features(x))
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)                       # 32 -> 30
            self.zero = nn.ZeroPad2d((1, 2, 3, 0))                # left 1, right 2, top 3, bottom 0: 33 x 33
            self.conv2 = nn.Conv2d(8, 8, 3, stride=2)             # 33 -> 16
            self.up = nn.Upsample(scale_factor=2, mode="nearest")  # 16 -> 32
            self.deconv = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)  # 28 -> 56
            self.head = nn.Linear(4, 5)

        def forward(self, x):
            h = F.relu(self.conv1(x))
            h = self.conv2(self.zero(h))
            h = F.pad(h, (2, 2, 1, 1))                            # 16 x 16 -> 18 x 20
            h = self.up(h)[:, :, 4:-4, 3:-9]                      # 36 x 40 -> crop to 28 x 28
            h = F.relu(self.deconv(h))
            return self.head(h.mean((2, 3)))

    return {"mobilenet": MobileNet, "convnext": ConvNeXt, "shufflenet": ShuffleNet, "vit": ViT,
            "densenet": DenseNet, "padded": Padded}


def export(module, size=SIZE, dynamic=True, softmax=False, shape=None):
    """The ONNX bytes of ``module`` (in eval mode) for (N, 3, size, size) images, or (N, *shape)
    ones; ``softmax`` appends a final softmax named 'prob'."""
    torch = pytest.importorskip("torch")
    if softmax:
        module = torch.nn.Sequential(module, torch.nn.Softmax(dim=1))
    module.eval()
    buffer = io.BytesIO()
    axes = {"input": {0: "N"}, "prob" if softmax else "logits": {0: "N"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *(shape or (3, size, size))),), buffer, input_names=["input"],
                          output_names=["prob" if softmax else "logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    return buffer.getvalue()


def exported(name, seed=0, **kwargs):
    """(torch module, ONNX bytes) of one architecture, weights from ``seed``."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    module = modules()[name]().eval()
    return module, export(module, **kwargs)
