"""Which graph nodes of the torch incremental plan are convs, pools and upsamplings, and the
crop geometry of each (:mod:`._incremental`): the kernel, stride, padding and dilation of
:func:`convscope._incremental.through_window`, the padded original the crops are read
from, and for average pooling the factor map that makes a window mean over zero padding
the operator's own (``count_include_pad=False``, ceil mode, ``divisor_override``)."""
from __future__ import annotations

from ._incremental_ops import Cropped, WindowGeometry, conv_padding, flat, pair

__all__ = ["spec", "window_geometry", "avg_scale", "upsampling"]


def spec(torch, modules, node, args, kwargs):
    """A conv or pool (module or functional call) as ``(kind, options)``, or None."""
    nn, F = torch.nn, torch.nn.functional
    if node.op == "call_module":
        m = modules[node.target]
        if kwargs or len(args) != 1:
            return None
        if isinstance(m, nn.Conv2d):
            return ("conv", dict(weight=m.weight, bias=m.bias, stride=m.stride, padding=m.padding,
                                 dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode))
        if isinstance(m, nn.MaxPool2d):
            return ("max", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                dilation=m.dilation, ceil_mode=m.ceil_mode, return_indices=m.return_indices))
        if isinstance(m, nn.AvgPool2d):
            return ("avg", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                                divisor_override=m.divisor_override))
        return None
    if node.op != "call_function":
        return None
    names = {F.conv2d: ("conv", ("weight", "bias", "stride", "padding", "dilation", "groups")),
             F.max_pool2d: ("max", ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
             F.avg_pool2d: ("avg", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                    "divisor_override"))}.get(node.target)
    if names is None or any(isinstance(v, Cropped) for v in flat((args[1:], kwargs))):
        return None
    options = {"stride": 1 if names[0] == "conv" else None, "padding": 0, "dilation": 1, "groups": 1,
               "bias": None, "ceil_mode": False, "return_indices": False, "count_include_pad": True,
               "divisor_override": None, "padding_mode": "zeros"}
    options.update(zip(names[1], args[1:]), **kwargs)
    return names[0], options


def window_geometry(plan, node, args, kwargs):
    """A conv or pool's :class:`WindowGeometry` (padded original made once), or None."""
    if node.name in plan.geometry:
        return plan.geometry[node.name]
    torch, F = plan._torch, plan._torch.nn.functional
    found = spec(torch, plan.modules, node, args, kwargs) if node.op in ("call_module", "call_function") else None
    x = plan.orig.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
    if found is None or not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    kind, o = found
    if kind == "conv":
        if o["padding_mode"] != "zeros" or not isinstance(o["weight"], torch.Tensor) or o["weight"].dim() != 4:
            return None
        kernel, stride, dilation = tuple(o["weight"].shape[2:]), pair(o["stride"]), pair(o["dilation"])
        padding = conv_padding(o["padding"], kernel, dilation)
        w, bias, groups = o["weight"], o["bias"], o["groups"]
        run = lambda c: F.conv2d(c, w, bias, stride, 0, dilation, groups)  # noqa: E731
        fill, scale = 0.0, None
    else:
        if o.get("return_indices"):
            return None
        kernel = pair(o["kernel_size"])
        stride = pair(o["stride"]) if o["stride"] not in (None, []) else kernel
        p = pair(o["padding"])
        padding = (p[0], p[1], p[0], p[1])
        if kind == "max":
            dilation = pair(o["dilation"])
            run = lambda c: F.max_pool2d(c, kernel, stride, 0, dilation)  # noqa: E731
            fill, scale = float("-inf"), None
        else:
            dilation = (1, 1)
            run = lambda c: F.avg_pool2d(c, kernel, stride, 0)  # noqa: E731
            pool = lambda t: F.avg_pool2d(t, kernel, stride, p, o["ceil_mode"], o["count_include_pad"],  # noqa: E731
                                          o["divisor_override"])
            fill, scale = 0.0, avg_scale(torch, pool, x, kernel, stride, padding)
    out = plan.orig[node]
    extra = [max(0, (out.shape[2 + a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1
                 - (x.shape[2 + a] + padding[a] + padding[a + 2])) for a in (0, 1)]
    base = F.pad(x, (padding[1], padding[3] + extra[1], padding[0], padding[2] + extra[0]), value=fill)
    geometry = WindowGeometry(kernel, stride, padding, dilation, run, base, scale)
    plan.geometry[node.name] = geometry
    return geometry


def avg_scale(torch, m, x, kernel, stride, padding):
    """Average pooling on crops is a window mean over zero padding; the factor map turns it
    into the module's own (``count_include_pad=False``, ceil mode, ``divisor_override``)."""
    F = torch.nn.functional
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    exact = m(ones)
    plain = F.avg_pool2d(F.pad(ones, (padding[1], padding[3] + stride[1] + kernel[1], padding[0],
                                      padding[2] + stride[0] + kernel[0])), kernel, stride, 0)
    plain = plain[..., :exact.shape[2], :exact.shape[3]]
    factor = exact / plain
    return None if bool((factor == 1).all()) else factor


def upsampling(plan, node, args, kwargs):
    """(integer scale (h, w), mode) of an nn.Upsample or F.interpolate that crops, else None."""
    torch = plan._torch
    if node.op == "call_module" and isinstance(plan.modules[node.target], torch.nn.Upsample):
        m = plan.modules[node.target]
        mode, align = m.mode, m.align_corners
    elif node.op == "call_function" and node.target is torch.nn.functional.interpolate:
        mode, align = kwargs.get("mode", args[3] if len(args) > 3 else "nearest"), kwargs.get("align_corners")
    else:
        return None
    x, out = plan.orig[node.args[0]], plan.orig[node]
    if mode not in ("nearest", "bilinear") or align or not isinstance(args[0], Cropped) or out.dim() != 4:
        return None
    scale = tuple(out.shape[2 + a] // x.shape[2 + a] for a in (0, 1))
    if any(out.shape[2 + a] != scale[a] * x.shape[2 + a] for a in (0, 1)):
        return None
    return scale, mode
