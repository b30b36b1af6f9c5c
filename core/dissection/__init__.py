"""Network Dissection and weakly supervised segmentation: which units detect which concepts,
and how well saliency or CAM maps segment objects."""
from .concepts import Broden, ConceptArrays, concept_source
from .dissect import dissect
from .result import Dissection, compare, label_changes
from .segment import centre_box, segment, segmentation_iou

__all__ = ["dissect", "Dissection", "compare", "label_changes", "Broden", "ConceptArrays", "concept_source",
           "segment", "segmentation_iou", "centre_box"]
