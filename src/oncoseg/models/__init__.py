"""Model backends behind one interface; ``load_backend("litemedsam")`` is the bundled default, ``"sam3"`` runs
Meta's SAM3 from a local weights folder."""

from oncoseg.models import litemedsam as _litemedsam  # noqa: F401  (registers the default backend)
from oncoseg.models import sam3 as _sam3  # noqa: F401  (registers "sam3"; transformers loads on first use)
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
