"""Training: data builders, the deep-supervision loop, optimizers, evaluation and the `run` CLI."""
