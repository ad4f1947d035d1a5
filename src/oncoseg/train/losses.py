"""Dice + Focal loss on mask logits with the paper's modality weighting (the arithmetic of MONAI's
``DiceFocalLoss`` with ``sigmoid=True, squared_pred=True``, which a test checks; written here so that training
does not import MONAI, whose import alone takes about 10 s in every process, DDP workers included).

Standard weighting (CT, MRI and every modality not listed below): lambda_dice 1.0, lambda_focal 1.0, gamma 2.0.
Extreme class imbalance (mammography, dermoscopy, endoscopy, ultrasound): 0.5, 1.5, 3.0.

The Dice term uses squared predictions in its denominator and a smoothing of 1 in numerator and denominator
(as MedSAM's training): an empty target answered by a confidently empty prediction costs ~0, so images without
a lesion train toward an empty mask, while the smoothing is negligible for real lesions (hundreds of pixels).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oncoseg.errors import OncoSegError
from oncoseg.modality import canonical_modality

STANDARD = "standard"
IMBALANCED = "imbalanced"
WEIGHTS: dict[str, dict[str, float]] = {
    STANDARD: {"lambda_dice": 1.0, "lambda_focal": 1.0, "gamma": 2.0},
    IMBALANCED: {"lambda_dice": 0.5, "lambda_focal": 1.5, "gamma": 3.0},
}
IMBALANCED_MODALITIES = frozenset({"mammography", "dermoscopy", "endoscopy", "ultrasound"})
SMOOTH = 1.0


@functools.lru_cache(maxsize=256)
def weight_group(modality: str) -> str:
    """The weighting group of a modality: "imbalanced" for mammography, dermoscopy, endoscopy and ultrasound
    (or their aliases), else "standard"."""
    return IMBALANCED if canonical_modality(modality) in IMBALANCED_MODALITIES else STANDARD


def loss_weights(modality: str) -> dict[str, float]:
    """``{"lambda_dice", "lambda_focal", "gamma"}`` for a modality name or alias ("US", "colonoscopy", ...)."""
    return dict(WEIGHTS[weight_group(modality)])


class DiceFocalLoss(nn.Module):
    """``lambda_dice * Dice + lambda_focal * Focal`` on ``[B, C, *spatial]`` logits and 0/1 targets.

    Dice: per sample and channel on sigmoid probabilities ``p``, ``1 - (2 Σ p t + 1) / (Σ t² + Σ p² + 1)``,
    averaged. Focal: binary cross-entropy of each pixel times ``(1 - p_t)^gamma`` (``p_t`` the probability given
    to the true class), averaged over all pixels."""

    def __init__(self, lambda_dice: float, lambda_focal: float, gamma: float) -> None:
        super().__init__()
        self.lambda_dice, self.lambda_focal, self.gamma = lambda_dice, lambda_focal, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, logits.ndim))
        probabilities = torch.sigmoid(logits)
        overlap = (probabilities * target).sum(spatial)
        sizes = (target * target).sum(spatial) + (probabilities * probabilities).sum(spatial)
        dice = 1.0 - (2.0 * overlap + SMOOTH) / (sizes + SMOOTH)
        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        # (1 - p_t)^gamma as exp(gamma * log sigmoid(-x) or log sigmoid(x)): no overflow for large logits
        modulation = torch.exp(self.gamma * F.logsigmoid(-logits * (2.0 * target - 1.0)))
        focal = (modulation * cross_entropy).mean()
        return self.lambda_dice * dice.mean() + self.lambda_focal * focal


@functools.cache
def _group_loss(group: str) -> nn.Module:
    return DiceFocalLoss(**WEIGHTS[group])


def segmentation_loss(modality: str) -> nn.Module:
    """The Dice + Focal loss for one modality: ``loss(logits [B,1,H,W], target [B,1,H,W])`` → mean over the
    batch. Modalities with the same weighting share one (stateless) module."""
    return _group_loss(weight_group(modality))


class ModalityLoss(nn.Module):
    """Dice + Focal loss where each sample gets its own modality's weighting; the mean over the batch.

    ``forward(logits [B,1,H,W], target [B,1,H,W] (0/1, any dtype), modalities: list of B names or one name)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.losses = nn.ModuleDict({group: DiceFocalLoss(**weights) for group, weights in WEIGHTS.items()})

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, modalities: Sequence[str] | str
    ) -> torch.Tensor:
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise OncoSegError(f"ModalityLoss expects logits [B, 1, H, W], got {tuple(logits.shape)}")
        if tuple(target.shape) != tuple(logits.shape):
            raise OncoSegError(
                f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
            )
        batch = logits.shape[0]
        if isinstance(modalities, str):
            modalities = [modalities] * batch
        if len(modalities) != batch:
            raise OncoSegError(f"{len(modalities)} modalities for a batch of {batch} samples")
        logits = logits.float()
        target = target.to(device=logits.device, dtype=logits.dtype)
        groups: dict[str, list[int]] = {}
        for index, modality in enumerate(modalities):
            groups.setdefault(weight_group(modality), []).append(index)
        total = logits.new_zeros(())
        for group, indices in groups.items():
            if len(indices) == batch:
                part_logits, part_target = logits, target
            else:
                rows = torch.tensor(indices, device=logits.device)
                part_logits, part_target = logits.index_select(0, rows), target.index_select(0, rows)
            # The group's mean times its size: the sum of its per-sample losses (Dice is per sample, Focal is a
            # mean over equally sized samples).
            total = total + self.losses[group](part_logits, part_target) * len(indices)
        return total / batch
