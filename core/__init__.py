"""convscope: see what a convolutional network has learned and why it decides as it does.

One NumPy core, any framework: ``convscope.load(model)`` wraps a PyTorch module, a Keras
model or an ONNX file in a Backend, and every method runs on it.
"""
from ._plugins import installed_backends, load, register_backend
from .backend import Backend, BackendBase, Gradients, Layer, unchecked
from .preprocess import Preprocess
from . import preprocess, validate
from . import attribution, data, dissection, features, metrics, render, synthesis
from .attribution import (cam, deconvnet, eigen_cam, grad_cam, grad_cam_pp, guided_backprop, guided_grad_cam,
                          input_x_gradient, integrated_gradients, layer_cam, occlusion, saliency, score_cam, smoothgrad)
from .attribution import (ablation_cam, deeplift, deeplift_shap, eigen_grad_cam, feature_ablation, full_grad,
                          gradient_shap, hires_cam, kernel_shap, lime, lrp, multi_layer_cam, noise_tunnel, rise,
                          shapley_sampling, xgrad_cam)
from .metrics import compare

__version__ = "0.1.0"

__all__ = ["load", "installed_backends", "Backend", "Gradients", "Layer", "__version__",
           "attribution", "data", "dissection", "features", "metrics", "render", "synthesis",
           "saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "deconvnet", "guided_backprop",
           "occlusion", "cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam"]
__all__ += ["BackendBase", "unchecked", "register_backend", "validate", "preprocess", "Preprocess", "compare"]
__all__ += ["lrp", "deeplift", "deeplift_shap", "gradient_shap", "noise_tunnel", "rise", "feature_ablation",
            "shapley_sampling", "kernel_shap", "lime", "hires_cam", "xgrad_cam", "eigen_grad_cam", "ablation_cam",
            "full_grad", "multi_layer_cam"]
