"""Training: the loop, jitted steps, optimizers and freezing rules, checkpoints, sharding, feature cache, metrics, the run record."""
