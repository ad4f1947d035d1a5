"""`FrameTransform`: image pixels <-> a model's square input frame (boxes, points, images, mask logits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oncoseg.models.transform import FrameTransform

SIZES = [(256, 256), (512, 384), (384, 512), (101, 57), (57, 101), (1, 300), (300, 1), (1, 1), (7, 1000)]
FRAMES = [
    FrameTransform(256),
    FrameTransform(112, keep_aspect=False),
    FrameTransform(1008, keep_aspect=False),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f"{f.size}-{'aspect' if f.keep_aspect else 'square'}")
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_boxes_and_points_round_trip(frame, size):
    h, w = size
    rng = np.random.default_rng(h * 1000 + w)
    points = rng.random((5, 2)) * [w - 1, h - 1]
    boxes = np.sort(rng.random((4, 2, 2)) * [w - 1, h - 1], axis=1).reshape(4, 4)
    np.testing.assert_allclose(frame.undo_coords(frame.apply_coords(points, size), size), points, atol=1e-9)
    np.testing.assert_allclose(frame.undo_boxes(frame.apply_boxes(boxes, size), size), boxes, atol=1e-9)
    framed = frame.apply_boxes(np.array([0.0, 0.0, w, h]), size)  # the image's far corner ...
    ih, iw = frame.input_size(size)
    assert framed[2] == pytest.approx(w * frame.scale(size)[0]) and framed[2] <= frame.size + 1e-9
    assert abs(framed[2] - iw) <= 0.5 and abs(framed[3] - ih) <= 0.5  # ... is where the resized image ends
    tensor = torch.tensor(points, dtype=torch.float32)  # tensors keep dtype; same numbers as numpy
    out = frame.apply_coords(tensor, size)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), frame.apply_coords(points, size), rtol=1e-6)


def test_longest_side_keeps_the_aspect_ratio_and_square_stretches():
    aspect, square = FrameTransform(256), FrameTransform(1008, keep_aspect=False)
    assert aspect.input_size((512, 384)) == (256, 192) and aspect.scale((512, 384)) == (0.5, 0.5)
    assert aspect.input_size((101, 57)) == (256, 144)  # 57 * 256/101 = 144.47: rounded
    assert aspect.input_size((1, 300)) == (1, 256) and aspect.input_size((300, 1)) == (256, 1)
    assert aspect.input_size((1, 1)) == (256, 256) and aspect.input_size((7, 1000)) == (2, 256)
    assert square.input_size((101, 57)) == (1008, 1008)
    assert square.scale((100, 50)) == (1008 / 50, 1008 / 100)
    np.testing.assert_allclose(aspect.apply_boxes([10, 20, 30, 40], (512, 384)), [5, 10, 15, 20])
    np.testing.assert_allclose(square.apply_coords([[25, 50]], (100, 50)), [[504, 504]])


def test_float32_boxes_are_scaled_in_float32():
    """Boxes come as float32 (`Box.as_array`): scaled in float32, as LiteMedSAM's prompt encoder takes them."""
    box = np.array([3.3, 4.4, 50.1, 60.7], np.float32)
    out = FrameTransform(256).apply_boxes(box, (101, 77))
    assert out.dtype == np.float32
    assert np.array_equal(out, box * (256 / 101))


def test_bad_sizes_and_shapes_are_refused():
    with pytest.raises(ValueError):
        FrameTransform(0)
    with pytest.raises(ValueError):
        FrameTransform(256).scale((0, 10))
    with pytest.raises(ValueError):
        FrameTransform(256).apply_boxes([1, 2, 3], (10, 10))
    with pytest.raises(ValueError):
        FrameTransform(256).logits_to_image(torch.zeros(1, 256, 128), (10, 10))


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_image_to_frame_and_logits_back_to_the_image_grid(size):
    """A mask put into the frame the way the image is and brought back lands on itself (up to its edges)."""
    h, w = size
    frame = FrameTransform(256)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) ** 2 / max(h / 3, 0.5) ** 2 + (xx - w / 2) ** 2 / max(w / 3, 0.5) ** 2) <= 1
    image = torch.from_numpy(mask.astype(np.float32))[None]  # [1, H, W]
    framed = frame.image_to_frame(image)
    assert framed.shape == (1, 256, 256)
    ih, iw = frame.input_size(size)
    assert not framed[:, ih:, :].any() and not framed[:, :, iw:].any()  # padding at the bottom/right only
    back = frame.logits_to_image(framed[0] - 0.5, size) > 0  # as logits: > 0 inside
    assert back.shape == size
    assert (back.numpy() == mask).mean() > (
        0.9 if min(ih, iw) >= 4 else 0.8
    )  # 7 rows squeezed into 2: coarse
    batch = frame.image_to_frame(image[None].repeat(2, 3, 1, 1))  # [B, C, H, W] works too
    # the same up to float rounding: with 1 torch thread (set by earlier tests in the same process) the
    # batched resize sums in another order
    assert batch.shape == (2, 3, 256, 256) and torch.allclose(batch[1, 2], framed[0], atol=1e-5)


def test_lower_resolution_logits_cover_the_same_part_of_the_frame():
    """Logits at a quarter of the frame's resolution (SAM3's 288 for 1008) map the image's part the same way."""
    frame = FrameTransform(256)
    size = (100, 200)  # the image fills the top half of the frame
    low = torch.full((64, 64), -1.0)
    low[:32, :32] = 1.0  # the left half of the image's part
    back = frame.logits_to_image(low[None], size)[0] > 0
    assert back.shape == size and back[:, :95].all() and not back[:, 105:].any()
    square = FrameTransform(112, keep_aspect=False)
    low = torch.full((2, 32, 32), -1.0)
    low[:, :, 16:] = 1.0
    back = square.logits_to_image(low, (30, 90)) > 0
    assert back.shape == (2, 30, 90) and back[:, :, 46:].all() and not back[:, :, :44].any()


def test_logit_pixels_match_the_frame_and_stay_inside():
    frame = FrameTransform(256)
    rows, cols = frame.logit_pixels([[0, 0], [383, 511], [191.5, 255.2]], (512, 384))
    assert rows == [0, 255, 128] and cols == [0, 192, 96]  # 511 * 0.5 = 255.5 -> 256 -> clipped to 255
    rows, cols = FrameTransform(1008, keep_aspect=False).logit_pixels([[49, 99]], (100, 50), logit_size=288)
    assert rows == [285] and cols == [282]


def test_every_backend_declares_its_one_transform():
    from oncoseg.models.base import Backend
    from oncoseg.models.litemedsam import IMAGE_SIZE, LiteMedSAMBackend

    assert Backend.transform is None  # a plug-in backend may have none
    assert LiteMedSAMBackend.transform == FrameTransform(IMAGE_SIZE, keep_aspect=True)
