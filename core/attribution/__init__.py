"""Attribution: which pixels matter for a decision.

Every method is ``NAME(model, x, target=None, ...)``: ``model`` is anything
:func:`convscope.load` accepts, ``x`` a batch (N, C, H, W), ``target`` the class to explain
(None: the predicted one; an int; one int per sample; or a callable on the outputs). The
result is an :class:`AttributionMaps`: (N, H, W) maps at the input size that render
themselves (``.save(path)``, notebooks) and feed :mod:`convscope.metrics`.

- gradients: :func:`saliency`, :func:`smoothgrad`, :func:`integrated_gradients`,
  :func:`input_x_gradient`, :func:`deconvnet`, :func:`guided_backprop`
- perturbation: :func:`occlusion`
- class activation maps: :func:`cam`, :func:`grad_cam`, :func:`grad_cam_pp`,
  :func:`score_cam`, :func:`layer_cam`, :func:`eigen_cam`, :func:`guided_grad_cam`
"""
from .cam import cam, eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, layer_cam, score_cam
from .gradients import deconvnet, guided_backprop, input_x_gradient, integrated_gradients, saliency, smoothgrad
from .occlusion import occlusion
from .result import AttributionMaps
from . import cam_variants, deeplift, noise_tunnel, perturbation, relevance
_families = (cam_variants, deeplift, noise_tunnel, perturbation, relevance)  # before ``deeplift`` the function shadows the module
from .cam_variants import *  # noqa: F401,F403
from .deeplift import *  # noqa: F401,F403
from .noise_tunnel import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403
from .relevance import *  # noqa: F401,F403

__all__ = ["saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "deconvnet", "guided_backprop",
           "occlusion", "cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam",
           "AttributionMaps"]
for _family in _families:
    __all__ += _family.__all__
