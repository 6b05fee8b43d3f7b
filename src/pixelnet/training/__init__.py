"""Training: the generic loop (loop.py), the resume state (resume.py), data parallelism (distributed.py)."""
