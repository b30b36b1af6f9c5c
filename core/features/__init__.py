"""What units respond to: filters, activation maps, receptive fields, top activating
patches, nearest neighbours and embeddings.

Every function takes ``model`` (anything :func:`convscope.load` takes); functions that
walk a dataset stream it in batches (see :mod:`convscope.data.datasets`), show a tqdm bar
and accept ``client=`` to run on Dask distributed. Results render themselves
(``.save(path)``, ``.to_rgb()``, notebook display).
"""
from ._common import SCALES
from . import concept_vectors
from .concept_vectors import *  # noqa: F401,F403
from .embedding import TSNE, Embedding, embed, grid_assignment, pca
from .filters import Filters, filters
from .maps import ActivationMaps, activation_maps
from .neighbors import Features, Neighbors, layer_features, nearest_neighbors
from .receptive_field import ReceptiveField, receptive_field
from .top_patches import TopPatches, top_patches

__all__ = ["filters", "Filters", "activation_maps", "ActivationMaps", "receptive_field", "ReceptiveField",
           "top_patches", "TopPatches", "layer_features", "Features", "nearest_neighbors", "Neighbors",
           "embed", "Embedding", "TSNE", "pca", "grid_assignment", "SCALES", *concept_vectors.__all__]
