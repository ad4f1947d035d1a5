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
accelerator, devices, num_nodes, max_steps_per_epoch, loggers [csv, tensorboard, wandb], data_root.
"""


def add_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser(
        "train",
        help="fine-tune the model with LoRA in phases described by a YAML file",
        description="Fine-tune LiteMedSAM with LoRA (r=16, alpha=32, dropout 0.1 on the image encoder's attention; "
        "mask decoder trained) over the phases of CONFIG, with Lightning. Finished phases are skipped, an "
        "interrupted phase resumes from its last.ckpt, and each finished phase registers its adapter under its "
        "name and as 'latest' for --checkpoint NAME.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML file: name, output, phases (see the example below)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return train


def run(args: argparse.Namespace) -> int:
    from oncoseg.train.phases import load_config, train

    config = load_config(args.config)
    for record in train(config, progress=not args.quiet):
        if "adapter" in record:
            dice = record.get("best_val_dice")
            print(
                f"phase {record['phase']}: best validation Dice "
                f"{'–' if dice is None else f'{dice:.3f}'}, adapter {record['adapter']}"
            )
    return 0
