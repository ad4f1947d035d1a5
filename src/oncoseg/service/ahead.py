"""Encoding ahead: which slice embedding the idle model computes next for an open image, and which cached
embeddings a prefetch may drop to make room.

The slice on screen comes first, then its neighbours outward (z+1, z-1, z+2, ...) up to ``radius`` slices each
way. A prefetch never drops the displayed slice, the slices the result was made on, nor another image's
embeddings: beyond the free memory it only replaces this image's own embeddings of slices less wanted (farther
out) than the one it computes. Functions here run on the model thread (they touch the predictor's cache order).
They read only an open image's ``image``, ``predictor``, ``last_viewed`` and ``obj``: the napari panel
(`oncoseg.napari_plugin.ahead`) follows the same rule with its own view of an image.
"""

from __future__ import annotations

from oncoseg.service.cache import OpenImage


def outward(z: int | None, num_slices: int, radius: int) -> list[int | None]:
    """``[z, z+1, z-1, z+2, z-2, ...]`` inside ``0..num_slices-1``, at most ``radius`` each way (``[None]`` for a
    2D image, whose key is None)."""
    if z is None:
        return [None]
    order = [z]
    for step in range(1, radius + 1):
        order += [s for s in (z + step, z - step) if 0 <= s < num_slices]
    return order


def cached_slices(opened: OpenImage) -> list[int | None]:
    """The slices whose embedding the image's predictor holds."""
    predictor = opened.predictor
    if not opened.image.is_3d:
        return [None] if predictor.is_cached(None) else []
    return [z for z in range(opened.image.num_slices) if predictor.is_cached(z)]


def protected_slices(opened: OpenImage) -> set[int | None]:
    """Slices a prefetch never drops: the displayed one and those the current result was made on."""
    keep = {opened.last_viewed}
    obj = opened.obj
    if obj is not None:
        keep |= set(obj.slice_scores) | set(obj.anchors)
    return keep


def embedding_bytes(opened: OpenImage) -> int | None:
    """Bytes of one cached embedding of this image (None before the first)."""
    count = len(cached_slices(opened))
    return opened.predictor.cache_nbytes // count if count else None


def droppable(opened: OpenImage, order: list[int | None], than: int | None = None) -> list[int | None]:
    """This image's cached slices a prefetch may drop: not protected, and less wanted than ``than`` (farther
    in ``order``; slices outside it are wanted least)."""
    rank = {z: i for i, z in enumerate(order)}
    limit = rank.get(than, -1)
    protected = protected_slices(opened)
    return [z for z in cached_slices(opened) if z not in protected and rank.get(z, len(order)) > limit]


def next_slice(
    opened: OpenImage, order: list[int | None], free_bytes: int, elsewhere_bytes: int = 0, size: int = 0
) -> int | None:
    """The next slice of ``order`` to encode ahead, or None when all are cached or there is no room: room is
    ``free_bytes``, or this image's embeddings less wanted than the slice; for the displayed slice
    (``order[0]``) also ``elsewhere_bytes``, the droppable embeddings of other images. ``size``: bytes of
    one embedding when this image has none yet."""
    predictor = opened.predictor
    missing = next((z for z in order if not predictor.is_cached(z)), "none")
    if missing == "none":
        return None
    size = embedding_bytes(opened) or size
    room = free_bytes + (elsewhere_bytes if missing == order[0] else 0)
    if room >= size or droppable(opened, order, missing):
        return missing
    return None


def trim(opened: OpenImage, order: list[int | None], over: int) -> int:
    """Drop this image's least wanted droppable embeddings until ``over`` bytes are freed (or none is left);
    returns the bytes freed."""
    predictor = opened.predictor
    before = predictor.cache_nbytes
    protected = arrange(opened, order)
    predictor.trim_cache(max(0, before - over), keep=protected)
    return before - predictor.cache_nbytes


def arrange(opened: OpenImage, order: list[int | None]) -> int:
    """Put the image's cached embeddings in least-recently-used order by how much they are wanted (slices
    outside ``order`` first, then ``order`` from far to near, then the result's slices, the displayed slice
    last), so that trimming drops the least wanted first. Returns how many are protected."""
    predictor = opened.predictor
    cached = set(cached_slices(opened))
    protected = protected_slices(opened) & cached
    wanted = [z for z in order if z in cached and z not in protected]
    others = [z for z in cached if z not in protected and z not in set(wanted)]
    tail = [z for z in protected if z != opened.last_viewed] + [
        z for z in protected if z == opened.last_viewed
    ]
    for z in [*others, *reversed(wanted), *tail]:
        predictor.embedding(z)  # a cached slice: only moves it to the most recent end
    return len(protected)
