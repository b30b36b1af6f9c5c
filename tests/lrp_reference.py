"""A written-out LRP reference in NumPy (float64) on a small net: every layer a dense matrix.

The formulas are those of Montavon et al. 2019 (and their tutorial), with the parameters and
names of Zennit, written per layer with no autograd: a conv, an average pool and a linear
layer are each ``z = M a + b`` with ``M`` built entry by entry from the kernel, so a rule's
modified weights are the same function of ``M`` (``M+``, ``M^2``, the support of ``M``). The
net (:class:`SmallNet`, 8 x 8 input) has conv, BatchNorm (merged by hand), ReLU, max pool,
a residual addition, a concatenation, an average pool and a linear layer.
"""
import numpy as np
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 2, 1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = h + torch.relu(self.conv2(h))
        h = torch.cat([h, torch.relu(self.conv3(h))], 1)
        return self.fc(torch.flatten(self.avg(h), 1))


def build(seed=0):
    torch.manual_seed(seed)
    net = SmallNet().double()
    with torch.no_grad():
        bn = net.bn1
        bn.running_mean.copy_(torch.randn(4) * 0.1), bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.weight.copy_(torch.rand(4) + 0.5), bn.bias.copy_(torch.randn(4) * 0.1)
    return net.eval()


def conv_matrix(w, shape, padding):
    """Dense M (out size, in size) of a stride-1 conv with weights w on inputs ``shape`` (C, H, W)."""
    o_, c_, kh, kw = w.shape
    c, h, wd = shape
    ho, wo = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    m = np.zeros((o_, ho, wo, c, h, wd))
    for o in range(o_):
        for y in range(ho):
            for x in range(wo):
                for dy in range(kh):
                    for dx in range(kw):
                        iy, ix = y + dy - padding, x + dx - padding
                        if 0 <= iy < h and 0 <= ix < wd:
                            m[o, y, x, :, iy, ix] = w[o, :, dy, dx]
    return m.reshape(o_ * ho * wo, c * h * wd)


def avg_matrix(shape, k):
    c, h, w = shape
    m = np.zeros((c, h // k, w // k, c, h, w))
    for ch in range(c):
        for y in range(h // k):
            for x in range(w // k):
                m[ch, y, x, ch, y * k:(y + 1) * k, x * k:(x + 1) * k] = 1.0 / (k * k)
    return m.reshape(c * (h // k) * (w // k), c * h * w)


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def rule_relevance(rule, a, m, b, r, support=None):
    """R_in of one layer z = M a + b under ``rule`` (a convscope Rule), written out."""
    p = lambda t: np.maximum(t, 0)  # noqa: E731
    n = lambda t: np.minimum(t, 0)  # noqa: E731
    b = np.zeros(m.shape[0]) if (b is None or rule.zero_bias) else b
    e = rule.stabilizer
    if rule.name in ("epsilon", "zero"):
        z = m @ a + b
        if rule.name == "zero":
            s = np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, z))
        else:
            s = r / stab(z, rule.epsilon)
        return a * (m.T @ s)
    if rule.name == "gamma":
        mg, bg = m + rule.gamma * p(m), b + rule.gamma * p(b)
        return a * (mg.T @ (r / stab(mg @ a + bg, e)))
    if rule.name in ("zplus", "alphabeta"):
        alpha, beta = (1.0, 0.0) if rule.name == "zplus" else (rule.alpha, rule.beta)
        sp = r / stab(p(m) @ p(a) + n(m) @ n(a) + p(b), e)
        sn = r / stab(n(m) @ p(a) + p(m) @ n(a) + n(b), e)
        return (alpha * (p(a) * (p(m).T @ sp) + n(a) * (n(m).T @ sp))
                - beta * (p(a) * (n(m).T @ sn) + n(a) * (p(m).T @ sn)))
    if rule.name in ("wsquare", "flat"):
        mm = m * m if rule.name == "wsquare" else support
        return mm.T @ (r / stab(mm @ np.ones_like(a), e))
    if rule.name == "zbox":
        lo, hi = np.full_like(a, rule.low), np.full_like(a, rule.high)
        z = (m @ a + b) - (p(m) @ lo + p(b)) - (n(m) @ hi + n(b))
        s = r / stab(z, e)
        return a * (m.T @ s) - lo * (p(m).T @ s) - hi * (n(m).T @ s)
    raise ValueError(rule.name)


def reference_lrp(net, x, target, rules, sum_stabilizer=1e-6):
    """Relevance (N, 3, 8, 8) at the input; ``rules``: {layer name: Rule}; BN merged into conv1."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    scale = p["bn1.weight"] / np.sqrt(p["bn1.running_var"] + net.bn1.eps)
    w1 = p["conv1.weight"] * scale[:, None, None, None]
    b1 = (p["conv1.bias"] - p["bn1.running_mean"]) * scale + p["bn1.bias"]
    m1, m2, m3 = conv_matrix(w1, (3, 8, 8), 1), conv_matrix(p["conv2.weight"], (4, 4, 4), 1), \
        conv_matrix(p["conv3.weight"], (4, 4, 4), 0)
    s1, s2, s3 = conv_matrix(np.ones_like(w1), (3, 8, 8), 1), conv_matrix(np.ones((4, 4, 3, 3)), (4, 4, 4), 1), \
        conv_matrix(np.ones((2, 4, 1, 1)), (4, 4, 4), 0)
    b1f, b2f, b3f = (np.repeat(v, k) for v, k in ((b1, 64), (p["conv2.bias"], 16), (p["conv3.bias"], 16)))
    mavg = avg_matrix((6, 4, 4), 2)
    wfc, bfc = p["fc.weight"], p["fc.bias"]
    out = []
    for xi, t in zip(x.astype(np.float64), target):
        a0 = xi.reshape(-1)
        z1 = m1 @ a0 + b1f
        a1 = np.maximum(z1, 0).reshape(4, 8, 8)
        win = a1.reshape(4, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(4, 4, 4, 4)
        h = win.max(-1)
        arg = win.argmax(-1)  # first maximum, as torch
        a2 = np.maximum(m2 @ h.reshape(-1) + b2f, 0)
        hsum = h.reshape(-1) + a2
        a3 = np.maximum(m3 @ hsum + b3f, 0)
        cat = np.concatenate([hsum, a3])
        pooled = mavg @ cat
        score = wfc @ pooled + bfc
        r = np.zeros(3)
        r[t] = score[t]
        # fc, average pool (epsilon with sum_stabilizer, no bias), concatenation
        r_pool = rule_relevance(rules["fc"], pooled, wfc, bfc, r, np.ones_like(wfc))
        zc = mavg @ cat
        r_cat = cat * (mavg.T @ (r_pool / stab(zc, sum_stabilizer)))
        r_h, r_a3 = r_cat[:64], r_cat[64:]
        r_h = r_h + rule_relevance(rules["conv3"], hsum, m3, b3f, r_a3, s3)  # the ReLU passes
        # residual: shares x_i / (x_1 + x_2)
        share = r_h / stab(hsum, sum_stabilizer)
        r_pool_out, r_a2 = h.reshape(-1) * share, a2 * share
        r_pool_out = r_pool_out + rule_relevance(rules["conv2"], h.reshape(-1), m2, b2f, r_a2, s2)
        # max pool: winner takes all
        r_win = np.zeros((4, 4, 4, 4))
        np.put_along_axis(r_win, arg[..., None], r_pool_out.reshape(4, 4, 4)[..., None], -1)
        r_a1 = r_win.reshape(4, 4, 4, 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1)
        out.append(rule_relevance(rules["conv1"], a0, m1, b1f, r_a1, s1).reshape(3, 8, 8))
    return np.stack(out)
