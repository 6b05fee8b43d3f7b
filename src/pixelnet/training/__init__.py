"""Training: the generic loop with its resume state and data parallelism (loop.py), the optimizers (optim.py)."""
