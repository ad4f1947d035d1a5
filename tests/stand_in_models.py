"""Stand-in models for tests that check what happens around the model, not the model itself."""

from __future__ import annotations

import numpy as np

from oncoseg.models.base import Backend, ImageEmbedding, MaskPrediction


class BoxBackend(Backend):
    """Paints each prompt's box (or a 7x7 square round its first point) with score 0.9, wherever it is, as SAM
    does, confidently, even on a blank image. ``decodes`` counts the decoder calls."""

    name = "box"

    def __init__(self):
        self.decodes = 0

    def encode(self, image):
        return ImageEmbedding(
            np.zeros(16, np.float32), tuple(image.shape[:2]), tuple(image.shape[:2]), self.name
        )

    def decode(self, embedding, prompts, mask_input=None):
        self.decodes += 1
        h, w = embedding.original_size
        masks = np.zeros((len(prompts), h, w), bool)
        for i, prompt in enumerate(prompts):
            if prompt.box is not None:
                b = prompt.box
                masks[i, int(b.y0) : int(b.y1) + 1, int(b.x0) : int(b.x1) + 1] = True
            else:
                x, y = int(prompt.points[0].x), int(prompt.points[0].y)
                masks[i, max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = True
        return MaskPrediction(masks, np.full(len(prompts), 0.9, np.float32))
