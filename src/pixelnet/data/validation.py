"""Great Expectations over the preprocessed tensors (data/processed/): the only module that imports it (lazily).

`validate` turns data/processed into four pandas tables (splits, images, classes, overlap: `build_checks`),
runs the suite of pipeline/expectations.yaml on them in an ephemeral GE context, writes `summary.json` (every
expectation with its observed value: the same bytes for the same data and suite) and `gx/` (GE's results and
Data Docs, which carry timestamps), and raises a PixelNetError listing every failed expectation.
`check_validated` is how train refuses data whose validation failed or is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pixelnet.config import DataConfig
from pixelnet.data.processed import SPLITS, read_manifest
from pixelnet.errors import PixelNetError
from pixelnet.files import atomic_dir, load_npy, sha256_file, write_json

TABLES = ("splits", "images", "classes", "overlap")
SUMMARY = "summary.json"
REMEDY = "run `pixelnet preprocess` again"


@dataclass
class Suite:
    """pipeline/expectations.yaml: expectations per table, and bounds per source."""

    tables: dict[str, list[tuple[str, dict]]]
    sources: dict[str, dict]
    split_tolerance: float
    path: str = ""


@dataclass
class Check:
    """One table to validate: its name, the rows, and the suite parameters to fill in."""

    table: str
    split: str | None
    frame: pd.DataFrame
    parameters: dict[str, Any] = field(default_factory=dict)


def read_suite(path: Path) -> Suite:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise PixelNetError(f"expectation suite {path} not found: pass --suite pipeline/expectations.yaml") from None
    except yaml.YAMLError as e:
        raise PixelNetError(f"expectation suite {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw.get("tables") or {}) != set(TABLES) or not raw.get("sources"):
        raise PixelNetError(f"expectation suite {path} must have `tables` ({', '.join(TABLES)}) and `sources`")
    tables = {}
    for name, entries in raw["tables"].items():
        tables[name] = []
        for entry in entries or []:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise PixelNetError(f"{path}: tables.{name} entries must be `expect_...: {{kwargs}}`, got {entry!r}")
            ((kind, kwargs),) = entry.items()
            tables[name].append((str(kind), dict(kwargs or {})))
    return Suite(tables, raw["sources"], float(raw.get("split_tolerance", 0.01)), str(path))


CHUNK = 4096  # images per pass: bounds the float64 copies (full MNIST or CIFAR-10 would need gigabytes at once)


def _chunk_stats(images: np.ndarray, levels: int) -> dict[str, np.ndarray]:
    flat = images.reshape(len(images), int(np.prod(images.shape[1:]))).astype(np.float64)  # (n, C*H*W)
    finite = np.isfinite(flat * (2.0 / (levels - 1)) - 1.0)  # the network input, as scale_input makes it
    counts = finite.sum(axis=1)
    some = counts > 0
    return {
        "min_level": np.where(some, np.where(finite, flat, np.inf).min(axis=1, initial=np.inf), np.nan),
        "max_level": np.where(some, np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf), np.nan),
        "nan_count": (~finite).sum(axis=1),
        "mean_intensity": np.where(some, np.where(finite, flat, 0.0).sum(axis=1) / np.maximum(counts, 1) / (levels - 1),
                                   np.nan),
    }


def image_table(images: np.ndarray, labels: np.ndarray | None, levels: int) -> pd.DataFrame:
    """Per-image statistics of one split's images (N, C, H, W) as stored, any dtype."""
    images = np.atleast_1d(images)
    n = len(images)
    parts = [_chunk_stats(images[i:i + CHUNK], levels) for i in range(0, n, CHUNK)] or [_chunk_stats(images, levels)]
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    usable = labels is not None and labels.ndim == 1 and np.issubdtype(labels.dtype, np.number)
    label = pd.Series(labels if usable else np.full(n, np.nan), dtype="float64").reindex(range(n)).to_numpy()
    return pd.DataFrame({"dtype": str(images.dtype), "shape": "x".join(map(str, images.shape[1:])),
                         "label": label, **stats},
                        columns=["dtype", "shape", "min_level", "max_level", "nan_count", "label", "mean_intensity"])


def class_table(labels: np.ndarray | None, classes: list[str]) -> pd.DataFrame:
    known = np.asarray(labels if labels is not None else [], dtype=np.float64).reshape(-1)
    known = known[(known >= 0) & (known < len(classes))].astype(np.int64)
    counts = np.bincount(known, minlength=len(classes))
    return pd.DataFrame({"class": classes, "share": counts / max(len(known), 1)})


def content_hashes(images: np.ndarray) -> set[str]:
    """sha256 of each image's values (as float64, so that a copy stored in another dtype still matches)."""
    images = np.atleast_1d(images)
    return {hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
            for i in range(0, len(images), CHUNK) for x in images[i:i + CHUNK].astype(np.float64)}


def expected_split_sizes(cfg: DataConfig, manifest: dict, source: dict) -> dict[str, float]:
    """Images each split should hold, for this source and data.val_fraction / data.test_fraction."""
    counts = {s: manifest["splits"].get(s, {}).get("count", 0) for s in SPLITS}
    total = source.get("images") or sum(counts.values())
    if manifest.get("official_test"):
        test = source.get("test_images") or counts["test"]
        val = cfg.val_fraction * (total - test)  # val is drawn from the official train split
    else:
        test, val = cfg.test_fraction * total, cfg.val_fraction * total
    return {"train": total - test - val, "val": val, "test": test}


def build_checks(cfg: DataConfig, data_dir: Path, suite: Suite) -> list[Check]:
    manifest = read_manifest(data_dir)
    levels, classes = int(manifest["levels"]), list(manifest["classes"])
    source = suite.sources.get(cfg.dataset)
    if source is None:
        raise PixelNetError(f"{suite.path} has no bounds for data.dataset {cfg.dataset!r}: add it under `sources`")
    expected = expected_split_sizes(cfg, manifest, source)
    tolerance = suite.split_tolerance * sum(expected.values()) + len(classes)
    checks = [Check("splits", None, pd.DataFrame({"split": [
        s for s in SPLITS if (Path(data_dir) / f"{s}_images.npy").is_file()]}, dtype="object"))]
    hashes: dict[str, set[str]] = {}
    for split in SPLITS:
        images_path, labels_path = Path(data_dir) / f"{split}_images.npy", Path(data_dir) / f"{split}_labels.npy"
        if not images_path.is_file():
            continue
        images = load_npy(images_path, remedy=REMEDY)
        labels = load_npy(labels_path, remedy=REMEDY) if labels_path.is_file() else None
        hashes[split] = content_hashes(images)
        params = {
            "manifest_count": manifest["splits"].get(split, {}).get("count", -1),
            "min_count": max(0, int(np.floor(expected[split] - tolerance))),
            "max_count": int(np.ceil(expected[split] + tolerance)),
            "shape": ["x".join(map(str, manifest["shape"]))],
            "max_level": levels - 1,
            "max_label": len(classes) - 1,
            "mean_min": source["mean_intensity"][0], "mean_max": source["mean_intensity"][1],
        }
        checks.append(Check("images", split, image_table(images, labels, levels), params))
        if len(np.atleast_1d(images)):
            checks.append(Check("classes", split, class_table(labels, classes),
                                {"share_min": source["class_share"][0], "share_max": source["class_share"][1]}))
    overlap = sorted(hashes.get("train", ())) + sorted(hashes.get("test", ()))
    checks.append(Check("overlap", None, pd.DataFrame({"sha256": overlap}, dtype="object")))
    return checks


def _plain(value: Any) -> Any:
    """numpy scalars, arrays and sets -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    return value


def observed(result: Any) -> Any:
    """What GE saw: the observed value, or the unexpected (and missing) values of the expectation."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return {"error": str(info.get("exception_message"))}
    res = result.result or {}
    if res.get("observed_value") is not None or "unexpected_count" not in res:
        return _plain(res.get("observed_value"))
    examples = [c["value"] for c in res.get("partial_unexpected_counts") or []] or res.get("partial_unexpected_list") or []
    seen = {"unexpected": _plain(res.get("unexpected_count")), "of": _plain(res.get("element_count")),
            "examples": _plain(list(dict.fromkeys(map(str, examples)))[:5] if examples else [])}
    if "partial_missing_list" in res:  # set expectations: values of the set absent from the column
        seen["missing"] = _plain(res.get("partial_missing_list", []))
    return seen


def _build_suites(gx: Any, context: Any, suite: Suite) -> dict[str, Any]:
    """One GE suite per table, plus `images_empty` (row counts only) for empty splits."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    built = {}
    entries_by_name = dict(suite.tables)
    entries_by_name["images_empty"] = [(k, kw) for k, kw in suite.tables["images"] if k.startswith("expect_table_")]
    for name, entries in entries_by_name.items():
        gx_suite = context.suites.add(gx.ExpectationSuite(name=name))
        for kind, kwargs in entries:
            try:
                gx_suite.add_expectation(ExpectationConfiguration(type=kind, kwargs=kwargs).to_domain_obj())
            except Exception as e:  # GE raises several kinds for an unknown type or bad kwargs
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PixelNetError(f"{suite.path}: tables.{name}: {kind} is not a valid expectation ({first})") from None
        built[name] = gx_suite
    return built


def run_checks(checks: list[Check], suite: Suite, docs_dir: Path) -> tuple[list[dict], list[dict]]:
    """Run every check in an ephemeral GE context, build Data Docs in docs_dir; returns (summary entries, GE's full
    results as JSON dicts)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage reports from the context made below
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(site_name="pixelnet", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        # Validation pages only: they show every expectation with its result; suite pages would repeat them.
        "site_section_builders": {"expectations": "0", "profiling": "0"},
    })
    suites = _build_suites(gx, context, suite)
    source = context.data_sources.add_pandas("processed")
    entries, full = [], []
    for check in checks:
        name = f"{check.split}_{check.table}" if check.split else check.table
        suite_name = "images_empty" if check.table == "images" and check.frame.empty else check.table
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suites[suite_name]))
        result = definition.run(batch_parameters={"dataframe": check.frame},
                                expectation_parameters=check.parameters, result_format="SUMMARY")
        full.append(_plain(result.to_json_dict()))
        for r in result.results:
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
            entries.append({"table": check.table, "split": check.split, "expectation": r.expectation_config.type,
                            "kwargs": _plain(kwargs), "success": bool(r.success), "observed": observed(r)})
    context.build_data_docs()
    return entries, full


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict) and "missing" in value:
        return f"missing {value['missing']}, unexpected {value['examples']}"  # distinct-set expectations
    if isinstance(value, dict) and "unexpected" in value:
        return f"{value['unexpected']} of {value['of']} rows unexpected, e.g. {value['examples']}"
    return repr(value) if isinstance(value, str) else str(value)


def describe_failure(entry: dict) -> str:
    where = f"{entry['split']} {entry['table']}" if entry["split"] else entry["table"]
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in entry["kwargs"].items())
    return f"{where}: {entry['expectation']}({args}): observed {_fmt(entry['observed'])}"


def validate(cfg: DataConfig, *, data_dir: Path, suite_path: Path, out_dir: Path) -> dict:
    """Validate data_dir against the suite, write out_dir/summary.json and out_dir/gx/, then raise a PixelNetError
    listing every failed expectation, if any."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    suite = read_suite(suite_path)
    (out_dir / SUMMARY).unlink(missing_ok=True)  # never leave a stale verdict beside new data
    checks = build_checks(cfg, data_dir, suite)
    with atomic_dir(out_dir / "gx") as tmp:
        entries, full = run_checks(checks, suite, tmp / "data_docs")
        (tmp / "results.json").write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
    failed = [e for e in entries if not e["success"]]
    summary = {"success": not failed, "evaluated": len(entries), "failed": len(failed), "suite": suite.path,
               "dataset": cfg.dataset, "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
               "results": entries}
    write_json(out_dir / SUMMARY, summary)
    if failed:
        lines = "\n".join(f"  {describe_failure(e)}" for e in failed)
        raise PixelNetError(
            f"data validation failed: {len(failed)} of {len(entries)} expectations failed for {data_dir} "
            f"(Data Docs: {out_dir / 'gx' / 'data_docs' / 'index.html'}):\n{lines}\n"
            f"Fix the data (run `pixelnet preprocess` again) or, if the bounds are wrong for your data, edit {suite.path}."
        )
    return summary


def check_validated(report_dir: Path, data_dir: Path) -> dict:
    """The validation summary for data_dir, if it passed; otherwise a PixelNetError saying what to run."""
    path = Path(report_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise PixelNetError(f"{path} not found: run `pixelnet validate --data {data_dir} --out {report_dir}` before training") from None
    except json.JSONDecodeError as e:
        raise PixelNetError(f"{path} is not valid JSON ({e}): run `pixelnet validate` again") from None
    if summary.get("data_manifest_sha256") != sha256_file(Path(data_dir) / "manifest.json"):
        raise PixelNetError(f"{path} validated other data than {data_dir}: run `pixelnet validate` again")
    if not summary.get("success"):
        raise PixelNetError(f"{data_dir} failed validation ({summary.get('failed')} expectations, see {path}): "
                            "fix the data, then run `pixelnet validate` again")
    return summary
