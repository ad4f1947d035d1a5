"""Model backends behind one interface; ``load_backend("litemedsam")`` is the bundled default."""

from oncoseg.models import litemedsam as _litemedsam  # noqa: F401  (registers the default backend)
from oncoseg.models.base import (
    Backend,
    ImageEmbedding,
    MaskPrediction,
    available_backends,
    load_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "ImageEmbedding",
    "MaskPrediction",
    "available_backends",
    "load_backend",
    "register_backend",
]
