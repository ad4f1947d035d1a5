"""`ModelSpec`: which model a shell runs, resolved in one place.

Every shell (CLI, service, napari, evaluation, contouring, the assistant) describes its model with the same
fields and builds it here, so ``--checkpoint`` means the same everywhere: a LoRA adapter file (applied and
merged), a full state dict, or a name registered by ``oncoseg train`` (`oncoseg.train.checkpoints`). Nothing is read or loaded before `build_*`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from oncoseg.errors import ModelError, OncoSegError
from oncoseg.models.student import ENCODERS  # LiteMedSAM's image encoders (no torch at import)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_STATE_KEYS = ("model", "state_dict")  # where training scripts nest the tensors of a full checkpoint


@dataclass(frozen=True)
class ModelSpec:
    """The model a shell uses.

    ``backend``: a registered backend name ("litemedsam", "sam3"). ``weights``: the base weights: SAM3's
    facebook/sam3 folder (default $ONCOSEG_SAM3_WEIGHTS), for LiteMedSAM a full state dict replacing the bundled
    checkpoint. ``checkpoint``: fine-tuned weights on top of the base: a LoRA adapter file, a full state dict or
    a registered name such as ``latest``. ``precision``: auto, fp32, bf16 or fp16 (SAM3 only). ``threads``:
    torch's CPU threads (None keeps torch's default). ``threshold``: SAM3's detection threshold (LiteMedSAM
    takes one per call). ``embedding_store``: a folder keeping image embeddings on disk across runs
    (`oncoseg.embedding_store`; None: $ONCOSEG_EMBEDDING_CACHE when set). ``encoder``: LiteMedSAM's image
    encoder: "student" (distilled, about 2× faster), "teacher" (LiteMedSAM's own) or "auto": the student with the
    bundled weights and no checkpoint, else the teacher (a fine-tuned encoder has no student).
    """

    backend: str = "litemedsam"
    weights: str | None = None
    checkpoint: str | None = None
    precision: str = "auto"
    threads: int | None = None
    threshold: float | None = None
    embedding_store: str | None = None
    encoder: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ModelError(f"the model backend must be a name such as 'litemedsam', got {self.backend!r}")
        for name in ("weights", "checkpoint", "embedding_store"):
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, str(value))
            elif value == "":
                object.__setattr__(self, name, None)
            elif value is not None and not isinstance(value, str):
                raise ModelError(f"model {name} must be a path or a name, got {type(value).__name__}")
        if self.precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.encoder not in ENCODERS:
            raise ModelError(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.encoder == "student" and (self.backend != "litemedsam" or self.weights or self.checkpoint):
            raise ModelError(
                "the student encoder is LiteMedSAM's bundled encoder distilled: it cannot carry other weights or "
                "a checkpoint (use --encoder teacher)"
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ModelError(f"threads must be a positive integer, got {self.threads!r}")
        if self.threshold is not None and not (
            isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1
        ):
            raise ModelError(f"the detection threshold must be in [0, 1], got {self.threshold!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> ModelSpec:
        """The spec of a parsed command line: its ``backend``, ``weights``, ``checkpoint``, ``precision``,
        ``threads`` and ``threshold`` attributes (any subset; absent or None ones keep their defaults), then
        ``overrides``."""
        values = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        values = {name: value for name, value in values.items() if value is not None}
        return cls(**{**values, **overrides})

    # -- resolving ---------------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path | None:
        """The checkpoint file: the path given, or the file a registered name points to (None without one).
        An unknown name raises ModelError listing the registered ones."""
        if self.checkpoint is None:
            return None
        from oncoseg.train.checkpoints import resolve

        path = resolve(self.checkpoint)
        if path.is_dir():
            hint = " (SAM3's weights folder goes to --weights)" if self.backend == "sam3" else ""
            raise ModelError(
                f"checkpoint {self.checkpoint} is a folder: expected a LoRA adapter file, a full state dict "
                f"or a registered name{hint}"
            )
        return path

    def describe(self) -> str:
        """One line for logs, e.g. "litemedsam, bundled weights, checkpoint latest (/runs/a.safetensors),
        precision auto"."""
        base = "bundled weights" if self.backend == "litemedsam" else "weights $ONCOSEG_SAM3_WEIGHTS"
        parts = [self.backend, f"weights {self.weights}" if self.weights else base]
        if self.checkpoint is not None:
            try:
                path = self.checkpoint_path()
            except OncoSegError:
                path = None
            shown = "" if path is None or str(path) == self.checkpoint else f" ({path})"
            parts.append(f"checkpoint {self.checkpoint}{shown}")
        parts.append(f"precision {self.precision}")
        if self.backend == "litemedsam":
            parts.append(f"encoder {self.resolved_encoder()}")
        if self.threads is not None:
            parts.append(f"threads {self.threads}")
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        return ", ".join(parts)

    def resolved_encoder(self) -> str:
        """ "student" or "teacher": what ``encoder="auto"`` means for this spec (LiteMedSAM only)."""
        if self.encoder != "auto":
            return self.encoder
        from oncoseg.models import student

        plain = self.backend == "litemedsam" and not self.weights and not self.checkpoint
        return "student" if plain and student.available() else "teacher"

    # -- building ----------------------------------------------------------------------------------------------
    def build_model(self):
        """The torch module with the base weights and the checkpoint applied (LiteMedSAM or SAM3)."""
        return self._parts()[0]

    def _parts(self) -> tuple[Any, dict[str, Any]]:
        """The model and the further constructor arguments of its backend."""
        if self.backend == "litemedsam":
            from oncoseg.models.litemedsam import build_model

            if self.weights and Path(self.weights).is_dir():
                raise ModelError(
                    f"LiteMedSAM's base weights are one state dict file, not a folder ({self.weights}); "
                    "a weights folder is SAM3's (--backend sam3)"
                )

            model, options = build_model(self.weights), {}
        elif self.backend == "sam3":
            from oncoseg.models.sam3 import load_model

            model, tokenizer, normalisation = load_model(self.weights)
            options = {"tokenizer": tokenizer, "normalisation": normalisation}
        else:
            raise ModelError(f"the {self.backend} backend has no model to load a checkpoint into")
        path = self.checkpoint_path()
        if path is not None:
            load_checkpoint(model, path, "LiteMedSAM" if self.backend == "litemedsam" else "SAM3")
        return model, options

    def build_backend(self):
        """The `Backend` this spec describes (sets torch's thread count first when ``threads`` is given)."""
        from oncoseg.models import available_backends, load_backend

        if self.backend not in available_backends():
            raise ModelError(
                f"unknown backend {self.backend!r}; available: {', '.join(available_backends())}"
            )
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        if self.backend not in ("litemedsam", "sam3"):  # a backend registered by a plug-in: its own loading
            if self.checkpoint is not None:
                raise ModelError(f"the {self.backend} backend takes no checkpoint")
            options = {"weights": self.weights} if self.weights else {}
            if self.precision != "auto":
                options["precision"] = self.precision
            return load_backend(self.backend, **options)
        model, options = self._parts()
        if self.backend == "sam3" and self.threshold is not None:
            options["threshold"] = self.threshold
        if self.backend == "litemedsam":
            options["encoder"] = self.resolved_encoder()
        return load_backend(self.backend, model=model, precision=self.precision, **options)

    def build_predictor(self, **predictor_options: Any):
        """A `Predictor` on `build_backend`; ``predictor_options`` go to it (e.g. ``cache_slices``)."""
        from oncoseg.predictor import Predictor

        if self.embedding_store is not None:
            predictor_options.setdefault("embedding_store", self.embedding_store)
        return Predictor(self.build_backend(), **predictor_options)


# -- checkpoint files -------------------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> tuple[str, dict | None]:
    """``("adapter", None)`` for an Onco-Seg LoRA adapter file, ``("state", tensors)`` for anything else torch or
    safetensors can read (the tensors unwrapped from a ``model``/``state_dict`` entry). A training checkpoint
    (``oncoseg train``'s ``last.ckpt``) raises ModelError naming the adapter to use instead."""
    import torch

    from oncoseg.models.state_dicts import is_training_checkpoint, training_checkpoint_message
    from oncoseg.train.lora import FORMAT

    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(8)
    try:
        if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save (zip) or a legacy pickle
            blob = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("format") == FORMAT:
                    return "adapter", None
                blob = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # noqa: BLE001 - torch and safetensors raise many kinds for a bad file
        raise ModelError(
            f"cannot read checkpoint {path.name} as a LoRA adapter or a state dict ({type(error).__name__})"
        ) from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return "adapter", None
    if is_training_checkpoint(blob):
        raise ModelError(
            "checkpoint " + training_checkpoint_message(path, "a LoRA adapter or a full state dict")
        )
    if isinstance(blob, dict):
        for key in _STATE_KEYS:
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    return "state", blob


def load_checkpoint(model, path: Path, model_name: str) -> str:
    """Apply the checkpoint at ``path`` to ``model`` in place: a LoRA adapter (loaded strictly and merged) or a
    full state dict (strict). Returns "adapter" or "state dict"; anything that fits as neither raises one
    ModelError naming what was expected and what was found."""
    path = Path(path)
    kind, state = read_checkpoint(path)
    if kind == "adapter":
        from oncoseg.train.lora import load_adapter, merge_lora

        try:
            load_adapter(model, path)
        except OncoSegError as error:
            raise ModelError(str(error)) from None
        merge_lora(model).eval()
        return "adapter"
    import torch

    from oncoseg.models.state_dicts import mismatch

    expected = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else "a mapping with non-tensor values"
        raise ModelError(
            f"checkpoint {path.name} fits {model_name} neither as a LoRA adapter nor as a full state dict: "
            f"expected {len(expected)} named tensors, found {found}"
        )
    problem = mismatch(expected, state)
    if problem:
        raise ModelError(
            f"checkpoint {path.name} fits {model_name} neither as a LoRA adapter nor as a full state dict: "
            f"expected {len(expected)} tensors of {model_name}, found {len(state)} ({problem})"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    return "state dict"
