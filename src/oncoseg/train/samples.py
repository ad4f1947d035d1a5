"""Training samples for fine-tuning LiteMedSAM, following the paper's recipe.

* A sample is one 2D picture, or one axial slice of a volume, with one target: its box prompt and its mask, in
  the frame LiteMedSAM sees at inference. Pixels are normalised for the case's modality as `Predictor` does
  (a volume once as a whole; the backend's native-intensity modalities are min-max scaled instead), then the
  slice is resized longest side → 256 (aspect kept, antialiased bilinear), min-max scaled to [0, 1] and
  zero-padded at the bottom/right to 256×256, exactly as `LiteMedSAMBackend.preprocess`. The mask is resized
  the same way (then > 0.5) and the box is scaled by the same factor.
* The box is the target's tight box with each side moved by up to ``box_jitter`` of the box's size.
* Volumes: ``foreground_fraction`` (80 %) of the draws take a slice where the target is present, the others
  any slice. A draw that shows no target gets an all-zero mask and a plausible box (the target's box on the
  nearest slice that has it, else a random box), so the model learns to answer "nothing here".
* Cases with several targets (BraTS WT/TC/ET; hippocampus Anterior/Posterior/whole, i.e. whatever
  ``Case.load`` returns) cycle through them from one visit of the case to the next.
* A draw depends only on (seed, epoch, index): ``np.random.default_rng([seed, epoch, index])``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from oncoseg.data.adapters import Case
from oncoseg.data.registry import get_info
from oncoseg.errors import OncoSegError
from oncoseg.models.litemedsam import resize_longest_side
from oncoseg.predictor import normalise_image
from oncoseg.preprocess import canonical_modality
from oncoseg.prompts import box_from_mask

# Sides of a random box (for a picture without any target), as fractions of the image's width / height.
RANDOM_BOX_SIDES = (0.05, 0.5)


@dataclass
class SampleSettings:
    image_size: int = 256
    box_jitter: float = 0.1  # each box side moves by up to this fraction of the box's size
    foreground_fraction: float = 0.8  # volumes: share of draws from slices where the target is present
    seed: int = 0
    # min-max scaled (``modality=None`` for `normalise_image`), as LiteMedSAM's Predictor does
    native_modalities: frozenset[str] = field(
        default_factory=lambda: frozenset({"endoscopy", "dermoscopy", "ultrasound"})
    )
    cache_cases: int = 8  # loaded + normalised cases kept in memory (least recently used dropped)


@dataclass
class LoadedCase:
    """A case read and normalised once: pixels, target masks and the slices where each target is present."""

    case: Case
    pixels: np.ndarray  # [z, y, x(, 3)] or [y, x(, 3)] float32 in [0, 1]
    masks: dict[str, np.ndarray]  # target → bool mask of the image's spatial shape
    present: dict[str, np.ndarray]  # target → slice indices where it is present ([0] / [] for a 2D image)
    is_3d: bool
    modality: str

    @property
    def targets(self) -> list[str]:
        return list(self.masks)

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[0] if self.is_3d else 1

    @property
    def foreground_slices(self) -> int:
        """Slices where any target is present (1 for a 2D image)."""
        if not self.is_3d:
            return 1
        return len(np.unique(np.concatenate([p for p in self.present.values()] + [np.zeros(0, np.int64)])))


def load_case(case: Case, settings: SampleSettings, loaded: tuple | None = None) -> LoadedCase:
    """Read ``case`` (or use ``loaded`` = ``case.load()``'s result) and normalise its pixels."""
    image, masks = loaded if loaded is not None else case.load()
    if not masks:
        raise OncoSegError(f"{case.dataset} case {case.case_id}: no target mask to train on")
    modality = canonical_modality(case.modality)
    native = modality in settings.native_modalities
    pixels = np.asarray(normalise_image(image, None if native else modality), dtype=np.float32)
    if image.is_3d:
        present = {t: np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1)) for t, m in masks.items()}
    else:
        present = {t: np.flatnonzero([m.any()]) for t, m in masks.items()}
    return LoadedCase(case, pixels, masks, present, image.is_3d, modality)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a sample's small tensor operations on one thread: with several, each op pays a thread hand-off
    that dominates (measured on 2 busy cores: 130 ms per hippocampus sample against 2 ms). DataLoader workers
    run single-threaded already; in the main process loading and training steps alternate, so this is safe."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _frame_image(pixels: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[H, W]`` or ``[H, W, 3]`` → ``[3, size, size]`` as `LiteMedSAMBackend.preprocess` makes it."""
    array = pixels[..., None] if pixels.ndim == 2 else pixels
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    resized, (h, w) = resize_longest_side(tensor, size)
    low, high = resized.min(), resized.max()
    resized = (resized - low) / torch.clamp(high - low, min=1e-8)
    padded = F.pad(resized, (0, size - w, 0, size - h))
    return padded.expand(3, -1, -1).contiguous(), (h, w)


def _frame_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """``[H, W]`` bool → ``[1, size, size]`` float32 (resized like the image, > 0.5, zero padding)."""
    soft, (h, w) = resize_longest_side(torch.from_numpy(mask.astype(np.float32))[None], size)
    hard = soft > 0.5
    # a target smaller than a pixel of the frame keeps its peak rather than vanishing
    if mask.any() and not hard.numpy().any() and soft.max() > 0:
        hard = soft >= soft.max()
    return F.pad(hard.float(), (0, size - w, 0, size - h))


def _random_box(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A box of plausible size anywhere in an ``(H, W)`` image (x1/y1 inclusive, as `box_from_mask`)."""
    h, w = shape
    bw = max(1.0, rng.uniform(*RANDOM_BOX_SIDES) * (w - 1))
    bh = max(1.0, rng.uniform(*RANDOM_BOX_SIDES) * (h - 1))
    x0 = rng.uniform(0.0, max(0.0, w - 1 - bw))
    y0 = rng.uniform(0.0, max(0.0, h - 1 - bh))
    return np.array([x0, y0, min(x0 + bw, w - 1.0), min(y0 + bh, h - 1.0)], np.float32)


def make_sample(
    loaded: LoadedCase, target: str, z: int | None, box: np.ndarray, image_size: int = 256
) -> dict[str, Any]:
    """The sample of ``target`` on slice ``z`` (None for a 2D image) with ``box`` in original pixels."""
    pixels = loaded.pixels[z] if loaded.is_3d else loaded.pixels
    mask = loaded.masks[target][z] if loaded.is_3d else loaded.masks[target]
    with _one_thread():
        image, (h, w) = _frame_image(pixels, image_size)
        framed = _frame_mask(mask, image_size)
        has_object = bool(framed.numpy().any())
    scale = image_size / max(mask.shape)  # the factor LiteMedSAM applies to prompts at inference
    return {
        "image": image,
        "mask": framed,
        "box": torch.from_numpy(np.asarray(box, np.float32) * np.float32(scale)),
        "has_object": torch.tensor(has_object),
        "size": torch.tensor([h, w], dtype=torch.int64),
        "slice": torch.tensor(-1 if z is None else int(z), dtype=torch.int64),
        "modality": loaded.modality,
        "target": target,
        "case_id": loaded.case.case_id,
        "dataset": loaded.case.dataset,
    }


class TrainingSamples(Dataset):
    """Random training draws from ``cases`` (one or several datasets, 2D and 3D mixed).

    Draw ``index`` takes case ``index % len(cases)``; on the case's k-th visit (``k = index // len(cases)``)
    its target is ``targets[k % len(targets)]`` — cycling by visit rather than by raw index, so that the case
    and the target do not lock together when the numbers of cases and targets share a factor. A 2D case gives
    its picture; a 3D case a slice drawn as the module docstring says.

    ``samples_per_epoch`` defaults to one per 2D case plus, per 3D case, its slices where any target is
    present. That count needs the label volumes, so it is computed on the first ``len()`` (which DataLoader
    asks for) by reading every 3D case once (the first ``cache_cases`` stay cached); construction itself reads
    nothing. Pass an explicit number to skip the scan for large volume sets.

    Items are deterministic given (seed, epoch, index). With DataLoader workers, call `set_epoch` inside the
    worker (e.g. from a wrapper's ``__getitem__``) or before the workers start; each worker keeps its own cache.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        settings: SampleSettings | None = None,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.cases = list(cases)
        if not self.cases:
            raise OncoSegError("no cases to draw training samples from")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise OncoSegError(f"samples_per_epoch must be at least 1, not {samples_per_epoch}")
        self.settings = settings or SampleSettings()
        self.epoch = 0
        self._length = samples_per_epoch
        self._cache: OrderedDict[int, LoadedCase] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._length is None:
            self._length = max(1, sum(self._count(position) for position in range(len(self.cases))))
        return self._length

    def _count(self, position: int) -> int:
        case = self.cases[position]
        try:
            if get_info(case.dataset).dim == "2d":
                return 1
        except OncoSegError:
            pass
        if position in self._cache:
            return self._cache[position].foreground_slices
        image, masks = case.load()
        if not image.is_3d:
            return 1
        if len(self._cache) < self.settings.cache_cases:
            self._remember(position, load_case(case, self.settings, (image, masks)))
            return self._cache[position].foreground_slices
        if not masks:
            return 0
        present = np.logical_or.reduce([m.reshape(m.shape[0], -1).any(axis=1) for m in masks.values()])
        return int(present.sum())

    def _remember(self, position: int, loaded: LoadedCase) -> None:
        if self.settings.cache_cases <= 0:
            return
        self._cache[position] = loaded
        self._cache.move_to_end(position)
        while len(self._cache) > self.settings.cache_cases:
            self._cache.popitem(last=False)

    def load(self, position: int) -> LoadedCase:
        """Case ``position`` loaded and normalised (from the LRU cache when it is there)."""
        if position in self._cache:
            self._cache.move_to_end(position)
            return self._cache[position]
        loaded = load_case(self.cases[position], self.settings)
        self._remember(position, loaded)
        return loaded

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        # epochs continue where the previous one stopped, so an epoch shorter than the case list still
        # reaches every case over the run
        return self.draw(self.epoch * len(self) + index, (self.epoch, index))

    def draw(self, number: int, key: tuple[int, ...]) -> dict[str, Any]:
        """The ``number``-th draw of the run (case ``number % len(cases)``, on its visit
        ``number // len(cases)``), with its random choices seeded by ``(seed, *key)``."""
        settings = self.settings
        rng = np.random.default_rng([settings.seed, *key])
        position, visit = number % len(self.cases), number // len(self.cases)
        loaded = self.load(position)
        target = loaded.targets[visit % len(loaded.targets)]
        mask, present, z = loaded.masks[target], loaded.present[target], None
        if loaded.is_3d:
            if len(present) and rng.random() < settings.foreground_fraction:
                z = int(rng.choice(present))
            else:
                z = int(rng.integers(loaded.num_slices))
            mask = mask[z]
        if mask.any():
            box = box_from_mask(mask, settings.box_jitter, rng).as_array()
        elif len(present):  # an empty slice of a volume that has the target: its box from the nearest slice
            nearest = int(present[np.argmin(np.abs(present - z))])
            box = box_from_mask(loaded.masks[target][nearest], settings.box_jitter, rng).as_array()
        else:
            box = _random_box(mask.shape, rng)
        return make_sample(loaded, target, z, box, settings.image_size)


class MixedSamples(Dataset):
    """Draws from several `TrainingSamples` in fixed shares, e.g. the datasets being learnt plus a share of
    earlier datasets replayed so the model does not forget them (rehearsal).

    Draws follow a repeating pattern of ``PATTERN`` slots in which source ``s`` holds ``round(share_s *
    PATTERN)`` evenly spread slots; each source walks through its own draws in order. The first source is
    the main one: it defines the default length of an epoch (its own length divided by its share)."""

    PATTERN = 100

    def __init__(
        self,
        sources: Sequence[TrainingSamples],
        shares: Sequence[float],
        samples_per_epoch: int | None = None,
    ):
        if len(sources) != len(shares) or not sources:
            raise OncoSegError("MixedSamples needs one share per source")
        if any(share <= 0 for share in shares) or abs(sum(shares) - 1.0) > 1e-6:
            raise OncoSegError(f"sample shares must be positive and sum to 1, not {list(shares)}")
        slots = [max(1, round(share * self.PATTERN)) for share in shares]
        slots[0] = self.PATTERN - sum(slots[1:])
        if slots[0] < 1:
            raise OncoSegError(f"the replayed shares leave nothing for the main datasets: {list(shares)}")
        # slot i of the pattern goes to the source whose quota is furthest behind (an even spread)
        self.pattern: list[tuple[int, int]] = []  # (source, rank of this slot within the source's slots)
        taken = [0] * len(sources)
        for i in range(self.PATTERN):
            source = max(
                range(len(sources)), key=lambda s: (slots[s] * (i + 1) / self.PATTERN - taken[s], -s)
            )
            self.pattern.append((source, taken[source]))
            taken[source] += 1
        self.slots, self.sources, self.shares = slots, list(sources), list(shares)
        self.epoch = 0
        self._length = samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._length is None:
            self._length = max(1, round(len(self.sources[0]) / self.shares[0]))
        return self._length

    def source_of(self, number: int) -> tuple[int, int]:
        """(source, that source's own draw number) of the run's ``number``-th draw."""
        source, rank = self.pattern[number % self.PATTERN]
        return source, (number // self.PATTERN) * self.slots[source] + rank

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        source, number = self.source_of(self.epoch * len(self) + index)
        return self.sources[source].draw(number, (self.epoch, index, source))


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of samples; other values (strings) become lists. A DataLoader collate_fn."""
    if not batch:
        raise OncoSegError("cannot collate an empty batch")
    collated = {}
    for key, value in batch[0].items():
        values = [sample[key] for sample in batch]
        collated[key] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    return collated


def validation_samples(cases: Sequence[Case], settings: SampleSettings | None = None) -> list[dict[str, Any]]:
    """A fixed list to validate on, the same every epoch: each target of each 2D case, and for each target of a
    3D case its slice with the largest area, always with the tight box (no jitter). Targets absent from a case
    are left out (Dice is undefined there). Cases are read one at a time; each sample holds about 1 MB."""
    settings = settings or SampleSettings()
    samples = []
    for case in cases:
        loaded = load_case(case, settings)
        for target, mask in loaded.masks.items():
            z = None
            if loaded.is_3d:
                areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
                z = int(np.argmax(areas))
                mask = mask[z]
            if not mask.any():
                continue
            box = box_from_mask(mask).as_array()
            samples.append(make_sample(loaded, target, z, box, settings.image_size))
    return samples
