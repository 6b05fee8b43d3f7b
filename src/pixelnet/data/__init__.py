"""Data: sources -> raw format (data/raw/<dataset>/) -> preprocessed tensors (data/processed/)."""
