"""Evaluation of a generator: FD/FID of the EMA generator's samples through torch-fidelity, with
the digits' or a folder's own classifier (domain features) or Inception weights."""
