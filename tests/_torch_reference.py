"""Written-out torch references for the CAM tests: activations and gradients read with hooks
and ``retain_grad`` from the model's own autograd, not through convscope."""
import copy

import numpy as np
import torch


def out_of_place(net):
    """A copy of ``net`` whose ReLUs are out of place: an in-place ReLU would overwrite the
    outputs (of a norm, say) that the hooks keep."""
    twin = copy.deepcopy(net)
    for m in twin.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return twin


def hooked_gradients(net, x, layers, classes=None):
    """(activations, gradients of the explained class scores at ``layers``, the input gradient,
    the classes), float64; the classes default to each image's top score."""
    mods = dict(net.named_modules())
    store = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            store[name] = output
        return hook

    hooks = [mods[n].register_forward_hook(keep(n)) for n in layers]
    try:
        xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
        out = net(xt)
        classes = out.argmax(1).numpy() if classes is None else np.asarray(classes)
        out[np.arange(len(x)), classes].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    acts = {n: store[n].detach().double().numpy() for n in layers}
    grads = {n: store[n].grad.double().numpy() for n in layers}
    return acts, grads, xt.grad.double().numpy(), classes
