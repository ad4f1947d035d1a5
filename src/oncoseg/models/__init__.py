"""Model backends behind one interface; ``load_backend("litemedsam")`` is the bundled default, ``"sam3"`` runs
Meta's SAM3 from a local weights folder. Backends are found by name in a plain table (`register_backend` adds
one) and imported only when built."""

from oncoseg.models.base import (
    Backend,
    ImageEmbedding,
    MaskPrediction,
    SliceTracker,
    available_backends,
    load_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "ImageEmbedding",
    "MaskPrediction",
    "SliceTracker",
    "available_backends",
    "load_backend",
    "register_backend",
]
