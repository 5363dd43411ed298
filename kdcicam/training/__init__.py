"""Training: the loss terms, the role recipes, the shared trainer loop, checkpoints, DDP collectives."""
