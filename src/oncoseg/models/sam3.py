"""SAM3 backend: Meta's Segment Anything 3 through ``transformers`` (``Sam3VideoModel``), loaded from a local
folder in the Hugging Face layout of the gated ``facebook/sam3`` checkpoint (never downloaded here).

One ViT backbone run per slice serves every prompt kind: its output (the cached embedding) feeds

* the tracker neck and SAM-style mask decoder (``Sam3TrackerVideoModel``) for point and box prompts on one
  object, and the memory-based tracker that propagates an object through a volume's slices as video frames;
* the detector neck, DETR encoder/decoder and mask decoder (``Sam3Model``) for concept prompts — text ("liver
  tumour") and/or box exemplars — which return every instance above a confidence threshold.

Input: the image is resized to the model's square input (1008 px for the released model, read from the folder's
config) and normalised with the processor's mean/std (0.5/0.5); prompts are scaled by the same factors, and mask
logits are resized back to the image: all through the backend's one `FrameTransform` (``Sam3Backend.transform``,
``keep_aspect=False``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from oncoseg.errors import ModelError, OncoSegError
from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction, SliceTracker, weights_digest
from oncoseg.models.transform import FrameTransform
from oncoseg.prompts import Box, Prompt

WEIGHTS_ENV = "ONCOSEG_SAM3_WEIGHTS"
GET_WEIGHTS = (
    "request access at https://huggingface.co/facebook/sam3, download it "
    "(huggingface-cli download facebook/sam3 --local-dir DIR) and pass --weights DIR"
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
DEFAULT_THRESHOLD = 0.5  # instance confidence (detection score × presence score) for concept prompts
EXEMPLAR_TEXT = "visual"  # SAM3's text for "no text, only box exemplars"


# -- loading ----------------------------------------------------------------------------------------------------
def require_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import roi_align  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        raise ModelError(
            f"SAM3 needs torchvision ({type(error).__name__}): pip install 'oncoseg[sam3]' "
            "(torch and torchvision of matching versions)"
        ) from None


def check_weights_folder(folder: str | Path | None) -> Path:
    """The SAM3 weights folder, checked: exists, has config.json of a SAM3 model, weights and a tokenizer."""
    if folder is None:
        folder = os.environ.get(WEIGHTS_ENV)
    if not folder:
        raise ModelError(f"SAM3 needs its weights, which Onco-Seg cannot ship: {GET_WEIGHTS}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"SAM3 weights folder not found: {folder}; {GET_WEIGHTS}")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} has no config.json: not a Hugging Face model folder; {GET_WEIGHTS}")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError):
        raise ModelError(f"{config} is not valid JSON: the download is damaged; download it again") from None
    if model_type != "sam3_video":
        raise ModelError(
            f"{folder} holds a {model_type!r} model, not SAM3 (model_type 'sam3_video', as in facebook/sam3); "
            f"{GET_WEIGHTS}"
        )
    missing = []
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if not (folder / "tokenizer.json").is_file() and not (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        missing.append("tokenizer.json")
    if missing:
        raise ModelError(
            f"SAM3 weights folder {folder} is incomplete (no {', '.join(missing)}): download the whole "
            "facebook/sam3 repository into it"
        )
    return folder


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """``auto``: bf16 on CUDA GPUs that have it (else fp16), fp16 on MPS, fp32 on CPU."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ModelError(f"SAM3 precision must be auto, {', '.join(DTYPES)}, not {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def load_model(folder: str | Path | None):
    """``(Sam3VideoModel, tokenizer, (mean, std))`` from a checked local folder, offline, in fp32 on the CPU."""
    require_torchvision()
    folder = check_weights_folder(folder)
    try:
        from transformers import AutoTokenizer, Sam3VideoModel
    except ImportError:
        raise ModelError("SAM3 needs transformers >= 5: pip install 'oncoseg[sam3]'") from None
    try:
        model = Sam3VideoModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors, tokenizers and torch raise many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot load SAM3 from {folder}: {first}") from None
    return model.eval(), tokenizer, normalisation(folder)


def normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the folder's image processor uses (SAM3: 0.5 and 0.5 per channel)."""
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    for name in PROCESSOR_FILES:
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            data = data.get("image_processor", data)
            mean = tuple(data.get("image_mean", mean))
            std = tuple(data.get("image_std", std))
            break
    return mean, std


def image_size(model) -> int:
    return int(model.config.detector_config.vision_config.backbone_config.image_size)


# -- model arithmetic shared by inference and training -----------------------------------------------------------
def backbone_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The ViT backbone's output ``[B, H*W, C]`` for normalised ``[B, 3, S, S]`` pixels (the costly part)."""
    return model.detector_model.vision_encoder.backbone(pixels).last_hidden_state


def tracker_features(model, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Tracker feature maps ``[B, C, h, w]`` from backbone output (tracker neck; the two high-resolution levels
    projected by the mask decoder, as the video tracker caches them)."""
    flat, _ = model.get_vision_features_for_tracker(SimpleNamespace(last_hidden_state=hidden))
    sizes = model.tracker_model.backbone_feature_sizes
    batch = hidden.shape[0]
    return [f.permute(1, 2, 0).reshape(batch, -1, *size) for f, size in zip(flat, sizes)]


def without_memory(model, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Single-image features: the tracker's "no memory" token added to the last level (what the video tracker
    does on a conditioning frame)."""
    token = model.tracker_model.no_memory_embedding.reshape(1, -1, 1, 1)
    return [*features[:-1], features[-1] + token.to(features[-1].dtype)]


def tracker_decode(
    model,
    features: list[torch.Tensor],
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low-resolution mask logits ``[B, N, h, w]``, predicted IoU ``[B, N]`` and object-presence logits ``[B, N]``
    for ``N`` objects per image (points ``[B, N, P, 2]``/labels ``[B, N, P]``, boxes ``[B, N, 4]`` in the model's
    input frame); with ``multimask`` the best of SAM's three masks by predicted IoU."""
    tracker = model.tracker_model
    batch = features[-1].shape[0]
    if points is None and boxes is None:
        points = torch.zeros(batch, 1, 1, 2, device=features[-1].device, dtype=features[-1].dtype)
        labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=features[-1].device)
    if masks is not None and masks.shape[-2:] != tracker.prompt_encoder.mask_input_size:
        masks = F.interpolate(masks.float(), tracker.prompt_encoder.mask_input_size, mode="bilinear")
    sparse, dense = tracker.prompt_encoder(
        input_points=points, input_labels=labels, input_boxes=boxes, input_masks=masks
    )
    position = tracker.get_image_wide_positional_embeddings().to(features[-1].dtype)
    logits, iou, _tokens, presence = tracker.mask_decoder(
        image_embeddings=features[-1],
        image_positional_embeddings=position.repeat(batch, 1, 1, 1),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense.to(features[-1].dtype),
        multimask_output=multimask,
        high_resolution_features=features[:-1],
    )
    if multimask:
        best = iou.argmax(-1, keepdim=True)
        logits = torch.take_along_dim(logits, best[..., None, None], dim=2)
        iou = torch.take_along_dim(iou, best, dim=2)
    return logits[:, :, 0], iou[:, :, 0], presence[..., 0]


def box_forward(model, image: torch.Tensor, box: torch.Tensor):
    """Training forward for one box per image: the tracker's mask logits ``[B, 1, h, w]`` (h = 4 × S/14: 288 for
    1008 px), and when detector heads are trainable (LoRA ``unfreeze`` under ``detector_model``) a list
    ``[tracker logits, detector logits]``, the second being the mask of the DETR query that best matches the box
    used as an exemplar (each gets the segmentation loss).

    ``image`` is the training pipeline's ``[B, 3, F, F]`` picture in [0, 1] (LiteMedSAM frame F = 256) and ``box``
    ``[B, 4]`` xyxy in that frame: both are rescaled to SAM3's input and normalised like at inference."""
    size = image_size(model)
    mean, std = getattr(model, "oncoseg_normalisation", ((0.5,) * 3, (0.5,) * 3))
    dtype = next(model.detector_model.vision_encoder.backbone.parameters()).dtype
    transform = FrameTransform(size, keep_aspect=False)
    pixels = transform.image_to_frame(image.float(), antialias=False)
    pixels = (pixels - _channel(mean, pixels)) / _channel(std, pixels)
    framed = transform.apply_boxes(box.float(), tuple(image.shape[-2:]))
    hidden = backbone_features(model, pixels.to(dtype))
    features = without_memory(model, tracker_features(model, hidden))
    logits, _iou, _presence = tracker_decode(model, features, boxes=framed[:, None, :].to(dtype))
    if not detector_heads_trained(model):
        return logits
    return [logits, exemplar_logits(model, hidden, framed / size)]


DETECTOR_HEADS = ("detector_model.detr_encoder", "detector_model.detr_decoder", "detector_model.mask_decoder")


def detector_heads_trained(model) -> bool:
    """Whether anything in the DETR encoder/decoder or the detector's mask decoder is being trained (only while
    gradients are recorded: evaluation needs the tracker head alone)."""
    return torch.is_grad_enabled() and any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(DETECTOR_HEADS)
    )


def exemplar_logits(model, hidden: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Mask logits ``[B, 1, h, w]`` of the detector's query whose box best overlaps ``box`` (``[B, 4]`` xyxy in
    [0, 1]), with that box as a positive exemplar (SAM3's "visual" prompt)."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    detector = model.detector_model
    batch, tokens, _ = hidden.shape
    grid = round(tokens**0.5)
    fpn, position = detector.vision_encoder.neck(hidden.reshape(batch, grid, grid, -1).permute(0, 3, 1, 2))
    vision = Sam3VisionEncoderOutput(
        last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=position
    )
    ids = getattr(model, "oncoseg_exemplar_tokens", None)
    if ids is None:
        raise ModelError(
            "this SAM3 model was not loaded with its tokenizer: build it with sam3.training_model(DIR)"
        )
    input_ids, attention = (t.to(hidden.device).expand(batch, -1) for t in ids)
    exemplar = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2,
                            box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], dim=-1)  # fmt: skip
    out = detector(
        vision_embeds=vision,
        input_ids=input_ids,
        attention_mask=attention,
        input_boxes=exemplar[:, None, :].to(hidden.dtype),
        input_boxes_labels=torch.ones(batch, 1, dtype=torch.long, device=hidden.device),
    )
    predicted = out.pred_boxes.float()  # [B, Q, 4] xyxy in [0, 1]
    low = torch.maximum(predicted[..., :2], box[:, None, :2])
    high = torch.minimum(predicted[..., 2:], box[:, None, 2:])
    overlap = (high - low).clamp(min=0).prod(-1)
    areas = (predicted[..., 2:] - predicted[..., :2]).clamp(min=0).prod(-1) + (box[:, 2:] - box[:, :2]).prod(
        -1
    )[:, None]
    best = (overlap / (areas - overlap).clamp(min=1e-6)).argmax(1)
    return out.pred_masks[torch.arange(batch, device=hidden.device), best][:, None]


def training_model(folder: str | Path | None = None):
    """The ``Sam3VideoModel`` to fine-tune (fp32, CPU; move it where you train), with what the training forward
    needs from the folder: the processor's normalisation and the tokenised exemplar text."""
    model, tokenizer, (mean, std) = load_model(folder)
    attach_tokenizer(model, tokenizer)
    object.__setattr__(model, "oncoseg_normalisation", (tuple(mean), tuple(std)))
    return model


def attach_tokenizer(model, tokenizer) -> None:
    """Keep the tokenised exemplar text ("visual") on the model for the detector branch of `box_forward`."""
    length = model.detector_model.config.text_config.max_position_embeddings
    tokens = tokenizer([EXEMPLAR_TEXT], padding="max_length", max_length=length, return_tensors="pt")
    object.__setattr__(model, "oncoseg_exemplar_tokens", (tokens["input_ids"], tokens["attention_mask"]))


def _channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


# -- the backend -----------------------------------------------------------------------------------------------
class Sam3Backend(Backend):
    """SAM3 behind the `Backend` interface: `encode` runs the backbone once per slice; `decode` answers box/point
    prompts with the tracker (one mask per prompt) and concept prompts (text and/or exemplar boxes) with the
    detector (every instance above ``threshold``)."""

    name = "sam3"
    supports_text = True

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        threshold: float = DEFAULT_THRESHOLD,
        model: Any = None,
        tokenizer: Any = None,
        normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
        adapter: str | Path | None = None,
    ):
        """``weights``: the facebook/sam3 folder (default: $ONCOSEG_SAM3_WEIGHTS). ``device`` auto/cuda/mps/cpu;
        ``precision`` auto/fp32/bf16/fp16. ``model``/``tokenizer`` let a caller pass a built (e.g. fine-tuned)
        ``Sam3VideoModel``; ``adapter`` is a LoRA adapter file (from fine-tuning) merged into the weights."""
        if not 0 <= threshold <= 1:
            raise ModelError(f"SAM3 threshold must be in [0, 1], got {threshold}")
        if model is None:
            model, tokenizer, normalisation = load_model(weights)
        if adapter is not None:
            from oncoseg.train.lora import load_adapter, merge_lora

            load_adapter(model, adapter)
            merge_lora(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.mean, self.std = normalisation or ((0.5,) * 3, (0.5,) * 3)
        object.__setattr__(self.model, "oncoseg_normalisation", (tuple(self.mean), tuple(self.std)))
        self.threshold = threshold
        self.size = image_size(self.model)
        self.transform = FrameTransform(self.size, keep_aspect=False)  # image pixels <-> the square input
        self._cache: dict = {}  # image-independent tensors (position encodings, text embeddings)
        self._identity: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": str(self.dtype).replace("torch.", ""),
            "image_size": self.size,
        }

    def embedding_identity(self) -> str:
        """Name, embedding version, dtype, input size, the processor's mean/std and the ViT backbone's weights
        digest (the embedding is the backbone's output; computed on first use, a few seconds for SAM3)."""
        if self._identity is None:
            digest = weights_digest(self.model.detector_model.vision_encoder.backbone)
            dtype = str(self.dtype).replace("torch.", "")
            frame = f"{self.size}/{tuple(self.mean)}/{tuple(self.std)}"
            self._identity = f"{self.name}/v{self.embedding_version}/{dtype}/{frame}/{digest}"
        return self._identity

    # -- image → embedding ----------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, C]`` pixels in [0, 1] → ``[1, 3, S, S]`` normalised."""
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ModelError(f"SAM3 expects an [H, W] or [H, W, C] image, got shape {array.shape}")
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        elif array.shape[2] != 3:
            from oncoseg.preprocess import normalize_for_sam

            array = normalize_for_sam(array, "mri", channel_axis=-1)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].to(self.device)
        tensor = self.transform.image_to_frame(tensor, antialias=True)
        tensor = (tensor - _channel(self.mean, tensor)) / _channel(self.std, tensor)
        return tensor.to(self.dtype)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        hidden = backbone_features(self.model, self.preprocess(image))
        original = tuple(np.shape(image)[:2])
        return ImageEmbedding(hidden, original, self.transform.input_size(original), self.name)

    def _tracker_maps(self, embedding: ImageEmbedding) -> list[torch.Tensor]:
        key = ("sam3-tracker", id(self.model))
        if key not in embedding.cache:
            embedding.cache[key] = tracker_features(
                self.model, embedding.features.to(self.device, self.dtype)
            )
        return embedding.cache[key]

    # -- prompts → masks -----------------------------------------------------------------------------------
    def decode(
        self, embedding: ImageEmbedding, prompts: Sequence[Prompt], mask_input: np.ndarray | None = None
    ) -> MaskPrediction:
        """Box/point prompts: one mask each (tracker). Concept prompts (``text`` and/or ``exemplars``): every
        instance found, best first (detector)."""
        if not prompts:
            raise ModelError("decode needs at least one prompt")
        parts = []
        for i, prompt in enumerate(prompts):
            if getattr(prompt, "text", None) is not None or getattr(prompt, "exemplars", ()):
                parts.append(self.detect(embedding, prompt.text, prompt.exemplars))
            else:
                masks = None if mask_input is None else np.asarray(mask_input)[i : i + 1]
                parts.append(self._decode_tracker(embedding, prompt, masks))
        return MaskPrediction(
            masks=np.concatenate([p.masks for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            logits=np.concatenate([p.logits for p in parts]),
        )

    def _point_tensors(self, prompt: Prompt, original_size: tuple[int, int]):
        """Box and points of one prompt in the model's frame, shaped for the tracker (one object)."""
        boxes = points = labels = None
        if prompt.box is not None:
            b = prompt.box
            framed = self.transform.apply_boxes([b.x0, b.y0, b.x1, b.y1], original_size)
            boxes = torch.tensor(framed[None, None], dtype=torch.float32, device=self.device)
        if prompt.points:
            framed = self.transform.apply_coords([(p.x, p.y) for p in prompt.points], original_size)
            points = torch.tensor(framed[None, None], dtype=torch.float32, device=self.device)
            labels = torch.tensor([[[1 if p.positive else 0 for p in prompt.points]]], device=self.device)
        return points, labels, boxes

    @torch.inference_mode()
    def _decode_tracker(
        self, embedding: ImageEmbedding, prompt: Prompt, mask_input: np.ndarray | None
    ) -> MaskPrediction:
        features = without_memory(self.model, self._tracker_maps(embedding))
        points, labels, boxes = self._point_tensors(prompt, embedding.original_size)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=self.dtype, device=self.device).reshape(
                1, 1, *np.shape(mask_input)[-2:]
            )
        multimask = boxes is None and len(prompt.points) <= 1  # one click is ambiguous: SAM picks of three
        points = None if points is None else points.to(self.dtype)
        boxes = None if boxes is None else boxes.to(self.dtype)
        logits, iou, _presence = tracker_decode(self.model, features, points, labels, boxes, masks, multimask)
        low = logits[0].float()  # [1, h, w]
        full = self.transform.logits_to_image(low, embedding.original_size)
        return MaskPrediction(
            masks=(full > 0).cpu().numpy(), scores=iou[0].float().cpu().numpy(), logits=low.cpu().numpy()
        )

    def _text_embeds(self, text: str):
        """The text encoder's output for ``text`` (cached; moved to the model's device and dtype on use)."""
        if self.tokenizer is None:
            raise ModelError(
                "this SAM3 model has no tokenizer: text prompts need the folder's tokenizer.json"
            )
        key = ("text", text)
        if key not in self._cache:
            length = self.model.detector_model.config.text_config.max_position_embeddings
            tokens = self.tokenizer(
                [text], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
            ids, attention = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            output = self.model.detector_model.get_text_features(input_ids=ids, attention_mask=attention)
            self._cache[key] = (output.pooler_output, attention)
            while len([k for k in self._cache if k[0] == "text"]) > 64:
                self._cache.pop(next(k for k in self._cache if k[0] == "text"))
        features, attention = self._cache[key]
        device = self.device
        return SimpleNamespace(pooler_output=features.to(device, self.dtype)), attention.to(device)

    @torch.inference_mode()
    def detect(
        self,
        embedding: ImageEmbedding,
        text: str | None,
        exemplars: Sequence[Box] = (),
        threshold: float | None = None,
    ) -> MaskPrediction:
        """Every instance of a concept (text and/or positive exemplar boxes) with score > ``threshold``, best first;
        scores are SAM3's detection probability × concept-presence probability."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        threshold = self.threshold if threshold is None else threshold
        detector = self.model.detector_model
        hidden = embedding.features.to(self.device, self.dtype)
        grid = round(hidden.shape[1] ** 0.5)
        spatial = hidden.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        fpn, position = detector.vision_encoder.neck(spatial)
        vision = Sam3VisionEncoderOutput(
            last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=position
        )
        text_embeds, attention = self._text_embeds(text if text else EXEMPLAR_TEXT)
        boxes = labels = None
        if exemplars:  # centre x, centre y, width, height as fractions of the model's frame
            corners = (
                self.transform.apply_boxes(
                    [[b.x0, b.y0, b.x1, b.y1] for b in exemplars], embedding.original_size
                )
                / self.size
            )
            middle, extent = (corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]
            boxes = torch.tensor(
                np.concatenate([middle, extent], axis=1)[None], dtype=self.dtype, device=self.device
            )
            labels = torch.ones(boxes.shape[:2], dtype=torch.long, device=self.device)
        out = detector(
            vision_embeds=vision,
            text_embeds=text_embeds,
            attention_mask=attention,
            input_boxes=boxes,
            input_boxes_labels=labels,
        )
        scores = (out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid())[0]
        keep = torch.nonzero(scores > threshold)[:, 0]
        keep = keep[scores[keep].argsort(descending=True)]
        low = out.pred_masks[0, keep].float()
        if len(keep) == 0:
            return MaskPrediction(
                masks=np.zeros((0, *embedding.original_size), bool),
                scores=np.zeros(0, np.float32),
                logits=low.cpu().numpy(),
            )
        full = self.transform.logits_to_image(low, embedding.original_size)
        return MaskPrediction(
            masks=(full > 0).cpu().numpy(), scores=scores[keep].cpu().numpy(), logits=low.cpu().numpy()
        )

    # -- volumes ------------------------------------------------------------------------------------------
    def _position_encodings(self) -> list[torch.Tensor]:
        """The tracker neck's sine position encodings (the same for every slice), flattened as the video tracker
        expects; cached per device and dtype."""
        key = ("position", str(self.device), self.dtype)
        if key not in self._cache:
            tracker = self.model.tracker_model
            h, w = tracker.prompt_encoder.image_embedding_size
            hidden = torch.zeros(1, h * w, self.model.tracker_neck.config.backbone_config.hidden_size)
            hidden = hidden.to(self.device, self.dtype)
            _, position = self.model.get_vision_features_for_tracker(
                SimpleNamespace(last_hidden_state=hidden)
            )
            self._cache[key] = position
        return self._cache[key]

    def tracker(self, predictor, prompt: Prompt) -> Sam3SliceTracker:
        """SAM3's video tracker for one object: the prompt's slice is its conditioning frame, and each next slice
        is answered from the tracker's memory of the slices before (`oncoseg.volume.propagate` walks)."""
        return Sam3SliceTracker(self, predictor, prompt)


class Sam3SliceTracker(SliceTracker):
    """The slices of the volume on a predictor as the frames of a video for SAM3's memory tracker; frame features
    come from the predictor's embedding cache (each slice is encoded once for every prompt kind)."""

    def __init__(self, backend: Sam3Backend, predictor, prompt: Prompt):
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
            Sam3TrackerVideoInferenceSession,
        )

        image = predictor.image
        if image is None or not image.is_3d:
            raise OncoSegError("3D propagation needs a volume: set one on the predictor first")
        self.backend, self.predictor, self.z0 = backend, predictor, prompt.z
        self.shape = image.shape[1:]
        self.session = Sam3TrackerVideoInferenceSession(
            video_height=self.shape[0],
            video_width=self.shape[1],
            inference_device=backend.device,
            inference_state_device=backend.device,
            dtype=backend.dtype,
            max_vision_features_cache_size=2,
        )
        self.session.processed_frames = dict.fromkeys(range(image.num_slices))  # frames are cached features
        coords, labels = [], []
        if prompt.box is not None:
            b = prompt.box
            coords += [(b.x0, b.y0), (b.x1, b.y1)]
            labels += [2, 3]  # SAM's box corners
        for p in prompt.points:
            coords.append((p.x, p.y))
            labels.append(1 if p.positive else 0)
        framed = backend.transform.apply_coords(np.array(coords, np.float64).reshape(-1, 2), self.shape)
        self.session.add_point_inputs(
            self.session.obj_id_to_idx(1),
            self.z0,
            {
                "point_coords": torch.tensor(framed[None, None], dtype=torch.float32),
                "point_labels": torch.tensor([[labels]], dtype=torch.int32),
            },
        )
        self.session.obj_with_new_inputs = [1]

    def first(self) -> tuple[np.ndarray, float]:
        return self._run(self.z0, reverse=False)

    def next(self, z: int, step: int) -> tuple[np.ndarray, float]:
        return self._run(z, reverse=step < 0)

    @torch.inference_mode()
    def _run(self, z: int, reverse: bool) -> tuple[np.ndarray, float]:
        backend = self.backend
        flat = [  # [HW, 1, C] per level, as the video tracker caches them
            f.flatten(2).permute(2, 0, 1) for f in backend._tracker_maps(self.predictor.embedding(z))
        ]
        positions = backend._position_encodings()
        self.session.cache.cache_vision_features(z, {"vision_feats": flat, "vision_pos_embeds": positions})
        out = backend.model.tracker_model(self.session, frame_idx=z, reverse=reverse)
        low = out.pred_masks.float().reshape(*out.pred_masks.shape[-2:])
        mask = backend.transform.logits_to_image(low, self.shape) > 0
        return mask.cpu().numpy(), float(out.object_score_logits.float().sigmoid().reshape(-1)[0])


# -- fine-tuning ------------------------------------------------------------------------------------------------
def full_size_lora_report(settings=None) -> dict[str, Any]:
    """Trainable and total parameters of LoRA on the full-size SAM3 (default ``Sam3VideoConfig``), built on the
    meta device: nothing is allocated and no weights are needed."""
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from oncoseg.train.lora import LoraSettings, apply_lora, describe, parameter_counts

    settings = settings or LoraSettings()  # the training default: both mask decoders trained fully
    with torch.device("meta"):
        model = Sam3VideoModel(Sam3VideoConfig())
        apply_lora(model, settings)
    device = str(next(model.parameters()).device)
    return {**parameter_counts(model), "summary": describe(model), "device": device}
