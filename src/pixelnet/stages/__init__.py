"""The pipeline's stages, one module each: download, preprocess, validate, train, sample, complete, evaluate.

Each module holds the stage's function (`train(params, *, data_dir, ...) -> dict`), which tests call directly,
and `command`, a thin Typer command that parses paths, loads params.yaml and calls it.  dvc.yaml runs
`python -m pixelnet.stages.NAME`, so a stage's process loads only what the stage needs and its deps in dvc.yaml
can list exactly that (tests/test_pipeline.py checks them against what it loaded).  The stage functions write
files and set process-wide torch state (seeds, deterministic kernels, threads): the I/O shell around the library.
"""
