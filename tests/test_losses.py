"""The modality-weighted Dice + Focal loss."""

from __future__ import annotations

import pytest
import torch

from oncoseg.errors import OncoSegError
from oncoseg.train.losses import ModalityLoss, loss_weights, segmentation_loss

STANDARD = {"lambda_dice": 1.0, "lambda_focal": 1.0, "gamma": 2.0}
IMBALANCED = {"lambda_dice": 0.5, "lambda_focal": 1.5, "gamma": 3.0}


def lesion(batch: int = 2, size: int = 64) -> torch.Tensor:
    target = torch.zeros(batch, 1, size, size)
    target[:, :, 20:40, 24:44] = 1
    return target


def confident(target: torch.Tensor, margin: float = 12.0) -> torch.Tensor:
    return torch.where(target > 0, margin, -margin)


def test_weights_per_modality():
    for name in (
        "endoscopy",
        "colonoscopy",
        "ES",
        "ultrasound",
        "US",
        "dermoscopy",
        "mammography",
        "MG",
        "mammo",
    ):
        assert loss_weights(name) == IMBALANCED, name
    for name in ("ct", "CT", "mri", "MR", "pet", "xray", "cxr", "srh"):
        assert loss_weights(name) == STANDARD, name
    with pytest.raises(OncoSegError, match="unknown modality"):
        loss_weights("sonar")


def test_segmentation_loss_matches_monai_dice_focal():
    from monai.losses import DiceFocalLoss

    loss = segmentation_loss("endoscopy")
    assert (loss.lambda_dice, loss.lambda_focal, loss.gamma) == (0.5, 1.5, 3.0)
    assert segmentation_loss("colonoscopy") is loss  # cached per weighting
    assert segmentation_loss("CT").lambda_focal == 1.0
    # the same numbers and gradients as MONAI's own DiceFocalLoss, on confident, unsure and empty cases
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 24, 20, generator=generator) * torch.tensor([1.0, 8.0, 30.0, 0.1]).view(
        4, 1, 1, 1
    )
    target = (torch.rand(4, 1, 24, 20, generator=generator) > 0.7).float()
    target[3] = 0.0
    for modality in ("ct", "endoscopy"):
        weights = loss_weights(modality)
        monai_loss = DiceFocalLoss(
            sigmoid=True, squared_pred=True, smooth_nr=1.0, smooth_dr=1.0, reduction="mean", **weights
        )
        ours_in, theirs_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        ours, theirs = segmentation_loss(modality)(ours_in, target), monai_loss(theirs_in, target)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        ours.backward(), theirs.backward()
        torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("modality", ["ct", "endoscopy"])
def test_perfect_prediction_beats_inverted(modality):
    target = lesion()
    loss = segmentation_loss(modality)
    perfect, inverted = loss(confident(target), target).item(), loss(-confident(target), target).item()
    assert perfect < 1e-3
    assert inverted > 1.0 and inverted > 1000 * max(perfect, 1e-6)


@pytest.mark.parametrize("modality", ["mri", "ultrasound"])
def test_empty_target_trains_toward_empty_mask(modality):
    empty = torch.zeros(2, 1, 256, 256)
    loss = segmentation_loss(modality)
    assert loss(torch.full_like(empty, -12.0), empty).item() < 1e-3
    assert loss(torch.full_like(empty, 12.0), empty).item() > 1.0
    # from an undecided start the gradient pushes every pixel toward background
    logits = torch.zeros_like(empty, requires_grad=True)
    loss(logits, empty).backward()
    assert (logits.grad > 0).all()


def test_mixed_batch_is_the_mean_of_per_sample_losses():
    generator = torch.Generator().manual_seed(0)
    target = lesion(4)
    target[3] = 0  # one sample without a lesion
    logits = torch.randn(4, 1, 64, 64, generator=generator) * 3
    modalities = ["CT", "endoscopy", "MR", "US"]
    per_sample = [
        segmentation_loss(m)(logits[i : i + 1], target[i : i + 1]) for i, m in enumerate(modalities)
    ]
    combined = ModalityLoss()(logits, target, modalities)
    torch.testing.assert_close(combined, torch.stack(per_sample).mean())
    # a single modality for the whole batch: the plain loss
    torch.testing.assert_close(ModalityLoss()(logits, target, "ct"), segmentation_loss("ct")(logits, target))
    # the weighting matters: not the same as treating every sample as CT
    assert not torch.allclose(combined, segmentation_loss("ct")(logits, target))


def test_gradients_reach_the_logits():
    target = lesion(3).bool()
    logits = torch.zeros(3, 1, 64, 64, requires_grad=True)
    loss = ModalityLoss()(logits, target, ["ct", "dermoscopy", "mammography"])
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    inside, outside = logits.grad[target], logits.grad[~target]
    assert (inside < 0).all() and (outside > 0).all()  # raise the lesion's logits, lower the background's


def test_bad_shapes_are_refused():
    loss = ModalityLoss()
    with pytest.raises(OncoSegError, match="logits"):
        loss(torch.zeros(2, 64, 64), torch.zeros(2, 64, 64), ["ct", "ct"])
    with pytest.raises(OncoSegError, match="does not match"):
        loss(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 32, 32), ["ct", "ct"])
    with pytest.raises(OncoSegError, match="3 modalities for a batch of 2"):
        loss(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64), ["ct", "ct", "ct"])
