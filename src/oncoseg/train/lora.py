"""LoRA adapters (via peft) for promptable segmentation models, and small adapter files.

`apply_lora` injects LoRA layers in place into the image encoder's attention projections (the model keeps its own
class and forward signature), freezes everything else except the ``unfreeze`` modules (by default the mask
decoder, which the paper trains fully) and keeps the frozen BatchNorm statistics fixed during training.
`save_adapter` writes only the trainable tensors, the settings and a fingerprint of the frozen base weights;
`load_adapter` restores them strictly; `merge_lora` folds the adapters into plain ``nn.Linear`` weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oncoseg.errors import OncoSegError
from oncoseg.io import atomic_write_path

FORMAT = "oncoseg-lora/1"
BIAS_MODES = ("none", "all", "lora_only")
# Default LoRA targets per backend, tried in order: the attention projections of the image encoder.
DEFAULT_TARGETS: tuple[tuple[str, str], ...] = (
    ("litemedsam", r"image_encoder\.layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)"),
    ("sam3", r"(?:.+\.)?vision_encoder\.backbone\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj|o_proj)"),
)
_SETTINGS_ATTR = "oncoseg_lora"  # the applied (resolved) LoraSettings, kept on the model


@dataclass
class LoraSettings:
    """LoRA rank, scaling (``alpha / r``), dropout on the LoRA input, which biases train ("none", "all",
    "lora_only"), the target modules (a regex matched against full module names; None = the backend default)
    and the module-name prefixes trained fully besides the adapters."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.1
    bias: str = "none"
    targets: str | None = None
    unfreeze: tuple[str, ...] = ("mask_decoder",)

    def __post_init__(self) -> None:
        if isinstance(self.unfreeze, str):
            self.unfreeze = (self.unfreeze,)
        self.unfreeze = tuple(self.unfreeze or ())
        if any(not isinstance(p, str) or not p.strip(". ") for p in self.unfreeze):
            raise OncoSegError(f"LoRA unfreeze must be module-name prefixes, got {self.unfreeze!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise OncoSegError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise OncoSegError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0 <= self.dropout < 1
        ):
            raise OncoSegError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.bias not in BIAS_MODES:
            raise OncoSegError(f"LoRA bias must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}")
        if self.targets is not None:
            if not isinstance(self.targets, str) or not self.targets:
                raise OncoSegError(f"LoRA targets must be a regular expression or None, got {self.targets!r}")
            try:
                re.compile(self.targets)
            except re.error as error:
                raise OncoSegError(
                    f"LoRA targets {self.targets!r} is not a valid regular expression: {error}"
                ) from None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly values (``unfreeze`` as a list)."""
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "bias": self.bias,
            "targets": self.targets,
            "unfreeze": list(self.unfreeze),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        """Settings from `as_dict` output or a config section (missing keys take their defaults)."""
        if not isinstance(data, dict):
            raise OncoSegError(f"LoRA settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OncoSegError(
                f"unknown LoRA setting(s) {', '.join(unknown)}; expected: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if (
            "unfreeze" in values
            and values["unfreeze"] is not None
            and not isinstance(values["unfreeze"], str)
        ):
            values["unfreeze"] = tuple(values["unfreeze"])
        return cls(**values)

    def _structure(self) -> tuple:
        """What decides the adapter's tensors and arithmetic (dropout only acts while training)."""
        return (self.r, float(self.alpha), self.bias, self.targets, self.unfreeze)

    def _summary(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, bias={self.bias}, targets={self.targets}, unfreeze={list(self.unfreeze)}"


# -- helpers ----------------------------------------------------------------------------------------------------
def _peft():
    try:
        import peft
    except ImportError:
        raise OncoSegError("LoRA needs the package 'peft': pip install 'oncoseg[train]'") from None
    return peft


def _tuner_layer_class():
    return _peft().tuners.tuners_utils.BaseTunerLayer


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    tuner = _tuner_layer_class()
    return [(name, module) for name, module in model.named_modules() if isinstance(module, tuner)]


def _under(name: str, prefix: str) -> bool:
    """``name`` is the module ``prefix`` or inside it; a prefix also names that module at any depth (SAM3's
    "mask_decoder" is ``tracker_model.mask_decoder`` and ``detector_model.mask_decoder``)."""
    prefix = prefix.strip(".")
    dotted = "." + name + "."
    return name == prefix or name.startswith(prefix + ".") or ("." + prefix + ".") in dotted


def _linear_names(model: nn.Module) -> list[str]:
    """Names of the Linear layers, as they were before any LoRA injection."""
    tuner = _tuner_layer_class()
    names = []
    for name, module in model.named_modules():
        if isinstance(module, tuner) or (isinstance(module, nn.Linear) and not name.endswith(".base_layer")):
            names.append(name)
    return names


def _frozen_norm_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook on frozen BatchNorm layers: normalise with (and never update) the stored statistics."""
    module.training = False


def lora_settings(model: nn.Module) -> LoraSettings | None:
    """The settings `apply_lora` used on ``model`` (targets resolved), or None when it has no LoRA."""
    return model.__dict__.get(_SETTINGS_ATTR)


def _require_lora(model: nn.Module) -> LoraSettings:
    settings = lora_settings(model)
    if settings is None:
        raise OncoSegError(
            f"the {type(model).__name__} model has no LoRA adapters: call apply_lora or load_adapter first"
        )
    return settings


def _has_lora(model: nn.Module) -> bool:
    return lora_settings(model) is not None or hasattr(model, "peft_config") or bool(_lora_layers(model))


def _tensor_bytes(tensor: torch.Tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _digest(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda item: item[0]):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _adapter_keys(model: nn.Module, settings: LoraSettings, state_keys: Iterable[str]) -> set[str]:
    """State-dict keys the adapter owns: LoRA tensors, everything under ``unfreeze``, and the trained biases."""
    layers = [name for name, _ in _lora_layers(model)]
    keys = set()
    for key in state_keys:
        owner = next((layer for layer in layers if key.startswith(layer + ".")), None)
        inner = key[len(owner) + 1 :] if owner else ""
        lora_tensor = owner is not None and not inner.startswith("base_layer.")
        unfrozen = any(_under(key, prefix) for prefix in settings.unfreeze)
        trained_bias = (settings.bias == "all" and key.endswith(".bias")) or (
            settings.bias == "lora_only" and inner == "base_layer.bias"
        )
        if lora_tensor or unfrozen or trained_bias:
            keys.add(key)
    return keys


def _base_fingerprint(model: nn.Module, settings: LoraSettings, state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the frozen base tensors, named as in the plain model (so it does not depend on LoRA)."""
    owned = _adapter_keys(model, settings, state)
    return _digest(
        (key.replace(".base_layer.", "."), value) for key, value in state.items() if key not in owned
    )


# -- public API -------------------------------------------------------------------------------------------------
def default_targets(model: nn.Module) -> str:
    """Regex of the image encoder's attention projections for LiteMedSAM or SAM3 (``vision_encoder``)."""
    names = _linear_names(model)
    for _backend, pattern in DEFAULT_TARGETS:
        if any(re.fullmatch(pattern, name) for name in names):
            return pattern
    raise OncoSegError(
        f"no default LoRA targets for {type(model).__name__}: no attention projections named like LiteMedSAM's "
        "(image_encoder...attn.qkv/proj) or SAM3's (vision_encoder.backbone...attention.q/k/v/o_proj); "
        "set LoraSettings(targets=REGEX)"
    )


def apply_lora(model: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze all but the adapters and ``settings.unfreeze``.

    Frozen BatchNorm layers keep normalising with their stored statistics even in ``train()`` mode, so the frozen
    base stays exactly the checkpoint's and the adapter file alone reproduces the fine-tuned model.
    """
    settings = LoraSettings() if settings is None else settings
    if not isinstance(model, nn.Module):
        raise OncoSegError(f"apply_lora needs a torch nn.Module, got {type(model).__name__}")
    if _has_lora(model):
        raise OncoSegError(
            "the model already has LoRA adapters: apply_lora works once (merge_lora first to add more)"
        )
    targets = settings.targets or default_targets(model)
    modules = dict(model.named_modules())
    matched = [name for name in modules if name and re.fullmatch(targets, name)]
    if not matched:
        raise OncoSegError(f"LoRA targets {targets!r} match no module of {type(model).__name__}")
    wrong = [name for name in matched if not isinstance(modules[name], nn.Linear)]
    if wrong:
        raise OncoSegError(
            f"LoRA targets must be Linear layers: {wrong[0]} is a {type(modules[wrong[0]]).__name__} "
            f"({len(wrong)} such match(es) of {targets!r})"
        )
    missing = [
        prefix for prefix in settings.unfreeze if not any(_under(name, prefix) for name in modules if name)
    ]
    if missing:
        raise OncoSegError(f"LoRA unfreeze prefix {missing[0]!r} names no module of {type(model).__name__}")

    peft = _peft()
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        bias=settings.bias,
        target_modules=targets,
    )
    try:
        peft.inject_adapter_in_model(config, model)
    except (ValueError, TypeError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OncoSegError(f"cannot add LoRA adapters: {first}") from None
    # peft creates its modules in train mode (LoRA dropout active even in an eval model): follow the base layer.
    for _name, layer in _lora_layers(model):
        layer.train(layer.get_base_layer().training)
    resolved = dataclasses.replace(settings, targets=targets)
    object.__setattr__(model, _SETTINGS_ATTR, resolved)

    trainable = _adapter_keys(model, resolved, (name for name, _ in model.named_parameters()))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            _under(name, prefix) for prefix in resolved.unfreeze
        ):
            module.register_forward_pre_hook(_frozen_norm_eval)
    return model


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """``{"trainable": int, "total": int, "fraction": float}`` over the model's parameters (LoRA included)."""
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


def describe(model: nn.Module) -> str:
    """One line, e.g. "LoRA r=16 on 20 layers + mask_decoder: 4.24 M of 9.97 M parameters trainable (42.5 %)"."""
    counts = parameter_counts(model)
    settings = lora_settings(model)
    if settings is None:
        head = "no LoRA"
    else:
        head = f"LoRA r={settings.r} on {len(_lora_layers(model))} layers"
        head += "".join(f" + {prefix}" for prefix in settings.unfreeze)
    return (
        f"{head}: {counts['trainable'] / 1e6:.2f} M of {counts['total'] / 1e6:.2f} M parameters trainable "
        f"({100 * counts['fraction']:.1f} %)"
    )


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors an adapter file holds: LoRA weights, the ``unfreeze`` modules (parameters and
    buffers) and trained biases, keyed as in ``model.state_dict()``."""
    settings = _require_lora(model)
    state = model.state_dict()
    return {key: state[key].detach().clone() for key in sorted(_adapter_keys(model, settings, state))}


def save_adapter(
    model: nn.Module,
    path: str | Path,
    settings: LoraSettings | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the adapter to ONE file, atomically: safetensors (peft needs it anyway) else ``torch.save``.

    The metadata holds the settings as applied, a SHA-256 of the frozen base weights, a SHA-256 of the stored
    tensors and ``extra`` (JSON-serialisable facts such as the phase or the best validation Dice). ``settings``,
    if given, must describe the adapters the model has.
    """
    applied = _require_lora(model)
    if settings is not None:
        given = settings
        if settings.targets is None:
            given = dataclasses.replace(settings, targets=default_targets(model))
        if given._structure() != applied._structure():
            raise OncoSegError(
                f"save_adapter: the settings ({given._summary()}) differ from the model's LoRA ({applied._summary()})"
            )
    try:
        extra_json = json.dumps(extra or {})
    except (TypeError, ValueError) as error:
        raise OncoSegError(f"save_adapter: extra must be JSON-serialisable: {error}") from None
    state = model.state_dict()
    owned = _adapter_keys(model, applied, state)
    tensors = {key: state[key].detach().cpu().contiguous().clone() for key in sorted(owned)}
    metadata = {
        "format": FORMAT,
        "model": type(model).__name__,
        "settings": json.dumps(applied.as_dict()),
        "base_fingerprint": _base_fingerprint(model, applied, state),
        "tensor_sha256": _digest(tensors.items()),
        "trainable_parameters": str(sum(t.numel() for t in tensors.values())),
        "extra": extra_json,
    }
    path = Path(path)
    with atomic_write_path(path) as temporary:
        try:
            from safetensors.torch import save_file
        except ImportError:
            torch.save({"format": FORMAT, "metadata": metadata, "tensors": tensors}, temporary)
        else:
            save_file(tensors, str(temporary), metadata=metadata)
    return path


def _read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], LoraSettings]:
    path = Path(path)
    if not path.is_file():
        raise OncoSegError(f"LoRA adapter file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(8)
    try:
        if head.startswith(b"PK"):  # torch.save's zip format
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
                raise OncoSegError(f"{path.name} is not an Onco-Seg LoRA adapter (a model checkpoint?)")
            tensors, metadata = dict(blob["tensors"]), dict(blob["metadata"])
        else:
            try:
                from safetensors import safe_open
            except ImportError:
                raise OncoSegError(
                    f"{path.name}: reading a safetensors adapter needs 'pip install safetensors'"
                ) from None
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except OncoSegError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors and torch raise many kinds for a bad file
        raise OncoSegError(
            f"{path.name}: damaged or truncated LoRA adapter file ({type(error).__name__})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise OncoSegError(f"{path.name} is not an Onco-Seg LoRA adapter (format {metadata.get('format')!r})")
    if _digest(tensors.items()) != metadata.get("tensor_sha256"):
        raise OncoSegError(f"{path.name}: damaged LoRA adapter file (its tensors fail the SHA-256 check)")
    try:
        settings = LoraSettings.from_dict(json.loads(metadata["settings"]))
    except (KeyError, ValueError) as error:
        raise OncoSegError(f"{path.name}: unreadable LoRA settings in the adapter file ({error})") from None
    return tensors, metadata, settings


def adapter_info(path: str | Path) -> dict[str, Any]:
    """What an adapter file says about itself, without a model: settings, extra, model class, sizes, fingerprint."""
    tensors, metadata, settings = _read_adapter(path)
    return {
        "settings": settings,
        "extra": json.loads(metadata.get("extra") or "{}"),
        "model": metadata.get("model"),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "base_fingerprint": metadata.get("base_fingerprint"),
    }


def _check_and_copy(
    model: nn.Module, settings: LoraSettings, tensors: dict, metadata: dict, name: str
) -> None:
    state = model.state_dict()
    owned = _adapter_keys(model, settings, state)
    missing = sorted(owned - set(tensors))
    unexpected = sorted(set(tensors) - owned)
    shapes = sorted(k for k in owned & set(tensors) if tuple(tensors[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        example = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {unexpected[0]}"
            if unexpected
            else f"{shapes[0]} is {tuple(tensors[shapes[0]].shape)}, the model has {tuple(state[shapes[0]].shape)}"
        )
        raise OncoSegError(
            f"{name} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} differently shaped tensors; e.g. {example})"
        )
    fingerprint = _base_fingerprint(model, settings, state)
    if fingerprint != metadata.get("base_fingerprint"):
        raise OncoSegError(
            f"{name} was trained on other base weights than this model's (fingerprint "
            f"{str(metadata.get('base_fingerprint'))[:12]} vs {fingerprint[:12]}): load it into the same base checkpoint"
        )
    with torch.no_grad():
        for key in sorted(owned):
            state[key].copy_(tensors[key])


def load_adapter(model: nn.Module, path: str | Path) -> LoraSettings:
    """Load an adapter file into ``model`` strictly, first applying LoRA with the file's settings if the model has
    none. Any mismatch (tensors, shapes, base weights, settings) or a damaged file raises OncoSegError and leaves
    the model as it was. Returns the file's settings."""
    path = Path(path)
    tensors, metadata, settings = _read_adapter(path)
    applied = lora_settings(model)
    added = False
    if applied is None:
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        try:
            apply_lora(model, settings)
        except OncoSegError as error:
            raise OncoSegError(f"{path.name}: {error}") from None
        added = True
    elif applied._structure() != settings._structure():
        raise OncoSegError(
            f"{path.name} holds LoRA {settings._summary()}, but the model has LoRA {applied._summary()}"
        )
    try:
        _check_and_copy(model, settings, tensors, metadata, path.name)
    except OncoSegError:
        if added:
            _remove_lora(model, merge=False, requires_grad=flags)
        raise
    return settings


def _remove_lora(model: nn.Module, merge: bool, requires_grad: dict[str, bool] | None = None) -> None:
    """Replace every LoRA layer by its base layer (merged first if ``merge``) and undo apply_lora's changes."""
    for name, layer in _lora_layers(model):
        if merge and not layer.merged:
            try:
                layer.merge(safe_merge=True)
            except ValueError as error:
                raise OncoSegError(f"cannot merge the LoRA adapter of {name}: {error}") from None
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for module in model.modules():
        for handle_id, hook in list(module._forward_pre_hooks.items()):
            if hook is _frozen_norm_eval:
                del module._forward_pre_hooks[handle_id]
    for attribute in ("peft_config", _SETTINGS_ATTR):
        if attribute in model.__dict__:
            object.__delattr__(model, attribute)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(True if requires_grad is None else requires_grad.get(name, True))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base Linear weights and remove the LoRA layers, in place: the result is the
    plain model (original class and state-dict keys, all parameters trainable again), e.g. for
    ``LiteMedSAMBackend(model=...)``."""
    _require_lora(model)
    _remove_lora(model, merge=True)
    return model
