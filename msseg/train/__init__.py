"""Training: state and optimiser, the sharded step, checkpoints, validation, metrics, the loop."""
