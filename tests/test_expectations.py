"""Great Expectations on the preprocessed tensors: good data passes, each kind of bad data is named.

The data is a 16-image folder (conftest) preprocessed to 8x8 at 4 levels; each
test breaks one thing in a copy and checks that validation fails naming the
expectation and what it observed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pixelnet.config import DataConfig, defaults
from pixelnet.data.validation import check_validated, expected_split_sizes, validate
from pixelnet.errors import PixelNetError
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from tests.conftest import REPO

SUITE = REPO / "pipeline" / "expectations.yaml"


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> tuple[DataConfig, Path]:
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("ge")
    folder = write_image_folder(root / "images")
    cfg = defaults().data.replace(dataset="folder", folder=str(folder), size=8, levels=4, val_fraction=0.25,
                                  test_fraction=0.25)
    download(cfg, out_dir=root / "raw", cache_dir=root / "cache")
    preprocess(cfg, raw_dir=root / "raw", out_dir=root / "processed")
    return cfg, root / "processed"


@pytest.fixture
def data(processed, tmp_path) -> tuple[DataConfig, Path]:
    """A private copy of the processed data, free to break."""
    cfg, src = processed
    dst = tmp_path / "processed"
    shutil.copytree(src, dst)
    return cfg, dst


def failure(cfg: DataConfig, data_dir: Path, out: Path, suite: Path = SUITE) -> str:
    with pytest.raises(PixelNetError) as err:
        validate(cfg, data_dir=data_dir, suite_path=suite, out_dir=out)
    return str(err.value)


def test_good_data_passes_with_reports_and_a_deterministic_summary(data, tmp_path):
    cfg, d = data
    first = validate(cfg, data_dir=d, suite_path=SUITE, out_dir=tmp_path / "a")
    validate(cfg, data_dir=d, suite_path=SUITE, out_dir=tmp_path / "b")
    assert first["success"] and first["failed"] == 0 and first["evaluated"] >= 30
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    assert (tmp_path / "a" / "gx" / "data_docs" / "index.html").is_file()
    results = json.loads((tmp_path / "a" / "gx" / "results.json").read_text())
    assert all(r["success"] for r in results)
    assert check_validated(tmp_path / "a", d)["success"]


def test_out_of_range_values_stop_the_cli_with_one_clean_message(data, tmp_path, run_cli, tiny_params):
    cfg, d = data
    x = np.load(d / "test_images.npy")
    x[0, 0, 3, 3] = 7  # levels = 4: valid values are 0..3
    np.save(d / "test_images.npy", x)
    result = run_cli("validate", "--params", tiny_params, "--data", d, "--suite", SUITE, "--out", tmp_path / "v")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith("error: data validation failed: 1 of ")
    assert "test images: expect_column_max_to_be_between(column='max_level', max_value=3): observed 7" in result.err
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["success"] is False and summary["failed"] == 1
    assert (tmp_path / "v" / "gx" / "data_docs" / "index.html").is_file()  # the report, to see what failed
    with pytest.raises(PixelNetError, match="failed validation"):
        check_validated(tmp_path / "v", d)


def test_wrong_shape_is_named(data, tmp_path):
    cfg, d = data
    np.save(d / "val_images.npy", np.load(d / "val_images.npy")[:, :, :7, :])
    msg = failure(cfg, d, tmp_path / "v")
    assert "val images: expect_column_values_to_be_in_set(column='shape', value_set=['1x8x8'])" in msg
    assert "['1x7x8']" in msg


def test_missing_split_is_named(data, tmp_path):
    cfg, d = data
    (d / "test_images.npy").unlink()
    (d / "test_labels.npy").unlink()
    msg = failure(cfg, d, tmp_path / "v")
    assert "splits: expect_column_distinct_values_to_equal_set(column='split'" in msg
    assert "missing ['test']" in msg


def test_test_image_also_in_train_is_named(data, tmp_path):
    cfg, d = data
    train, test = np.load(d / "train_images.npy"), np.load(d / "test_images.npy")
    test[1] = train[2]
    np.save(d / "test_images.npy", test)
    msg = failure(cfg, d, tmp_path / "v")
    assert "overlap: expect_column_values_to_be_unique(column='sha256'): observed 2 of" in msg


def test_nan_after_conversion_and_wrong_dtype_are_named(data, tmp_path):
    cfg, d = data
    x = np.load(d / "train_images.npy").astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(d / "train_images.npy", x)
    msg = failure(cfg, d, tmp_path / "v")
    assert "train images: expect_column_sum_to_be_between(column='nan_count', min_value=0, max_value=0): observed 1" in msg
    assert "train images: expect_column_values_to_be_in_set(column='dtype'" in msg and "['float32']" in msg


def test_class_balance_and_split_size_use_the_sources_bounds(data, tmp_path):
    cfg, d = data
    suite = yaml.safe_load(SUITE.read_text())
    suite["sources"]["folder"]["class_share"] = [0.3, 0.7]
    tight = tmp_path / "suite.yaml"
    tight.write_text(yaml.safe_dump(suite))
    labels = np.load(d / "test_labels.npy")
    np.save(d / "test_labels.npy", np.zeros_like(labels))  # every test image now claims class 0
    msg = failure(cfg, d, tmp_path / "v", suite=tight)
    assert "test classes: expect_column_min_to_be_between(column='share', min_value=0.3): observed 0" in msg
    assert "test classes: expect_column_max_to_be_between(column='share', max_value=0.7): observed 1" in msg
    # the same data judged as mnist-5k: wrong split sizes (16 images, not 5000) and too bright for digits
    msg = failure(cfg.replace(dataset="mnist-5k"), d, tmp_path / "w")
    assert "train images: expect_table_row_count_to_be_between" in msg
    assert "expect_column_mean_to_be_between(column='mean_intensity', min_value=0.06, max_value=0.22)" in msg


def test_expected_split_sizes_follow_the_source_and_fractions():
    cfg = defaults().data.replace(val_fraction=0.1, test_fraction=0.2)
    own = expected_split_sizes(cfg, {"official_test": False, "splits": {}}, {"images": 5000})
    assert own == pytest.approx({"train": 3500, "val": 500, "test": 1000})
    official = expected_split_sizes(cfg, {"official_test": True, "splits": {}}, {"images": 70000, "test_images": 10000})
    assert official == pytest.approx({"train": 54000, "val": 6000, "test": 10000})


def test_stale_or_missing_validation_stops_training(data, tmp_path, run_cli, tiny_params):
    cfg, d = data
    with pytest.raises(PixelNetError, match="run `pixelnet validate"):
        check_validated(tmp_path / "none", d)
    validate(cfg, data_dir=d, suite_path=SUITE, out_dir=tmp_path / "v")
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(manifest | {"levels": 4, "note": "changed"}))
    result = run_cli("train", "--params", tiny_params, "--data", d, "--validation", tmp_path / "v",
                     "--model", tmp_path / "m.pt", "--reports", tmp_path / "r")
    assert result.code == 2 and "validated other data" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "m.pt").exists()
