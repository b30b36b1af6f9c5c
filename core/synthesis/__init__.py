"""Images made by optimisation: activation maximisation, diversity, DeepDream, feature
inversion, texture synthesis and style transfer, fooling images.

Everything runs on :meth:`Backend.gradient` with objectives computed in NumPy: one
forward and one backward pass per step, on torch, Keras and ONNX models alike.
"""
from .objectives import (Objective, Sum, as_objective, channel, class_logit, class_probability, direction, layer_l2,
                         neuron, weighted)
from .gram import diversity, gram, gram_similarity
from .params import ImageParam
from .transforms import Transforms
from .optim import SGD, Adam
from .recording import FrameRecorder, save_gif
from .visualize import Visualization, evaluate, visualize
from .deepdream import Dream, deepdream
from .inversion import Inversion, invert, psnr
from .texture import StyleTransfer, Texture, style_loss, style_transfer, texture
from .efros_leung import efros_leung
from .fooling import Fooling, fool

__all__ = ["visualize", "evaluate", "Visualization", "Objective", "Sum", "neuron", "channel", "layer_l2",
           "class_logit", "class_probability", "direction", "weighted", "as_objective", "diversity", "gram",
           "gram_similarity", "ImageParam", "Transforms", "Adam", "SGD", "FrameRecorder", "save_gif",
           "deepdream", "Dream", "invert", "Inversion", "psnr", "texture", "style_transfer", "style_loss", "Texture",
           "StyleTransfer", "efros_leung", "fool", "Fooling"]
