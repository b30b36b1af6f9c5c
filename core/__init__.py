"""convscope: see what a convolutional network has learned and why it decides as it does.

One NumPy core, any framework: ``convscope.load(model)`` wraps a PyTorch module, a Keras
model or an ONNX file in a Backend, and every method runs on it.
"""
from ._plugins import installed_backends, load
from .backend import Backend, Gradients, Layer
from . import data

__version__ = "0.1.0"

__all__ = ["load", "installed_backends", "Backend", "Gradients", "Layer", "data", "__version__"]
