"""``oncoseg train``: the subcommand's arguments and output (kept here; `oncoseg.cli` wires it in). The work is
`oncoseg.train.phases.train` over the phases of `load_config`."""

from __future__ import annotations

import argparse

EPILOG = """\
example CONFIG (relative paths are taken from the config file's folder):
  name: brain-lora
  output: runs/brain-lora
  seed: 0
  batch_size: 4
  lora: {r: 16, alpha: 32, dropout: 0.1, unfreeze: [mask_decoder]}
  phases:
    - name: brain                # registered as checkpoint "brain" and "latest"
      datasets: [msd-hippocampus]
      epochs: 3                  # omit for the paper's calibration by dataset size

then: oncoseg evaluate msd-hippocampus --checkpoint brain
Other keys: lr, weight_decay, accumulate, patience, precision (auto|32-true|bf16-mixed|16-mixed),
accelerator, devices, num_nodes, max_steps_per_epoch, loggers [csv, tensorboard, wandb], data_root,
checkpoint_every_steps (last.ckpt every N optimizer steps), checkpoint_every_minutes (default 10).
"""


def add_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser(
        "train",
        help="fine-tune the model with LoRA in phases described by a YAML file",
        description="Fine-tune LiteMedSAM with LoRA (r=16, alpha=32, dropout 0.1 on the image encoder's attention; "
        "mask decoder trained) over the phases of CONFIG, with Lightning. Finished phases are skipped; a phase "
        "writes last.ckpt every epoch and every 10 minutes (checkpoint_every_minutes / checkpoint_every_steps), "
        "and an interrupted phase resumes from it where it stopped, mid-epoch too: run the same command again. "
        "Each finished phase registers its adapter under its name and as 'latest' for --checkpoint NAME.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML file: name, output, phases (see the example below)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress line")
    train.add_argument(
        "--progress-every",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="when the output is not a terminal (nohup, SLURM, a pipe), print a progress line (step, loss, "
        "val Dice, samples/s, ETA) every SECONDS (default 30; 0: every step)",
    )
    return train


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from oncoseg.data.registry import REGISTRY
    from oncoseg.train.phases import load_config, train

    config = load_config(args.config)
    adapters = False
    for record in train(config, progress=not args.quiet, progress_seconds=args.progress_every):
        if "adapter" in record:
            adapters = True
            dice = record.get("best_val_dice")
            print(
                f"phase {record['phase']}: best validation Dice "
                f"{'–' if dice is None else f'{dice:.3f}'}, adapter {record['adapter']}"
            )
    volumes = [d for p in config.phases for d in p.datasets if d in REGISTRY and REGISTRY[d].dim == "3d"]
    if adapters and volumes:
        last = config.phases[-1]
        print(
            "validation Dice is per slice (a box on every slice). In 3D a fine-tuned model walks from the box alone "
            "and may leak (docs/results.md, Fine-tuning): check with `oncoseg evaluate "
            f"{volumes[0]} --checkpoint {last.checkpoint_name or last.name} --modes propagate` before using it for "
            "volumes"
        )
    return 0
