"""One training run: flags, devices, the loop, checkpoints and the result folder."""
