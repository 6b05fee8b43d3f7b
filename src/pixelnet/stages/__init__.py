"""The pipeline's stages, one module each, in dvc.yaml's order:

    download.py    the raw dataset (data.dataset) in PixelNet's raw format
    preprocess.py  resized, quantized, split uint8 tensors and their manifest
    validate.py    Great Expectations over the preprocessed tensors
    train.py       the model, its resume state, the training reports
    sample.py      images drawn pixel by pixel, and their grid
    complete.py    test images completed from their top rows
    evaluate.py    test bits/dim, sample quality, figures; the champion decision

Each module holds the stage's function (`train(params, *, data_dir, ...) -> dict`),
which tests call directly, and `command`, a thin Typer command that parses paths,
loads params.yaml and calls it.  dvc.yaml runs `python -m pixelnet.stages.NAME`, so
a stage's process loads only what that stage needs, and its deps in dvc.yaml can
list exactly that (tests/test_pipeline.py checks them against what it loaded).
The stage functions write files and set process-wide torch state (seeds,
deterministic kernels, threads): they are the I/O shell around the library.
"""
