"""The GAN: GAT's generator and discriminator, MNG, the relativistic loss with R1/R2, latent
DiffAugment, REPA alignment, one training step, the training loop with EMA and checkpoints,
FLOP counting, failure-mode diagnostics and the coordinate check (docs/METHOD.md)."""
