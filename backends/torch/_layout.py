"""Channels-last batches on the CPU: the same numbers within float rounding, up to 2x faster.

Fed a channels-last input, PyTorch's CPU convolutions (oneDNN) keep that layout through the
network, and most of them run faster in it. Only the input changes layout; the module's
weights stay as they are. Measured with torch 2.13 on one thread, forward pass, time against
the NCHW pass:

- the demo model at 64 x 64: 0.46-0.52 at batches of 4-64;
- ResNet-18 at 224: 0.87 at a batch of 4 and 0.80 at 16, but 0.97 at 2 and 1.46 at 1; its
  gradient 0.85-0.90 at batches of 4-16;
- the test suite's MobileNetV3, ConvNeXt, ShuffleNet and DenseNet blocks: 0.44-0.98 at
  batches of 4-16.

CPU batches of at least :data:`MIN_BATCH` images therefore go in channels-last in forward
passes (scores and activations: occlusion, the perturbation family, Score-CAM, features).
Gradient passes stay in NCHW. The layouts round differently, and a gradient is not continuous
in its input: where a max pool's window holds near-equal values (integrated gradients' steps
near a black baseline), a last-bit difference moves its argmax and the gradient with it. That
put integrated gradients 1e-3 apart from Captum's in places, against 1e-7 in NCHW, where
convscope runs the same kernels as the model's own autograd.

A model that cannot take that layout fails in it only: ``x.view(n, -1)`` on a feature map
needs the NCHW strides. The pass then runs again in NCHW, the module stays in NCHW from then
on, and ``backend.choices`` says so. When NCHW fails too, its own error is raised.
"""
from __future__ import annotations

__all__ = ["Layout", "MIN_BATCH"]

#: The smallest CPU batch that runs channels-last (ResNet-18 is slower so at 1, even at 2).
MIN_BATCH = 4


class Layout:
    """The input layout of one module's passes, shared by the backends over that module."""

    def __init__(self):
        self.refused = None  # why the module runs in NCHW, once a channels-last pass failed
        self._used = False

    def tensor(self, t):
        """``t`` in channels-last when it is a CPU batch that gains from it, else ``t`` itself."""
        if (self.refused is None and t.dim() == 4 and t.shape[0] >= MIN_BATCH and t.device.type == "cpu"
                and t.is_floating_point()):
            import torch

            self._used = True
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def run(self, method, *args):
        """``method(*args)``; when its pass ran channels-last and raised a RuntimeError, again in
        NCHW, which the module keeps if that pass runs."""
        self._used = False
        try:
            return method(*args)
        except RuntimeError as err:
            if not self._used:
                raise
            self.refused = f"NCHW: the model failed on a channels-last batch ({str(err).splitlines()[0][:160]})"
        try:
            return method(*args)
        except RuntimeError:
            self.refused = None  # NCHW fails as well: not the layout's doing
            raise
