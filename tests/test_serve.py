"""`pixelnet serve`'s API through an in-process client: shapes, streams in order, the same images as
`pixelnet sample`, a 4xx for each bad request, concurrent streams that do not mix, Stop."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from pixelnet.checkpoint import save_checkpoint
from pixelnet.config import defaults
from pixelnet.serve.app import Stopped, create_app
from pixelnet.stages.sample import sample
from tests.conftest import random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return random_model(conditional=True, n_classes=3, levels=4, height=5, width=5, blocks=1, sharpen=4.0)


@pytest.fixture(scope="module")
def client(model):
    examples = torch.randint(0, 4, (3, 1, 5, 5), dtype=torch.uint8)
    app = create_app(model, model.config, facts={"source": "test.pt", "dataset": "x", "test_bits_per_dim": 1.5},
                     examples=examples, example_labels=torch.tensor([0, 1, 2]))
    return TestClient(app)


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_page_and_facts(client):
    page = client.get("/")
    assert page.status_code == 200 and "watch the model draw" in page.text
    info = client.get("/api/info").json()
    assert info["shape"] == [1, 5, 5] and info["levels"] == 4 and info["conditional"] and info["classes"] == 3
    assert info["test_bits_per_dim"] == 1.5 and info["arch"] == "pixelcnn" and info["head"] == "softmax"
    examples = client.get("/api/examples").json()
    assert np.asarray(examples["images"]).shape == (3, 1, 5, 5) and examples["labels"] == [0, 1, 2]


def test_sample_gives_the_images_pixelnet_sample_gives(client, model, tmp_path):
    save_checkpoint(model, model.config, tmp_path / "m.pt")
    for body in ({"n": 6, "seed": 3, "temperature": 0.8}, {"n": 4, "seed": 1, "label": 2}):
        got = client.post("/api/sample", json=body).json()
        sample(defaults().sample.replace(method="fast", **body), model_path=tmp_path / "m.pt", out_dir=tmp_path / "s")
        assert np.array_equal(np.asarray(got["images"]), np.load(tmp_path / "s" / "samples.npy"))
        assert got["labels"] == np.load(tmp_path / "s" / "labels.npy").tolist()


def test_stream_rows_arrive_in_order_and_end_with_the_sampled_images(client):
    body = {"n": 3, "seed": 7}
    streamed = events(client.post("/api/sample/stream", json=body).text)
    rows = [d for name, d in streamed if name == "row"]
    assert [r["i"] for r in rows] == [0, 1, 2, 3, 4] and streamed[-1][0] == "done"
    built = np.stack([np.asarray(r["rows"]) for r in rows], axis=2)  # (N, C, H, W) from rows (N, C, W)
    final = np.asarray(streamed[-1][1]["images"])
    assert np.array_equal(built, final)
    assert np.array_equal(final, np.asarray(client.post("/api/sample", json=body).json()["images"]))


def test_complete_keeps_the_given_rows(client):
    image = np.random.default_rng(0).integers(0, 4, (5, 5)).tolist()  # (H, W) for one channel
    got = np.asarray(client.post("/api/complete", json={"image": image, "rows": 2, "n": 3, "label": 1}).json()["images"])
    assert got.shape == (3, 1, 5, 5) and (got[:, 0, :2] == np.asarray(image)[:2]).all()
    streamed = events(client.post("/api/complete/stream", json={"image": image, "rows": 2, "n": 3, "label": 1}).text)
    assert [d["i"] for n, d in streamed if n == "row"] == [2, 3, 4]
    assert np.array_equal(np.asarray(streamed[-1][1]["images"]), got)
    default = client.post("/api/complete", json={"image": image, "n": 3, "label": 1}).json()["images"]
    assert np.array_equal(np.asarray(default), got), "rows left out keeps half the image's rows (2 of 5)"


@pytest.mark.parametrize("path, body, field", [
    ("/api/sample", {"n": 0}, "n"),
    ("/api/sample", {"n": 65}, "n"),
    ("/api/sample", {"temperature": 0}, "temperature"),
    ("/api/sample", {"temperature": -1}, "temperature"),
    ("/api/sample", {"label": 3}, "label"),
    ("/api/sample", {"label": -1}, "label"),
    ("/api/sample", {"seed": "x"}, "seed"),
    ("/api/sample/stream", {"label": 9}, "label"),
    ("/api/complete", {"image": [[0, 1], [2, 3]]}, "image"),
    ("/api/complete", {"image": "not an image"}, "image"),
    ("/api/complete", {"image": [[9] * 5] * 5}, "image"),
    ("/api/complete", {"image": [[0] * 5] * 5, "rows": 5}, "rows"),
    ("/api/complete", {"image": [[0] * 5] * 5, "n": 17}, "n"),
    ("/api/complete/stream", {"image": [["a"] * 5] * 5}, "image"),
    ("/api/sample", {"n": 1, "colour": "red"}, "colour"),  # unknown fields are refused, not ignored
    ("/api/sample", {"temprature": 0.5}, "temprature"),
    ("/api/sample/stream", {"sead": 1}, "sead"),
    ("/api/complete", {"image": [[0] * 5] * 5, "row": 2}, "row"),
    ("/api/complete/stream", {"image": [[0] * 5] * 5, "label": 1, "temp": 2}, "temp"),
])
def test_bad_requests_are_a_422_naming_the_field(client, path, body, field):
    res = client.post(path, json=body)
    assert res.status_code == 422, res.text
    assert any(d["loc"][-1] == field for d in res.json()["detail"]), res.json()


def test_unconditional_models_refuse_a_label(tmp_path):
    plain = random_model(levels=4, height=5, width=5, blocks=1)
    res = TestClient(create_app(plain, plain.config, facts={})).post("/api/sample", json={"label": 0})
    assert res.status_code == 422 and "unconditional" in res.json()["detail"][0]["msg"]


def test_two_concurrent_streams_do_not_mix(client):
    results: dict[int, list] = {}

    def run(seed: int) -> None:
        streamed = events(client.post("/api/sample/stream", json={"n": 4, "seed": seed}).text)
        results[seed] = streamed

    threads = [threading.Thread(target=run, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for seed, streamed in results.items():
        assert [d["i"] for n, d in streamed if n == "row"] == [0, 1, 2, 3, 4]
        alone = np.asarray(client.post("/api/sample", json={"n": 4, "seed": seed}).json()["images"])
        assert np.array_equal(np.asarray(streamed[-1][1]["images"]), alone)
    assert len(results) == 2


def test_stop_ends_the_generation_at_the_next_row(model):
    from pixelnet.serve.app import Generator, SampleRequest

    seen = []

    def on_row(i, row):
        seen.append(i)
        if i == 1:
            raise Stopped  # what the stream's hook raises once the client has gone

    with pytest.raises(Stopped):
        Generator(model, model.config).sample(SampleRequest(n=2, seed=0), on_row)
    assert seen == [0, 1]


def test_serve_command_errors_are_clean(run_cli, tmp_path):
    result = run_cli("serve", "--model", tmp_path / "nope.pt")
    assert result.code == 2 and "Traceback" not in result.err and "nope.pt not found" in result.err
    result = run_cli("serve", "--model", tmp_path / "nope.pt", "--port", "70000")
    assert result.code == 2 and "--port 70000 is not a port" in result.err


def test_the_page_shows_a_test_bits_per_dim_only_for_the_model_it_was_computed_for(tmp_path, model, capsys):
    from pixelnet.files import sha256_file
    from pixelnet.serve.main import model_facts

    save_checkpoint(model, model.config, tmp_path / "m.pt")
    metrics = tmp_path / "metrics.json"
    for recorded, said in [({"model_sha256": sha256_file(tmp_path / "m.pt")}, ""),
                           ({"model_sha256": "0" * 64}, f"computed for another model than {tmp_path / 'm.pt'}"),
                           ({}, "does not name its model (no model_sha256)")]:
        metrics.write_text(json.dumps({"test_bits_per_dim": 1.25} | recorded))
        facts = model_facts(str(tmp_path / "m.pt"), tmp_path / "m.pt", metrics)
        assert facts.get("test_bits_per_dim") == (None if said else 1.25), recorded
        err = capsys.readouterr().err
        assert said in err and ("not showing a test bits/dim" in err) == bool(said), err
    assert "test_bits_per_dim" not in model_facts("m.pt", tmp_path / "m.pt", tmp_path / "none.json")


def test_serve_is_listed_with_the_stages(run_cli):
    result = run_cli("--help")
    assert result.code == 0 and "serve" in result.out and "train" in result.out


def test_a_client_that_disconnects_stops_its_generation():
    """Over a real socket: read the first row of a long generation, hang up, and the thread stops early."""
    import time

    import httpx

    from devtools.browser import serving

    slow = random_model(levels=4, height=28, width=28, blocks=7, channels=64, first_kernel=7, kernel=5)  # ~1 s whole
    app = create_app(slow, slow.config, facts={})
    with serving(app) as url:
        with httpx.stream("POST", f"{url}/api/sample/stream", json={"n": 64}, timeout=60) as res:
            for line in res.iter_lines():
                if line.startswith("data:"):
                    break  # the first row arrived: now the client goes away
        deadline = time.monotonic() + 30
        while not app.state.generations and time.monotonic() < deadline:
            time.sleep(0.05)
    assert app.state.generations, "the generation's thread did not end"
    (ended,) = app.state.generations
    assert ended["stopped"] and ended["rows"] < 28, ended  # a whole generation draws 28


def test_the_page_offers_test_images_only_from_data_that_fits_the_model(run_cli, tmp_path, tiny_params, image_folder,
                                                                        capsys):
    from pixelnet.serve.main import test_examples

    for args in [("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", f"data.folder={image_folder}"),
                 ("preprocess", "--params", tiny_params, "--raw", tmp_path / "raw", "--out", tmp_path / "data")]:
        assert run_cli(*args).code == 0
    fits = random_model(levels=4, height=8, width=8, blocks=1)
    images, labels, dataset = test_examples(tmp_path / "data", fits.config, "m.pt")
    assert images.shape == (10, 1, 8, 8) and labels.shape == (10,) and dataset == "raw"  # the raw directory's name
    other = random_model(levels=4, height=5, width=5, blocks=1)
    assert test_examples(tmp_path / "data", other.config, "m.pt") == (None, None, None)
    assert "not offering test images to complete" in capsys.readouterr().err
    assert test_examples(tmp_path / "nothing", fits.config, "m.pt") == (None, None, None)
