"""The student image encoder: LiteMedSAM's TinyViT distilled to run on a 168×168 frame.

It is the teacher's network (same layers, same mask decoder downstream) with weights trained by
`oncoseg.train.distill` to give, from the 256×256 frame shrunk to 168×168, the embedding the teacher gives
from the full frame. 0.43× the pixels: about 2.3× faster on a CPU (benchmarks/speed.py measures both in one
run). Prompts, masks and the 256×256 frame are unchanged; only the image is shrunk before encoding.

The weights ship in the package (``weights/student_encoder.pt``, float16); ``LiteMedSAMBackend(encoder=...)``
chooses: "student", "teacher", or "auto" (the student with the bundled checkpoint, the teacher for a user's
or a fine-tuned model, whose encoder the student never learnt).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from oncoseg.errors import ModelError

if TYPE_CHECKING:
    import torch

WEIGHTS = Path(__file__).parent / "weights" / "student_encoder.pt"
ENCODERS = ("auto", "student", "teacher")


def available() -> bool:
    """Whether the package holds the student's weights."""
    return WEIGHTS.is_file()


def load(teacher_encoder: torch.nn.Module, path: Path | None = None) -> tuple[torch.nn.Module, int]:
    """``(encoder, input size)``: a copy of the teacher's encoder carrying the student's weights (float32);
    ``path`` defaults to the shipped `WEIGHTS`."""
    import torch

    path = WEIGHTS if path is None else path
    if not Path(path).is_file():
        raise ModelError(f"student encoder weights {Path(path).name} not found: use encoder='teacher'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        size, tensors = int(payload["size"]), payload["encoder"]
    except Exception as error:  # noqa: BLE001 - a damaged file can fail in many ways
        raise ModelError(
            f"cannot read student encoder weights {Path(path).name}: {type(error).__name__}"
        ) from None
    student = copy.deepcopy(teacher_encoder)
    try:
        student.load_state_dict(
            {name: value.float() if value.is_floating_point() else value for name, value in tensors.items()}
        )
    except RuntimeError as error:
        raise ModelError(
            f"student weights {Path(path).name} do not fit: {str(error).splitlines()[0][:160]}"
        ) from None
    return student.eval(), size


def shrink(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, 256, 256)`` frames → the student's ``size``×``size`` input (antialiased bilinear, as trained)."""
    import torch.nn.functional as F

    if frames.shape[-1] == size:
        return frames
    return F.interpolate(
        frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
