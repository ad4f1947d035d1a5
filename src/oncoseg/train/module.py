"""The Lightning module that fine-tunes a promptable model: box-prompted forward pass, the modality-weighted
Dice + Focal loss, validation Dice/IoU, AdamW with cosine warm restarts (the paper's recipe).

Each epoch starts from a seed derived from the run's seed and the epoch number, so an epoch replayed after a
crash draws the same dropout masks and samples as the uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import lightning
import torch
from oncoseg.train.losses import ModalityLoss
from torch import nn


def box_forward(model: nn.Module, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Mask logits ``[B, 1, 256, 256]`` of a SAM-style model for one box per image (``[B, 4]``, 256 frame)."""
    features = model.image_encoder(image)
    sparse, dense = model.prompt_encoder(points=None, boxes=box[:, None, :], masks=None)
    logits, _ = model.mask_decoder(
        image_embeddings=features,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return logits


def dice_iou(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Dice and IoU of ``logits > 0`` against a binary target (both empty counts as 1)."""
    prediction = (logits > 0).flatten(1).float()
    truth = (target > 0.5).flatten(1).float()
    overlap = (prediction * truth).sum(1)
    total = prediction.sum(1) + truth.sum(1)
    union = total - overlap
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * overlap / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(total), overlap / union.clamp(min=1))
    return dice, iou


class SegmentationModule(lightning.LightningModule):
    """Fine-tunes ``model`` (e.g. LiteMedSAM with LoRA adapters; frozen parameters stay frozen)."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        restart_epochs: int = 5,
        restart_mult: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = ModalityLoss()
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.restart_epochs, self.restart_mult = restart_epochs, restart_mult
        self.seed = seed

    def forward(self, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return box_forward(self.model, image, box)

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(self.seed * 1_000_003 + self.current_epoch * 7_919 + self.global_rank)

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        logits = self(batch["image"], batch["box"])
        loss = self.loss(logits.float(), batch["mask"], batch["modality"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["box"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        logits = self(batch["image"], batch["box"])
        loss = self.loss(logits.float(), batch["mask"], batch["modality"])
        dice, iou = dice_iou(logits, batch["mask"])
        size = len(batch["box"])
        self.log("val_loss", loss, sync_dist=True, batch_size=size)
        self.log("val_dice", dice.mean(), prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val_iou", iou.mean(), sync_dist=True, batch_size=size)

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=self.restart_epochs, T_mult=self.restart_mult
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
