"""Prompts (boxes, points) in pixel coordinates, their validation, and their generation from masks.

Coordinates are pixel indices of the image as Onco-Seg stores it: ``x`` is the column, ``y`` the row, ``z`` the
slice of a volume (array axis 0). A box's ``x1``/``y1`` are inclusive, as in a mask's bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from oncoseg.errors import PromptError

MAX_OBJECTS = 255  # one label per object in an 8-bit label map


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    z: int | None = None

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)

    def enlarged(self, fraction: float, minimum: float, shape: tuple[int, int]) -> Box:
        """Grow by ``fraction`` of each side (at least ``minimum`` px), clipped to ``shape`` = (H, W)."""
        dx = max(minimum, fraction * (self.x1 - self.x0 + 1))
        dy = max(minimum, fraction * (self.y1 - self.y0 + 1))
        h, w = shape
        return replace(
            self,
            x0=max(0.0, self.x0 - dx),
            y0=max(0.0, self.y0 - dy),
            x1=min(w - 1.0, self.x1 + dx),
            y1=min(h - 1.0, self.y1 + dy),
        )


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    positive: bool = True
    z: int | None = None


@dataclass(frozen=True)
class Prompt:
    """What the model gets for one object: an optional box and any number of points.

    A concept prompt instead names a kind of structure: ``text`` (e.g. "liver tumour") and/or ``exemplars``
    (boxes around examples); backends that read them (``supports_text``, e.g. SAM3) return every instance."""

    box: Box | None = None
    points: tuple[Point, ...] = field(default_factory=tuple)
    text: str | None = None
    exemplars: tuple[Box, ...] = field(default_factory=tuple)

    @property
    def is_concept(self) -> bool:
        """True for a text/exemplar prompt (all instances of a concept), False for a box/point prompt."""
        return self.text is not None or bool(self.exemplars)

    @property
    def z(self) -> int | None:
        """The slice this prompt is on (None for 2D images or when not given)."""
        slices = {p.z for p in self.points if p.z is not None}
        slices |= {b.z for b in (self.box, *self.exemplars) if b is not None and b.z is not None}
        if len(slices) > 1:
            raise PromptError(
                f"prompt parts lie on different slices {sorted(slices)}: give one slice per object"
            )
        return slices.pop() if slices else None

    def on_slice(self, z: int | None) -> Prompt:
        box = replace(self.box, z=z) if self.box is not None else None
        return replace(
            self,
            box=box,
            points=tuple(replace(p, z=z) for p in self.points),
            exemplars=tuple(replace(b, z=z) for b in self.exemplars),
        )


def parse_box(text: str) -> Box:
    """``"X0,Y0,X1,Y1"`` or ``"X0,Y0,X1,Y1,Z"`` → Box."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"box {text!r} is not numbers: use X0,Y0,X1,Y1[,Z]") from None
    if len(values) not in (4, 5):
        raise PromptError(f"box {text!r} needs 4 or 5 numbers: X0,Y0,X1,Y1[,Z]")
    z = _slice_index(values[4], text) if len(values) == 5 else None
    return Box(*values[:4], z=z)


def parse_point(text: str) -> Point:
    """``"X,Y"``, ``"X,Y,Z"``, optionally followed by ``":neg"`` (exclude) or ``":pos"`` → Point."""
    body, _, kind = text.partition(":")
    if kind not in ("", "pos", "neg"):
        raise PromptError(f"point {text!r}: the suffix must be ':pos' or ':neg'")
    try:
        values = [float(v) for v in body.split(",")]
    except ValueError:
        raise PromptError(f"point {text!r} is not numbers: use X,Y[,Z][:neg]") from None
    if len(values) not in (2, 3):
        raise PromptError(f"point {text!r} needs 2 or 3 numbers: X,Y[,Z][:neg]")
    z = _slice_index(values[2], text) if len(values) == 3 else None
    return Point(values[0], values[1], positive=kind != "neg", z=z)


def _slice_index(value: float, text: str) -> int:
    if not value.is_integer():
        raise PromptError(f"slice index in {text!r} must be a whole number")
    return int(value)


BoxLike = Box | str | Sequence[float]
PointLike = Point | str | Sequence[float]


def build_prompts(boxes: Sequence[BoxLike] = (), points: Sequence[PointLike] = ()) -> list[Prompt]:
    """One object per box; points go with the single box, or form one object of their own when there is no box.

    Strings are parsed as on the command line (``"X0,Y0,X1,Y1[,Z]"``, ``"X,Y[,Z][:neg]"``), sequences as numbers.
    """
    if len(boxes) > MAX_OBJECTS:
        raise PromptError(f"{len(boxes)} boxes given: at most {MAX_OBJECTS} objects per call (labels 1-255)")
    box_list = [_as_box(b) for b in boxes]
    point_list = tuple(_as_point(p) for p in points)
    if point_list and len(box_list) > 1:
        raise PromptError(
            "points can be combined with at most one box: give several boxes, or one box with points"
        )
    if box_list:
        prompts = [Prompt(box=b) for b in box_list]
        if point_list:
            prompts[0] = Prompt(box=box_list[0], points=point_list)
        return prompts
    if point_list:
        return [Prompt(points=point_list)]
    raise PromptError("no prompt given: pass a box (--box) or at least one point (--point)")


@dataclass(frozen=True)
class ObjectPrompts:
    """One object annotated on one or more slices: one `Prompt` per slice, in the order given. The first starts
    the object (`Session.segment`); each further one corrects it on its own slice (`Session.refine`: that slice
    becomes an anchor, and for a 3D object the walk between anchors is done again)."""

    prompts: tuple[Prompt, ...]
    name: str | None = None


def build_object(
    boxes: Sequence[BoxLike] = (), points: Sequence[PointLike] = (), name: str | None = None
) -> ObjectPrompts:
    """The prompts of one object from boxes and points on any slices: per slice, its box (at most one) with the
    points on that slice. The slice of the first box (without a box, of the first point) comes first, the others
    follow in the order given. Strings are parsed as on the command line."""
    parts = [_as_box(b) for b in boxes] + [_as_point(p) for p in points]
    if not parts:
        what = f"object {name!r}" if name else "the object"
        raise PromptError(f"no prompt given for {what}: give a box (--box) or a point (--point) after it")
    slices: dict[int | None, Prompt] = {}
    for part in parts:
        given = slices.setdefault(part.z, Prompt())
        if isinstance(part, Point):
            slices[part.z] = replace(given, points=(*given.points, part))
        elif given.box is not None:
            where = "the image" if part.z is None else f"slice {part.z}"
            raise PromptError(f"two boxes for one object on {where}: give one box per slice and object")
        else:
            slices[part.z] = replace(given, box=part)
    return ObjectPrompts(tuple(slices.values()), name)


def _as_box(value: BoxLike) -> Box:
    if isinstance(value, Box):
        return value
    if isinstance(value, str):
        return parse_box(value)
    return parse_box(",".join(str(v) for v in value))


def _as_point(value: PointLike) -> Point:
    if isinstance(value, Point):
        return value
    if isinstance(value, str):
        return parse_point(value)
    return parse_point(",".join(str(v) for v in value))


def validate_prompt(prompt: Prompt, shape: tuple[int, ...], correction: bool = False) -> None:
    """Raise PromptError unless the prompt fits an image of spatial ``shape`` ((H, W) or (Z, H, W)).
    A ``correction`` of an existing object may be exclude clicks alone."""
    if prompt.box is None and not prompt.points and not prompt.is_concept:
        raise PromptError("no prompt given: pass a box or at least one point")
    if prompt.text is not None and not prompt.text.strip():
        raise PromptError("the text prompt is empty: name the structure, e.g. 'liver tumour'")
    h, w = shape[-2:]
    z = prompt.z
    text_only = prompt.box is None and not prompt.points and not prompt.exemplars
    if len(shape) == 3:
        if z is None and not text_only:  # a text prompt has no slice of its own: the caller names it
            raise PromptError(f"this is a volume of {shape[0]} slices: give the slice index Z of the prompt")
        if z is not None and not 0 <= z < shape[0]:
            raise PromptError(f"slice {z} is outside the volume (slices 0..{shape[0] - 1})")
    elif z not in (None, 0):
        raise PromptError(f"slice index {z} given for a 2D image")
    for b in (prompt.box, *prompt.exemplars):
        if b is None:
            continue
        if not all(np.isfinite([b.x0, b.y0, b.x1, b.y1])):
            raise PromptError("box coordinates must be finite numbers")
        if b.x1 <= b.x0 or b.y1 <= b.y0:
            raise PromptError(
                f"box ({b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g}) has zero area: need X0<X1 and Y0<Y1"
            )
        if b.x0 < 0 or b.y0 < 0 or b.x1 > w - 1 or b.y1 > h - 1:
            raise PromptError(
                f"box ({b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g}) lies outside the image (x 0..{w - 1}, y 0..{h - 1})"
            )
    for p in prompt.points:
        if not (np.isfinite(p.x) and np.isfinite(p.y)) or not (0 <= p.x <= w - 1 and 0 <= p.y <= h - 1):
            raise PromptError(f"point ({p.x:g},{p.y:g}) lies outside the image (x 0..{w - 1}, y 0..{h - 1})")
    if prompt.points and not any(p.positive for p in prompt.points) and prompt.box is None and not correction:
        raise PromptError("only negative points given: add a positive point or a box to say what to segment")


def box_from_mask(
    mask: np.ndarray, jitter: float = 0.0, rng: np.random.Generator | None = None, z: int | None = None
) -> Box:
    """Tight bounding box of a 2D mask; ``jitter`` moves each side by up to that fraction of the box size."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise PromptError("cannot make a box from an empty mask")
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if jitter > 0:
        rng = rng or np.random.default_rng()
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        dx0, dx1 = rng.uniform(-jitter, jitter, 2) * bw
        dy0, dy1 = rng.uniform(-jitter, jitter, 2) * bh
        h, w = mask.shape
        x0, x1 = np.clip([x0 + dx0, x1 + dx1], 0, w - 1)
        y0, y1 = np.clip([y0 + dy0, y1 + dy1], 0, h - 1)
        if x1 <= x0 or y1 <= y0:
            x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if x1 == x0:
        x1 = min(x0 + 1, mask.shape[1] - 1.0)
        x0 = x1 - 1
    if y1 == y0:
        y1 = min(y0 + 1, mask.shape[0] - 1.0)
        y0 = y1 - 1
    return Box(float(x0), float(y0), float(x1), float(y1), z=z)


def points_from_mask(
    mask: np.ndarray, n: int = 1, rng: np.random.Generator | None = None, z: int | None = None
) -> tuple[Point, ...]:
    """``n`` positive points inside a 2D mask: the first at its most interior pixel (largest distance to the
    border), the others drawn at random from the interior."""
    if not mask.any():
        raise PromptError("cannot place points in an empty mask")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    points = [Point(float(x), float(y), True, z)]
    if n > 1:
        rng = rng or np.random.default_rng()
        ys, xs = np.nonzero(mask)
        for i in rng.choice(len(xs), size=min(n - 1, len(xs)), replace=False):
            points.append(Point(float(xs[i]), float(ys[i]), True, z))
    return tuple(points)
