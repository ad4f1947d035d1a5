"""`SelectMedicalChannels`: bring any supported channel count to the 3 channels SAM expects."""

from __future__ import annotations

from typing import Any

from oncoseg.errors import OncoSegError

# For each mode: input channel count -> indices of the 3 output channels.
CHANNEL_MODES: dict[str, dict[int, list[int]]] = {
    # The preprint's rules. 4 = BraTS (FLAIR, T1w, T1gd, T2w) -> [T1w, T1gd, FLAIR];
    # 2 = SRH (lipids, proteins) -> [lipids, proteins, proteins]; 1 -> replicated; 3 -> unchanged.
    "t1_t1gd_flair": {1: [0, 0, 0], 2: [0, 1, 1], 3: [0, 1, 2], 4: [1, 2, 0]},
    # Two MRI sequences (FLAIR, T1c), as in the BraTS 2015 samples -> [T1c, T1c, FLAIR].
    "flair_t1c": {2: [1, 1, 0]},
}


class SelectMedicalChannels:
    """Pick or replicate channels of a channel-first image ``(C, *spatial)`` to get exactly 3 channels.

    ``mode`` is a key of ``CHANNEL_MODES``; numpy arrays and torch tensors keep their type and dtype. A plain
    callable, as MONAI's ``Compose`` takes it; the dictionary twin is in `oncoseg.preprocess.dictionary`.
    """

    def __init__(self, mode: str = "t1_t1gd_flair") -> None:
        if mode not in CHANNEL_MODES:
            raise OncoSegError(f"unknown channel mode {mode!r}; expected one of: {', '.join(CHANNEL_MODES)}")
        self.mode = mode

    def __call__(self, img: Any) -> Any:
        rules = CHANNEL_MODES[self.mode]
        channels = img.shape[0] if img.ndim else 0
        if channels not in rules:
            expected = ", ".join(str(n) for n in rules)
            raise OncoSegError(
                f"channel mode {self.mode!r} accepts {expected} channel(s) on the first axis, "
                f"got {channels} (image shape {tuple(img.shape)})"
            )
        return img[rules[channels]]
