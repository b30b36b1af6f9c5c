"""Small torch architectures for the tests: every way a ReLU can appear, and a residual net."""
import torch
import torch.nn.functional as F
from torch import nn


class MixedReLUNet(nn.Module):
    """ReLU as an in-place module, one module used twice, F.relu, torch.relu, Tensor.relu and ReLU6."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shared = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.conv5 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, classes)

    def forward(self, x):
        x = self.relu_inplace(self.conv1(x))
        x = self.shared(self.conv2(x))
        x = self.shared(self.conv3(x))
        x = self.pool(self.relu6(self.conv4(x) * 3))
        x = F.relu(self.conv5(x))
        x = torch.relu(self.fc(x.flatten(1)))
        return self.fc2(x.relu())


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_bn(model, seed=0):
    """Give BatchNorm layers non-trivial statistics so eval mode differs from identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def scaled_small_net(seed=0):
    """conv-relu-pool-conv-relu-gap-linear, 5 classes, weights x4 so that scores and gradients are
    O(1) and tolerances mean something (the perturbation, noise-tunnel and incremental tests)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    return net.eval()
