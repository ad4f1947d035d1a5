"""The CPU-laid-out mask decoder must give SAM's own decoder's numbers for every kind of prompt."""

import numpy as np
import pytest
import torch

from oncoseg.models import fast_decoder
from oncoseg.models.litemedsam import LiteMedSAMBackend


@pytest.fixture(scope="module")
def backend():
    return LiteMedSAMBackend(precision="fp32")


def reference_decode(model, features, sparse, dense):
    return model.mask_decoder(
        image_embeddings=features,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


@pytest.mark.parametrize(
    "boxes, points, with_mask",
    [
        ([[20.0, 30.0, 120.0, 100.0]], None, False),
        ([[20.0, 30.0, 120.0, 100.0], [5.0, 5.0, 250.0, 250.0], [100.0, 100.0, 110.0, 140.0]], None, False),
        ([[20.0, 30.0, 120.0, 100.0]], ([[[60.0, 60.0], [30.0, 90.0]]], [[1, 0]]), False),
        (None, ([[[60.0, 60.0]]], [[1]]), False),
        ([[20.0, 30.0, 120.0, 100.0], [40.0, 40.0, 200.0, 90.0]], None, True),
    ],
    ids=["one box", "three boxes", "box and clicks", "click only", "mask prompt"],
)
def test_fast_decoder_matches_sam_decoder(backend, boxes, points, with_mask):
    model = backend.model
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 64, 64, generator=generator)
    box_tensor = torch.tensor(boxes) if boxes is not None else None
    point_tensors = None
    if points is not None:
        point_tensors = (torch.tensor(points[0]), torch.tensor(points[1]))
    n = len(boxes) if boxes is not None else 1
    masks = torch.randn(n, 1, 256, 256, generator=generator) * 5 if with_mask else None
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=point_tensors, boxes=box_tensor, masks=masks)
        expected_logits, expected_scores = reference_decode(model, features, sparse, dense)
        state = fast_decoder.image_state(
            model.mask_decoder,
            features,
            model.prompt_encoder.get_dense_pe(),
            model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1),
        )
        logits, scores = fast_decoder.decode(model.mask_decoder, state, sparse, dense if with_mask else None)
    assert logits.shape == expected_logits.shape == (n, 1, 256, 256)
    assert scores.shape == expected_scores.shape == (n, 1)
    assert torch.allclose(logits, expected_logits, atol=1e-3, rtol=1e-4)
    assert torch.allclose(scores, expected_scores, atol=1e-5)
    assert expected_logits.abs().max() > 1  # the comparison is not between two near-zero maps


def test_decoder_state_is_cached_on_the_embedding(backend):
    from oncoseg.prompts import Box, Prompt

    image = np.random.default_rng(0).random((120, 160, 3), dtype=np.float32)
    embedding = backend.encode(image)
    first = backend.decode(embedding, [Prompt(box=Box(10, 10, 80, 90))])
    assert len(embedding.cache) == 1
    state = next(iter(embedding.cache.values()))
    second = backend.decode(embedding, [Prompt(box=Box(10, 10, 80, 90))])
    assert next(iter(embedding.cache.values())) is state
    np.testing.assert_array_equal(first.masks, second.masks)


def test_bf16_decoder_agrees_with_fp32_on_a_real_image(backend, shared_data):
    from oncoseg.io import load_image
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Prompt, box_from_mask

    root = shared_data / "kvasir-seg"
    name = min((root / "images").iterdir()).name
    image = load_image(root / "images" / name)
    truth = load_image(root / "masks" / name).array
    truth = (truth[..., 0] if truth.ndim == 3 else truth) > 127
    masks = {}
    for precision in ("fp32", "bf16"):
        predictor = Predictor(LiteMedSAMBackend(precision=precision) if precision == "bf16" else backend)
        predictor.set_image(image, "endoscopy")
        masks[precision] = predictor.predict(Prompt(box=box_from_mask(truth))).masks[0]
    a, b = masks["fp32"], masks["bf16"]
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.97


@pytest.mark.parametrize("radius", [0, 2])
def test_logits_at_the_clicks_equal_the_upscaled_logits(backend, radius):
    """Choosing among candidates reads logits at the clicks without upscaling: the values must be the full
    upscaled map's, smoothed like the click path smooths them (borders included)."""
    model = backend.model
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 256, 64, 64, generator=generator)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 100.0], [0.0, 0.0, 255.0, 255.0]])
    rows, cols = [0, 37, 255, 128, 3], [0, 200, 255, 1, 254]
    with torch.inference_mode():
        sparse, _ = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        state = fast_decoder.image_state(
            model.mask_decoder,
            features,
            model.prompt_encoder.get_dense_pe(),
            model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1),
        )
        decoded = fast_decoder.decode_tokens(model.mask_decoder, state, sparse)
        full = fast_decoder.upscale(model.mask_decoder, decoded)
        if radius:
            full = torch.nn.functional.avg_pool2d(full, 2 * radius + 1, 1, radius, count_include_pad=False)
        values = fast_decoder.logits_at(model.mask_decoder, decoded, rows, cols, radius)
    expected = full[:, 0, rows, cols]
    assert values.shape == (2, len(rows))
    assert torch.allclose(values, expected, atol=1e-4)
    assert expected.abs().max() > 1


def test_click_choice_without_upscaling_matches_choosing_on_full_logits(backend):
    """Clicks choose among candidate masks: reading the logits at the clicks must pick what the whole upscaled
    candidates would, for clicks alone, with exclude clicks, and for a box with a click outside its mask."""
    from oncoseg.models.litemedsam import choose_click_candidate, click_pixels
    from oncoseg.prompts import Box, Point, Prompt

    rng = np.random.default_rng(2)
    image = rng.random((200, 300, 3), dtype=np.float32)
    image[60:140, 90:190] += 1.0  # a bright square to segment
    embedding = backend.encode(image / image.max())
    prompts = [
        Prompt(points=(Point(130, 100, True),)),
        Prompt(points=(Point(130, 100, True), Point(170, 120, False))),
        Prompt(points=(Point(130, 100, True), Point(20, 20, True), Point(250, 180, False))),
        Prompt(box=Box(100, 70, 180, 130), points=(Point(130, 100, True), Point(280, 190, True))),
    ]
    for prompt in prompts:
        chosen = backend.decode(embedding, [prompt])
        # the same candidates, every one upscaled, chosen on the full maps
        positive = [p for p in prompt.points if p.positive]
        negative = [p for p in prompt.points if not p.positive]
        if prompt.box is None:
            h, w = embedding.original_size
            side = max(h, w)
            x0, x1 = min(p.x for p in positive), max(p.x for p in positive)
            y0, y1 = min(p.y for p in positive), max(p.y for p in positive)
            boxes = [
                Box(max(0.0, x0 - f * side), max(0.0, y0 - f * side), min(w - 1.0, x1 + f * side),
                    min(h - 1.0, y1 + f * side))
                for f in backend.click_box_fractions
            ]  # fmt: skip
            groups = [[Prompt(box=b) for b in boxes]]
            if negative:
                groups.append([Prompt(box=b, points=prompt.points) for b in boxes])
        else:
            groups = [[Prompt(box=prompt.box)], [prompt]]
        logits, scores = zip(*(backend._decode_logits(embedding, group) for group in groups))
        logits, scores = torch.cat(logits), np.concatenate(scores)
        longest = max(embedding.original_size)

        def covers(points, logits=logits, longest=longest):
            rows, cols = click_pixels(points, longest)
            return (logits[:, 0, rows, cols] > 0).numpy()

        best = choose_click_candidate(covers(positive).all(axis=1), covers(negative).any(axis=1), scores)
        expected = backend._full_size(embedding, logits[best : best + 1], scores[best : best + 1])
        np.testing.assert_array_equal(chosen.masks, expected.masks)
        assert chosen.scores[0] == pytest.approx(expected.scores[0])


def test_box_prompts_upscale_only_near_their_box_with_the_same_masks(backend, shared_data):
    """A box prompt's logits are upscaled only over the tokens near its box (and clicks): inside that region
    they are the full upscale's exactly, outside they are OUTSIDE_LOGIT, and the masks are the same."""
    from oncoseg.io import load_image
    from oncoseg.predictor import Predictor
    from oncoseg.prompts import Box, Point, Prompt

    root = shared_data / "kvasir-seg"
    name = min((root / "images").iterdir()).name
    predictor = Predictor(backend)
    predictor.set_image(load_image(root / "images" / name), "endoscopy")
    embedding = predictor.embedding(None)
    h, w = embedding.original_size
    box = Box(0.3 * w, 0.3 * h, 0.6 * w, 0.55 * h)
    regions = []
    for prompt in (Prompt(box=box), Prompt(box=box, points=(Point(0.9 * w, 0.5 * h, True),))):
        decoded = backend._decode_tokens(embedding, [prompt])
        r0, r1, c0, c1 = decoded.regions[0]
        regions.append(decoded.regions[0])
        assert 0 < r0 < r1 < 64 and 0 < c0 < c1 <= 64 and (r1 - r0) * (c1 - c0) < 64 * 64 / 2
        with torch.inference_mode():
            cropped = fast_decoder.upscale(backend._decoder, decoded)
            full = fast_decoder.upscale(backend._decoder, decoded._replace(regions=None))
        inside = (slice(None), 0, slice(4 * r0, 4 * r1), slice(4 * c0, 4 * c1))
        assert torch.equal(cropped[inside], full[inside])
        outside = torch.ones_like(full[:, 0], dtype=torch.bool)
        outside[:, 4 * r0 : 4 * r1, 4 * c0 : 4 * c1] = False
        assert (cropped[:, 0][outside] == fast_decoder.OUTSIDE_LOGIT).all() and (
            full[:, 0][outside] < 0
        ).all()
    assert regions[1][3] > regions[0][3] + 8  # the click beyond the box widened the region to it
    small = Box(0.4 * w, 0.4 * h, 0.45 * w, 0.45 * h)
    both = backend._decode_tokens(embedding, [Prompt(box=box), Prompt(box=small)])
    assert both.regions[0] == regions[0] and both.pick(1).regions == both.regions[1:]  # each prompt its own
    with torch.inference_mode():
        alone = fast_decoder.upscale(backend._decoder, both.pick(1))
        together = fast_decoder.upscale(backend._decoder, both)  # over the union of the two regions
    assert torch.equal((alone[0] > 0), (together[1] > 0))
