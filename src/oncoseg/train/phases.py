"""`oncoseg train CONFIG`: fine-tuning in phases described by a YAML file, with checkpoint chaining.

```yaml
name: brain-lora                 # run name (also the W&B project prefix)
output: runs/brain-lora          # one folder per phase inside
seed: 0
lora: {r: 16, alpha: 32, dropout: 0.1, unfreeze: [mask_decoder]}
batch_size: 4
phases:
  - name: brain                  # registered as the named checkpoint "brain" (and "latest")
    datasets: [msd-hippocampus]
    epochs: null                 # null: the paper's calibration by training-set size
```

A new phase starts from the previous phase's adapter (weights only: a fresh optimizer and scheduler). A phase
writes ``last.ckpt`` at the end of every epoch and, within an epoch, every ``checkpoint_every_steps`` optimizer
steps or else every ``checkpoint_every_minutes`` (10). An interrupted phase resumes from its ``last.ckpt`` with its
full state (weights, optimizer, epoch, place in the epoch: `oncoseg.train.resume`); each epoch's random draws
depend only on (seed, epoch), so the resumed run sees the same samples and losses as an uninterrupted one. Its
logs continue in one ``logs/version_0`` (and one TensorBoard folder); ``time.json`` adds up every process's time.
A finished phase keeps ``last.ckpt``, ``adapter.safetensors`` (its best validation Dice) and ``done.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.errors import OncoSegError

LOGGERS = ("csv", "tensorboard", "wandb")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _check_number(where: str, name: str, value: Any, minimum: float, whole: bool = True, none: bool = False):
    """``value``, refused unless it is a number (a whole one if ``whole``) of at least ``minimum`` (or None). A
    string such as ``1e-4`` (which YAML reads as text) is taken as the number it writes."""
    if value is None and none:
        return None
    if isinstance(value, str) and not whole:
        try:
            value = float(value)
        except ValueError:
            pass
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        what = "a whole number" if whole else "a number"
        raise OncoSegError(f"{where}{name} must be {what} of at least {minimum:g}, not {value!r}")
    return value


def calibrated_epochs(cases: int) -> int:
    """The paper's epochs by training-set size: < 50 → 50, 50–200 → 30, 200–1000 → 20 (15 above 500), > 1000 → 15."""
    if cases < 50:
        return 50
    if cases <= 200:
        return 30
    if cases <= 500:
        return 20
    return 15


@dataclass
class PhaseConfig:
    name: str
    datasets: list[str]
    epochs: int | None = None  # None: calibrated_epochs(training cases)
    samples_per_epoch: int | None = None  # None: the sample set's own size
    checkpoint_name: str | None = None  # named checkpoint to register (default: the phase name)
    train_split: str = "train"
    val_split: str = "val"
    val_limit: int | None = 64  # validation samples per epoch (evenly spread)
    # rehearsal against forgetting: dataset → share of the training draws taken from its train split
    # (e.g. {kvasir-seg: 0.15}); the phase's own datasets get the rest. Validation stays on the phase's datasets.
    replay: dict[str, float] = field(default_factory=dict)
    type: str = "lora"  # "lora": fine-tune the model; "concepts": train the text-prompt concept head
    concepts: dict[str, Any] = field(default_factory=dict)  # concept head settings (oncoseg.concepts.train)

    def __post_init__(self) -> None:
        if self.type not in ("lora", "concepts"):
            raise OncoSegError(f"phase {self.name}: type must be lora or concepts, not {self.type!r}")
        if not isinstance(self.datasets, list) or not all(isinstance(d, str) for d in self.datasets):
            raise OncoSegError(
                f"phase {self.name}: datasets must be a list of dataset names, not {self.datasets!r}"
            )
        for key in ("epochs", "samples_per_epoch", "val_limit"):
            _check_number(f"phase {self.name}: ", key, getattr(self, key), 1, none=True)
        shares = dict(self.replay or {})
        if (
            any(not isinstance(v, (int, float)) or v <= 0 for v in shares.values())
            or sum(shares.values()) >= 1
        ):
            raise OncoSegError(
                f"phase {self.name}: replay shares must be positive numbers summing to less than 1, not {shares}"
            )
        self.replay = {str(k): float(v) for k, v in shares.items()}


@dataclass
class TrainConfig:
    name: str
    output: str
    phases: list[PhaseConfig]
    seed: int = 0
    data_root: str | None = None
    backend: str = "litemedsam"  # litemedsam or sam3
    weights: str | None = None  # sam3: the Hugging Face weights folder (default: $ONCOSEG_SAM3_WEIGHTS)
    base_checkpoint: str | None = None  # litemedsam start weights (default: the bundled LiteMedSAM)
    lora: dict[str, Any] = field(default_factory=dict)  # LoraSettings fields
    batch_size: int = 4
    accumulate: int = 1  # gradient accumulation steps
    lr: float = 1e-4
    weight_decay: float = 0.05
    patience: int = 10  # early stopping on validation Dice
    precision: str = "auto"  # auto: bf16-mixed on CPUs with bf16, 16-mixed on GPUs, else 32-true
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    max_steps_per_epoch: int | None = None  # cap batches per epoch (a quick look)
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    wandb_offline: bool = True
    num_workers: int = 0
    checkpoint_every_steps: int | None = None  # last.ckpt every N optimizer steps within an epoch
    checkpoint_every_minutes: float = 10.0  # ... or, without checkpoint_every_steps, every M minutes

    def __post_init__(self) -> None:
        if not self.phases:
            raise OncoSegError("the training config has no phases")
        for key in ("batch_size", "accumulate", "devices", "num_nodes"):
            _check_number("", key, getattr(self, key), 1)
        for key in ("max_steps_per_epoch", "checkpoint_every_steps"):
            _check_number("", key, getattr(self, key), 1, none=True)
        _check_number("", "patience", self.patience, 0)
        _check_number("", "num_workers", self.num_workers, 0)
        self.weight_decay = _check_number("", "weight_decay", self.weight_decay, 0, whole=False)
        self.lr = _check_number("", "lr", self.lr, 1e-12, whole=False)
        self.checkpoint_every_minutes = _check_number(
            "", "checkpoint_every_minutes", self.checkpoint_every_minutes, 1e-12, whole=False
        )
        if self.precision not in PRECISIONS:
            raise OncoSegError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not isinstance(self.loggers, list):
            raise OncoSegError(f"loggers must be a list such as [csv, tensorboard], not {self.loggers!r}")
        unknown = set(self.loggers) - set(LOGGERS)
        if unknown:
            raise OncoSegError(f"unknown logger(s) {', '.join(sorted(unknown))}: use {', '.join(LOGGERS)}")
        if self.backend not in ("litemedsam", "sam3"):
            raise OncoSegError(f"unknown backend {self.backend!r} to train: use litemedsam or sam3")
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise OncoSegError(f"phase names must differ: {', '.join(names)}")


def _build(cls, values: dict[str, Any], where: str):
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise OncoSegError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    try:
        return cls(**values)
    except TypeError as error:
        raise OncoSegError(f"{where}: {error}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a YAML training config."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OncoSegError(f"training config not found: {path}") from None
    except yaml.YAMLError as error:
        raise OncoSegError(f"{path.name} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise OncoSegError(f"{path.name}: expected a mapping with name, output and phases")
    phases = document.pop("phases", None) or []
    if not isinstance(phases, list):
        raise OncoSegError(f"{path.name}: phases must be a list")
    document["phases"] = [
        _build(PhaseConfig, dict(p), f"{path.name} phase {i + 1}") for i, p in enumerate(phases)
    ]
    config = _build(TrainConfig, document, path.name)
    output = Path(config.output)
    if not output.is_absolute():
        config.output = str((path.parent / output).resolve())
    return config


def trainer_precision(setting: str, accelerator: str, backend: str = "litemedsam") -> str:
    """Lightning precision for ``auto``: 16-bit mixed on GPUs (bf16 for SAM3, as it was trained); on CPUs bf16
    mixed where the CPU has bf16, except SAM3 (CPU autocast fails inside its attention), else 32-bit."""
    if setting != "auto":
        return setting
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if backend == "sam3" and torch.cuda.is_bf16_supported() else "16-mixed"
    from oncoseg.models.litemedsam import cpu_has_bf16

    return "bf16-mixed" if cpu_has_bf16() and backend != "sam3" else "32-true"


class EpochSampler:
    """Sample indices in an order that depends only on (seed, epoch), as ``(epoch, index)`` pairs, split between
    DDP processes by rank. Lightning calls ``set_epoch`` before every epoch, also right after a resume, so a
    replayed epoch sees exactly the samples (and random draws) of the uninterrupted run."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, done: int) -> None:
        """Make the next pass, if it is over ``epoch``, skip this process's first ``done`` samples (a run
        resumed in the middle of an epoch); a pass over another epoch is whole."""
        self._resume = (int(epoch), int(done))

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        world = self._rank_world()[1]
        return (self.length + world - 1) // world

    def __iter__(self):
        rank, world = self._rank_world()
        order = np.random.default_rng([self.seed, self.epoch, 17]).permutation(self.length)
        order = np.resize(order, len(self) * world)  # equal shares: wrap around to pad
        mine = order[rank::world]
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            mine = mine[resume[1] :]
        return iter([(self.epoch, int(index)) for index in mine])


class _EpochSamples:
    """Training samples addressed by ``(epoch, index)``."""

    def __init__(self, samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.samples.set_epoch(epoch)
        return self.samples[index]


def phase_folder(config: TrainConfig, index: int) -> Path:
    return Path(config.output) / f"{index + 1:02d}-{config.phases[index].name}"


def train(
    config: TrainConfig | str | Path, progress: bool = True, progress_seconds: float = 30.0
) -> list[dict[str, Any]]:
    """Run every phase of ``config`` in order (finished phases are skipped); returns each phase's record.
    ``progress``: a progress bar on a terminal, else a progress line every ``progress_seconds``
    (`oncoseg.train.progress`); False shows neither."""
    if not isinstance(config, TrainConfig):
        config = load_config(config)
    records, previous_adapter = [], None
    for index, phase in enumerate(config.phases):
        folder = phase_folder(config, index)
        done = folder / "done.json"
        if done.exists():
            record = json.loads(done.read_text(encoding="utf-8"))
        elif phase.type == "concepts":
            from oncoseg.concepts.train import run_concept_phase

            record = run_concept_phase(config, phase, folder, progress)
        else:
            record = run_phase(config, phase, folder, previous_adapter, progress, progress_seconds)
        records.append(record)
        if phase.type == "lora":
            previous_adapter = folder / "adapter.safetensors"
    return records


def _cases(config: TrainConfig, phase: PhaseConfig, split: str, datasets: list[str] | None = None):
    from oncoseg.data import open_dataset

    cases = []
    for name in phase.datasets if datasets is None else datasets:
        found = open_dataset(name, config.data_root).cases(split)
        if not found:
            raise OncoSegError(f"phase {phase.name}: {name} has no {split} cases")
        cases += found
    return cases


def _loggers(config: TrainConfig, phase: PhaseConfig, folder: Path, keep_before: int | None) -> list:
    """The phase's loggers, each writing one log across resumes (``version_0``); ``keep_before``: None for a
    fresh phase, else the step a resumed run logs first (later entries of a killed process are dropped)."""
    from lightning.pytorch import loggers

    from oncoseg.train.resume import ResumableCSVLogger

    chosen = []
    if "csv" in config.loggers:
        chosen.append(ResumableCSVLogger(folder, name="logs", keep_before=keep_before))
    if "tensorboard" in config.loggers:
        # purge_step: TensorBoard hides what a killed process logged from this step on (all of it when fresh)
        purge = keep_before or 0
        chosen.append(loggers.TensorBoardLogger(folder, name="tensorboard", version=0, purge_step=purge))
    if "wandb" in config.loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise OncoSegError(
                "the wandb logger was asked for but wandb is not installed: pip install wandb"
            ) from None
        chosen.append(
            loggers.WandbLogger(
                project=f"{config.name}-{phase.name}", save_dir=str(folder), offline=config.wandb_offline
            )
        )
    return chosen


def _finish_wandb(trainer) -> None:
    """Close the phase's W&B run (each phase is its own run, in its own project) so its summary is written."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()


def weights_fingerprint(model) -> str:
    """SHA-256 of the trainable tensors (names and float32 bytes, in name order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_resumable(path: Path, module) -> dict[str, Any]:
    """The checkpoint at ``path``; a damaged one, or one written for another model or LoRA setting, is refused
    with one clear line."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        weights = state["state_dict"]
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise OncoSegError(
            f"cannot resume: {path} is damaged ({type(error).__name__}); delete it to restart the phase"
        ) from None
    from oncoseg.models.state_dicts import mismatch

    expected = module.state_dict()
    problem = mismatch(expected, weights) if isinstance(weights, dict) else f"found {type(weights).__name__}"
    if problem:
        raise OncoSegError(
            f"cannot resume: {path} was written for another model or LoRA setting: expected {len(expected)} "
            f"tensors, found {len(weights) if isinstance(weights, dict) else 0} ({problem}); delete it or use "
            "another output folder"
        )
    return state


def run_phase(
    config: TrainConfig,
    phase: PhaseConfig,
    folder: Path,
    start_adapter: Path | None,
    progress: bool = True,
    progress_seconds: float = 30.0,
) -> dict[str, Any]:
    """Train one phase in ``folder`` (resuming from its ``last.ckpt`` if there is one)."""
    import sys

    import lightning
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from oncoseg.models.litemedsam import build_model
    from oncoseg.train.checkpoints import register
    from oncoseg.train.lora import LoraSettings, apply_lora, describe, load_adapter, save_adapter
    from oncoseg.train.module import SegmentationModule
    from oncoseg.train.progress import ProgressLine
    from oncoseg.train.resume import (
        AtomicCheckpointIO,
        ClockNotes,
        ResumableLoader,
        RunClock,
        StepCheckpoint,
        log_step,
        remove_stale_temporaries,
    )
    from oncoseg.train.samples import (
        MixedSamples,
        SampleSettings,
        TrainingSamples,
        collate_samples,
        validation_samples,
    )

    folder.mkdir(parents=True, exist_ok=True)
    clock = RunClock(folder)
    lightning.seed_everything(config.seed, workers=True, verbose=False)
    if config.backend == "sam3":
        from oncoseg.models.sam3 import training_model

        model = training_model(config.weights)
    else:
        model = build_model(config.base_checkpoint)
    settings = LoraSettings.from_dict(config.lora) if config.lora else LoraSettings()
    if start_adapter is not None:
        load_adapter(model, start_adapter)  # weights only: the optimizer and scheduler start afresh
    else:
        apply_lora(model, settings)
    train_cases, val_cases = _cases(config, phase, phase.train_split), _cases(config, phase, phase.val_split)
    sample_settings = SampleSettings(seed=config.seed)
    if phase.replay:
        sources = [TrainingSamples(train_cases, sample_settings)] + [
            TrainingSamples(_cases(config, phase, phase.train_split, [name]), sample_settings)
            for name in phase.replay
        ]
        shares = [1.0 - sum(phase.replay.values()), *phase.replay.values()]
        samples = MixedSamples(sources, shares, samples_per_epoch=phase.samples_per_epoch)
    else:
        samples = TrainingSamples(train_cases, sample_settings, samples_per_epoch=phase.samples_per_epoch)
    validation = validation_samples(val_cases, sample_settings)
    if phase.val_limit and len(validation) > phase.val_limit:
        picks = np.linspace(0, len(validation) - 1, phase.val_limit).round().astype(int)
        validation = [validation[i] for i in sorted(set(picks.tolist()))]
    epochs = phase.epochs or calibrated_epochs(len(train_cases))

    module = SegmentationModule(model, lr=config.lr, weight_decay=config.weight_decay, seed=config.seed)
    module.train()  # LoRA dropout on (frozen BatchNorm keeps its statistics: see oncoseg.train.lora)
    train_loader = ResumableLoader(
        _EpochSamples(samples), batch_size=config.batch_size, sampler=EpochSampler(len(samples), config.seed),
        collate_fn=collate_samples, num_workers=config.num_workers,
    )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        validation, batch_size=config.batch_size, collate_fn=collate_samples
    )
    resume = folder / "last.ckpt"
    checkpoint = check_resumable(resume, module) if resume.exists() else None
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor="val_dice",
        mode="max",
        save_last=True,
        enable_version_counter=False,
    )
    steps = StepCheckpoint(resume, config.checkpoint_every_steps, config.checkpoint_every_minutes)
    callbacks = [best, steps, EarlyStopping(monitor="val_dice", mode="max", patience=config.patience)]
    callbacks.append(ClockNotes(clock, every=max(progress_seconds, 1.0)))
    bar = progress and sys.stdout.isatty()
    multi = config.devices * config.num_nodes > 1
    if progress and not bar:
        world = config.devices * config.num_nodes
        callbacks.append(ProgressLine(progress_seconds, config.batch_size * config.accumulate * world))
    trainer = _trainer(
        config,
        max_epochs=epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy="ddp_find_unused_parameters_true" if multi else "auto",
        precision=trainer_precision(config.precision, config.accelerator, config.backend),
        accumulate_grad_batches=config.accumulate,
        limit_train_batches=config.max_steps_per_epoch or 1.0,
        callbacks=callbacks,
        logger=_loggers(config, phase, folder, None if checkpoint is None else log_step(checkpoint)),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
    )
    clock.writer = trainer.is_global_zero
    if trainer.is_global_zero:
        remove_stale_temporaries(folder)
        print(
            f"phase {phase.name}: {describe(model)}; {len(samples)} samples/epoch, {epochs} epochs",
            flush=True,
        )
        if checkpoint is not None:
            print(f"phase {phase.name}: {_resuming(checkpoint, train_loader, config)}", flush=True)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume) if checkpoint is not None else None)
    _finish_wandb(trainer)
    # Every process notes a fingerprint of its trainable weights: after DDP they must all be the same.
    (folder / f"weights.rank{trainer.global_rank}.sha256").write_text(
        weights_fingerprint(model) + "\n", encoding="utf-8"
    )
    record = {"phase": phase.name, "folder": str(folder)}
    if trainer.is_global_zero:
        if best.best_model_path:  # export the weights with the best validation Dice
            state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
        adapter = folder / "adapter.safetensors"
        best_dice = float(best.best_model_score) if best.best_model_score is not None else None
        save_adapter(model, adapter, extra={"phase": phase.name, "best_val_dice": best_dice})
        for old in folder.glob("best*.ckpt"):
            old.unlink()
        clock.note()
        record.update(
            adapter=str(adapter),
            epochs=epochs,
            epochs_run=trainer.current_epoch,
            best_val_dice=best_dice,
            train_cases=len(train_cases),
            samples_per_epoch=len(samples),
            seconds=round(clock.total, 1),  # every process that worked on the phase (time.json)
            processes=len(clock.processes),
            datasets=phase.datasets,
            replay=phase.replay,
        )
        name = phase.checkpoint_name or phase.name
        register(name, adapter, run=config.name, phase=phase.name, best_val_dice=best_dice)
        register("latest", adapter, run=config.name, phase=phase.name, best_val_dice=best_dice)
        (folder / "done.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _trainer(config: TrainConfig, **options: Any):
    """``lightning.Trainer(**options)``; settings this machine cannot run (no GPU, too many devices) are one
    line naming them."""
    import lightning
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return lightning.Trainer(**options)
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise OncoSegError(
            f"the training settings do not run here (accelerator {config.accelerator}, devices {config.devices}, "
            f"num_nodes {config.num_nodes}, precision {options.get('precision')}): {reason}"
        ) from None


def _resuming(checkpoint: dict[str, Any], loader, config: TrainConfig) -> str:
    """ "resuming from last.ckpt at step 6 (epoch 2, after batch 3 of 8)" for the log."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    states = (fit_loop.get("state_dict") or {}).get("combined_loader") or [{}]
    batches = int(states[0].get("batches", 0))
    per_epoch = min(len(loader), config.max_steps_per_epoch or len(loader))
    epoch = int(checkpoint.get("epoch", 0))
    if batches >= per_epoch:
        where = f"start of epoch {epoch + 2}"
    else:
        where = f"epoch {epoch + 1}, after batch {batches} of {per_epoch}"
    return f"resuming from last.ckpt at step {checkpoint.get('global_step', 0)} ({where})"
