"""Fine-tuning: LoRA, losses, training samples, the Lightning loop, phases and checkpoints."""
