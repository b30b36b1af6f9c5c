"""Small torch nets for the LRP and DeepLift tests, shared by the three backends.

The ONNX and Keras tests import these, export or port the same weights and compare relevance
with torch's. Every net is built by :func:`build` with seeded weights and non-trivial BatchNorm
statistics, in eval mode.

* :class:`VGGStyle`: a plain stack (conv, ReLU, max and average pools, adaptive pool, linear,
  dropout); the layers Captum's ``LRP`` supports, flatten done in ``forward``.
* :class:`ResNetStyle`: conv + BatchNorm stems and two basic blocks whose residual is an
  ``a + b`` in ``forward`` (one block with a strided 1x1 projection); Captum's LRP refuses it.
* :class:`DenseNetStyle`: a dense block whose layers are BN-ReLU-conv and ``torch.cat`` their
  input with their output, a transition (BN-ReLU-1x1 conv-avg pool) and a final BN-ReLU-pool.

Input: (N, 3, 64, 64) (any multiple of 16 for VGGStyle, of 4 for the others).
"""
import torch
import torch.nn.functional as F
from torch import nn


class VGGStyle(nn.Module):
    """conv-relu-conv-relu-maxpool-conv-relu-avgpool-conv-relu-adaptiveavgpool(4)-fc-relu-dropout-fc."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the input (or its strided 1x1 conv-BN projection), then ReLU."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.down is None else self.down(x)
        return F.relu(out + shortcut)


class ResNetStyle(nn.Module):
    """stem (conv-BN-ReLU-maxpool), block(8->8), block(8->16, stride 2), global avg pool, fc."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv 3x3 producing ``growth`` channels, concatenated after its input."""

    def __init__(self, c_in, growth):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class DenseNetStyle(nn.Module):
    """stem conv-BN-ReLU, dense block of 2 layers (growth 4), transition, dense layer, BN-ReLU-pool, fc."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm2d(8)
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.transition = nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = DenseLayer(8, 4)
        self.norm_final = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = F.relu(self.norm0(self.conv0(x)))
        x = self.block2(self.transition(self.block1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.norm_final(x)), 1)
        return self.fc(torch.flatten(x, 1))


NETS = {"vgg": VGGStyle, "resnet": ResNetStyle, "densenet": DenseNetStyle}


def randomise_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters (eval differs from identity)."""
    g = torch.Generator().manual_seed(seed + 1000)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def build(name, seed=0, classes=5):
    """The net ``name`` ("vgg", "resnet", "densenet") with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    model = NETS[name](classes=classes)
    return randomise_bn(model, seed).eval()


def images(n=2, size=64, seed=0):
    """Seeded test images in [0, 1], (n, 3, size, size) float32 (a NumPy array)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g).numpy()
