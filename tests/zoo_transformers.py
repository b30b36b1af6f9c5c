"""The zoo's two designs from the transformer era, scaled down like the rest of the zoo: a
ConvNeXt (a ConvNet restyled after the Swin transformer: channels-last LayerNorm and MLP,
layer scale) and a Vision Transformer (patches as tokens, a class token, pre-norm attention).
"""
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 32


# --------------------------------------------------------------------------- ConvNeXt (Liu et al. 2022)
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=0.5):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class ConvNeXt(nn.Module):
    def __init__(self, classes=5, dims=(16, 32)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)),
            nn.Sequential(CNBlock(dims[0]), CNBlock(dims[0])),
            nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, 2)),
            nn.Sequential(CNBlock(dims[1])))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[1], classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


# --------------------------------------------------------------------------- ViT (Dosovitskiy et al. 2021)
class EncoderBlock(nn.Module):
    def __init__(self, heads, hidden, mlp):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, hidden))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    input_shape = (3, SIZE, SIZE)

    def __init__(self, classes=5, patch=4, hidden=32, heads=2, mlp=64, layers=2):
        super().__init__()
        self.patch_size, self.hidden_dim = patch, hidden
        self.conv_proj = nn.Conv2d(3, hidden, patch, patch)
        seq = (SIZE // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, seq, hidden) * 0.1)
        self.layers = nn.Sequential(*[EncoderBlock(heads, hidden, mlp) for _ in range(layers)])
        self.ln = nn.LayerNorm(hidden, eps=1e-6)
        self.heads = nn.Linear(hidden, classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.heads(x[:, 0])
