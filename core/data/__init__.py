"""Data that ships with convscope: the generated concept dataset and the demo model."""
from .shapes import CATEGORIES, CONCEPTS, ConceptBatch, ConceptDataset, shapes
from .datasets import Batch, Dataset, ImageFolder, as_dataset, image_folder
from .demo import DEMO_CLASSES, demo_model, demo_path

__all__ = ["shapes", "ConceptDataset", "ConceptBatch", "CONCEPTS", "CATEGORIES", "demo_model", "demo_path",
           "DEMO_CLASSES",
           "Batch", "Dataset", "ImageFolder", "as_dataset", "image_folder"]
