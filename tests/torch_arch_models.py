"""Small torch architectures in the style of well-known ones, for the layer-record tests:
MobileNetV3 (SE block, Hardswish/Hardsigmoid), EfficientNet-like MBConv (SiLU + SE), ConvNeXt
(permute + LayerNorm + Linear + GELU) and a ViT (patch embedding, class token, fixed size)."""
import torch, torch.nn.functional as F
from torch import nn

class SE(nn.Module):
    def __init__(self, c, r, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, r, 1); self.act = act(); self.fc2 = nn.Conv2d(r, c, 1); self.gate = gate()
    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))

class InvertedResidual(nn.Module):
    def __init__(self, c, e, stride):
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish()),
            nn.Sequential(nn.Conv2d(e, e, 3, stride, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish()),
            SE(e, 4),
            nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)))
        self.res = stride == 1
    def forward(self, x):
        y = self.block(x)
        return x + y if self.res else y

class MobileNetV3ish(nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()),
            InvertedResidual(8, 16, 1), InvertedResidual(8, 16, 2),
            nn.Sequential(nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.Hardswish()))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(24, k)
    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c); self.pwconv1 = nn.Linear(c, 4 * c); self.act = nn.GELU(); self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)

class ConvNeXtish(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, 4)
        self.stage = nn.Sequential(ConvNeXtBlock(8), ConvNeXtBlock(8))
        self.head = nn.Linear(8, k)
    def forward(self, x):
        return self.head(self.stage(self.stem(x)).mean((2, 3)))

class PosEmbed(nn.Module):
    def __init__(self, t, d):
        super().__init__(); self.pos = nn.Parameter(torch.randn(1, t, d) * 0.1)
    def forward(self):
        return self.pos

class Attention(nn.Module):
    def __init__(self, d):
        super().__init__(); self.qkv = nn.Linear(d, 3 * d); self.proj = nn.Linear(d, d)
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1)
        return self.proj(a @ v)

class EncoderBlock(nn.Module):
    def __init__(self, d):
        super().__init__(); self.ln1 = nn.LayerNorm(d); self.attn = Attention(d); self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

class TinyViT(nn.Module):
    input_shape = (3, 32, 32)
    def __init__(self, d=16, k=3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = PosEmbed(5, d)
        self.encoder = nn.Sequential(EncoderBlock(d), EncoderBlock(d))
        self.norm = nn.LayerNorm(d); self.head = nn.Linear(d, k)
    def forward(self, x):
        n, _, h, w = x.shape
        torch._assert(h == 32 and w == 32, f"Wrong image size {h}x{w}: expected 32x32")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], 1) + self.pos_embed()
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0])


class MBConv(nn.Module):
    """EfficientNet's MBConv: expand, depthwise, SE with SiLU and a sigmoid gate, project; x + f(x)."""

    def __init__(self, c, e):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.SiLU())
        self.se = SE(e, 2, act=nn.SiLU, gate=nn.Sigmoid)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class EfficientNetish(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(8, 16), MBConv(8, 16))
        self.head = nn.Conv2d(8, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, k)

    def forward(self, x):
        return self.fc(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1))
