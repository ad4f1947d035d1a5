"""One-line descriptions of weights that do not fit a model, shared by the loaders (`oncoseg.models.spec` for
``--checkpoint``, `oncoseg.models.litemedsam.build_model` for ``--weights``): counts and one example, never the
list of every key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def is_training_checkpoint(blob: Any) -> bool:
    """True for a Lightning training checkpoint (``oncoseg train``'s ``last.ckpt``): weights + optimizer + loops."""
    return isinstance(blob, Mapping) and (
        "pytorch-lightning_version" in blob or {"state_dict", "optimizer_states"} <= set(blob)
    )


def training_checkpoint_message(path: Path, expected: str) -> str:
    """The error for a training checkpoint given where model weights were expected."""
    path = Path(path)
    adapter = path.with_name("adapter.safetensors")
    use = (
        f"--checkpoint {adapter}"
        if adapter.exists()
        else "the adapter.safetensors its phase writes when it finishes, or the phase's registered name"
    )
    return (
        f"{path.name}: expected {expected}, found a training checkpoint of `oncoseg train` (it resumes a phase); "
        f"load the phase's adapter instead: {use}"
    )


def mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """None when ``found`` has exactly ``expected``'s tensor names and shapes, else one line such as
    ``"435 missing, 475 unexpected, 0 differently shaped; e.g. missing image_encoder.x.weight"``."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(
        k for k in set(expected) & set(found) if tuple(_shape(found[k])) != tuple(_shape(expected[k]))
    )
    if not (missing or unexpected or shaped):
        return None
    if missing:
        example = f"missing {missing[0]}"
    elif unexpected:
        example = f"unexpected {unexpected[0]}"
    else:
        key = shaped[0]
        example = f"{key} is {tuple(_shape(found[key]))}, expected {tuple(_shape(expected[key]))}"
    prefix = _common_prefix(unexpected, missing)
    hint = f" (the tensor names carry an extra {prefix!r} prefix)" if prefix else ""
    return (
        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shaped)} differently shaped; "
        f"e.g. {example}{hint}"
    )


def _shape(value: Any) -> tuple:
    return tuple(getattr(value, "shape", ()))


def _common_prefix(unexpected: list[str], missing: list[str]) -> str | None:
    """A first name part (e.g. ``model.``) that every unexpected name carries and without which at least half of
    the missing names would be there."""
    if not unexpected or not missing or any("." not in name for name in unexpected):
        return None
    first = {name.split(".", 1)[0] for name in unexpected}
    if len(first) != 1:
        return None
    prefix = first.pop() + "."
    stripped = {name[len(prefix) :] for name in unexpected}
    return prefix if 2 * len(stripped & set(missing)) >= len(missing) else None
