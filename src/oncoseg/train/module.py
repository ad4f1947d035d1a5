"""The Lightning module that fine-tunes a promptable model: box-prompted forward pass, the modality-weighted
Dice + Focal loss, validation Dice/IoU, AdamW with cosine warm restarts (the paper's recipe; the rate is set
from the epoch number at each epoch's start, the same schedule as torch's CosineAnnealingWarmRestarts).

Each training batch seeds torch from the run's seed, the epoch and the batch number, so a step replayed after a crash draws
the same dropout masks as in the uninterrupted run (the samples are fixed by seed and epoch: see ``phases``). The
epoch's mean training loss is kept in the checkpoint, so an epoch resumed in its middle logs the same mean.
"""

from __future__ import annotations

import math
from typing import Any

import lightning
import torch
from torch import nn

from oncoseg.train.losses import ModalityLoss


def box_forward(model: nn.Module, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Mask logits ``[B, 1, h, w]`` of a promptable model for one box per image (``[B, 4]``, 256 frame): SAM3
    (``Sam3VideoModel``: a list of logits when its detector heads train too, see ``oncoseg.models.sam3``), else a
    SAM-style model (LiteMedSAM; 256×256 logits)."""
    if type(model).__name__ == "Sam3VideoModel":
        from oncoseg.models.sam3 import box_forward as sam3_box_forward

        return sam3_box_forward(model, image, box)
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


def match_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logits resized (bilinear) to the target mask's size when a model predicts at another resolution."""
    if logits.shape[-2:] == target.shape[-2:]:
        return logits
    return nn.functional.interpolate(logits.float(), target.shape[-2:], mode="bilinear", align_corners=False)


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
        self.epoch_loss = [0.0, 0]  # this epoch's sum of loss × samples and samples: saved in checkpoints
        self.step_metrics: dict[str, float] = {}  # what the last training step logged (see train.resume)

    def forward(self, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        return box_forward(self.model, image, box)

    def learning_rate(self, epoch: int) -> float:
        """Cosine annealing with warm restarts (T0 = ``restart_epochs``, period × ``restart_mult`` after each
        restart) as a function of the epoch: nothing to save or restore, so a resumed run has the same rate."""
        period, start = self.restart_epochs, 0
        while epoch >= start + period:
            start, period = start + period, period * self.restart_mult
        return 0.5 * self.lr * (1 + math.cos(math.pi * (epoch - start) / period))

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        # Dropout masks depend only on (seed, epoch, batch, rank): whatever else drew random numbers before (data
        # loader start-up, validation), a batch replayed after a resume draws the same masks.
        torch.manual_seed(hash((self.seed, self.current_epoch, batch_index, self.global_rank)) % 2**63)

    def on_train_epoch_start(self) -> None:
        # not called when a run resumes mid-epoch: the optimizer's saved state has the rate, and epoch_loss
        # comes from the checkpoint (on_load_checkpoint)
        rate = self.learning_rate(self.current_epoch)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = rate
        self.epoch_loss = [0.0, 0]

    def on_train_epoch_end(self) -> None:
        total, count = self.epoch_loss
        if count:
            self.log("train_loss_epoch", total / count, on_step=False, on_epoch=True)
        self.log("lr", self.learning_rate(self.current_epoch), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["oncoseg_epoch_loss"] = list(self.epoch_loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epoch_loss = list(checkpoint.get("oncoseg_epoch_loss", [0.0, 0]))

    def predictions(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """The model's mask logits at the target's size: one tensor, or several for models with several heads
        (SAM3's tracker and detector), each trained with the loss; the first is the one scored."""
        out = self(batch["image"], batch["box"])
        return [
            match_size(logits, batch["mask"]) for logits in (out if isinstance(out, (list, tuple)) else [out])
        ]

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        heads = self.predictions(batch)
        loss = sum(self.loss(logits.float(), batch["mask"], batch["modality"]) for logits in heads)
        size = len(batch["box"])
        self.log("train_loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        self.step_metrics = {"train_loss_step": float(loss.detach())}
        # the epoch's mean is kept here rather than by Lightning, whose running mean a resumed epoch would lose
        self.epoch_loss = [self.epoch_loss[0] + float(loss.detach()) * size, self.epoch_loss[1] + size]
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        heads = self.predictions(batch)
        logits = heads[0]
        loss = sum(self.loss(head.float(), batch["mask"], batch["modality"]) for head in heads)
        dice, iou = dice_iou(logits, batch["mask"])
        size = len(batch["box"])
        self.log("val_loss", loss, sync_dist=True, batch_size=size)
        self.log("val_dice", dice.mean(), prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val_iou", iou.mean(), sync_dist=True, batch_size=size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
