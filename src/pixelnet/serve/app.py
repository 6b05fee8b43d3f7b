"""`pixelnet serve`'s FastAPI app: the page (page.html) and its JSON API, each route described at /api/docs.

The */stream routes send server-sent events over POST: `row` {i, rows (N, C, W)} for each row drawn, then
`done` with the images.  Sampling runs in a worker thread, so the server answers other clients while one
generates, and a client that disconnects (the page's Stop) ends its generation at the next row.  Request
bodies refuse unknown fields and bad values with a 422 naming the field.  The same settings draw the same
images as `pixelnet sample` (both draw through pixelnet.sampling's sample_labels and sampling_noise).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from pixelnet.config import SampleConfig
from pixelnet.model import ModelConfig
from pixelnet.sampling import complete as complete_images
from pixelnet.sampling import sample_fast, sample_labels, sampling_noise

MAX_N = 64  # images per request: enough for a screenful, few enough to stay live on a laptop CPU
MAX_COMPLETIONS = 16
PAGE = Path(__file__).with_name("page.html")


class StrictBody(BaseModel):
    """A request body: unknown fields are refused (a 422 naming each), never ignored."""

    model_config = ConfigDict(extra="forbid")


class SampleRequest(StrictBody):
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 16
    label: Annotated[int | None, Field(ge=0)] = None  # conditional models: this class; none: the classes take turns
    temperature: Annotated[float, Field(gt=0, le=10)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class CompleteRequest(StrictBody):
    image: list  # levels, (C, H, W) or (H, W) for one channel
    rows: Annotated[int | None, Field(ge=0)] = None  # top rows kept; default: half the image's rows
    n: Annotated[int, Field(ge=1, le=MAX_COMPLETIONS)] = 4
    label: Annotated[int | None, Field(ge=0)] = None  # conditional models: the class to complete as (default 0)
    temperature: Annotated[float, Field(gt=0, le=10)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class Stopped(Exception):
    """The client went away: the generation ends at the row it was on."""


def bad_request(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors: the field is named in `loc`."""
    return HTTPException(status_code=422, detail=[{"loc": ["body", field], "msg": message}])


class Generator:
    """The model and what a request needs to draw with it, as `pixelnet sample` draws."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig) -> None:
        self.model, self.config = model, config

    def check_label(self, label: int | None) -> None:
        c = self.config
        if label is not None and not c.conditional:
            raise bad_request("label", "this model is unconditional: leave label out")
        if label is not None and label >= c.n_classes:
            raise bad_request("label", f"must be a class of this model, 0 .. {c.n_classes - 1}")

    def sample(self, req: SampleRequest, on_row: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.check_label(req.label)
        cfg = SampleConfig(n=req.n, temperature=req.temperature, seed=req.seed, method="fast", label=req.label)
        labels, _ = sample_labels(cfg, self.config)
        c = self.config
        noise = sampling_noise(cfg.n, c.image_channels, c.height, c.width, seed=cfg.seed)
        return sample_fast(self.model, noise, temperature=cfg.temperature, labels=labels, on_row=on_row), labels

    def given(self, image: list) -> torch.Tensor:
        """The request's image as levels (1, C, H, W), or a 422 naming `image`."""
        c = self.config
        try:
            x = np.asarray(image, dtype=np.float64)
        except (ValueError, TypeError):
            raise bad_request("image", "must be a nested list of numbers (C, H, W) or (H, W)") from None
        if x.ndim == 2 and c.image_channels == 1:
            x = x[None]
        if x.shape != (c.image_channels, c.height, c.width):
            raise bad_request("image", f"must be {c.image_channels} x {c.height} x {c.width} levels, got shape "
                                       f"{list(x.shape)}")
        if not np.isfinite(x).all() or (x != np.round(x)).any() or x.min() < 0 or x.max() > c.levels - 1:
            raise bad_request("image", f"must hold whole levels 0 .. {c.levels - 1}")
        return torch.from_numpy(x.astype(np.uint8))[None]

    def completion_image(self, req: CompleteRequest) -> torch.Tensor:
        """The request's checked image (1, C, H, W), or a 422 naming the field that is wrong."""
        self.check_label(req.label)
        image = self.given(req.image)
        if req.rows is not None and req.rows >= self.config.height:
            raise bad_request("rows", f"keeps every row: choose fewer than {self.config.height}")
        return image

    def complete(self, req: CompleteRequest, image: torch.Tensor, on_row: Callable | None = None) -> torch.Tensor:
        """Completions (n, C, H, W) of `image` (from completion_image) below its top req.rows rows."""
        labels = None
        if self.config.conditional:
            labels = torch.tensor([req.label if req.label is not None else 0])
        rows = self.config.height // 2 if req.rows is None else req.rows
        out = complete_images(self.model, image, rows=rows, completions=req.n, seed=req.seed,
                              temperature=req.temperature, labels=labels, on_row=on_row)
        return out[0]  # (n, C, H, W)


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def stream(request: Request, work: Callable[[Callable], dict], log: list[dict]) -> AsyncIterator[str]:
    """Run work(on_row) in a thread; yield its rows as events as they come, then `done`.

    A client that disconnects sets `stop`, and the thread ends at its next row.  Each generation appends
    {"rows": rows drawn, "stopped": bool} to `log` when its thread ends (app.state.generations).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    drawn = [0]

    def on_row(i: int, row: torch.Tensor) -> None:
        drawn[0] += 1
        if stop.is_set():
            raise Stopped
        loop.call_soon_threadsafe(queue.put_nowait, ("row", {"i": i, "rows": row.tolist()}))

    def run() -> None:
        stopped = False
        try:
            result = work(on_row)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
        except Stopped:
            stopped = True
        except Exception as e:  # reported to the client in the stream (the status line has gone out)
            loop.call_soon_threadsafe(queue.put_nowait, ("error", {"message": f"{type(e).__name__}: {e}"}))
        finally:
            log.append({"rows": drawn[0], "stopped": stopped})

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while True:
            try:
                name, data = await asyncio.wait_for(queue.get(), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            yield event(name, data)
            if name in ("done", "error"):
                return
    finally:
        stop.set()


def create_app(model: torch.nn.Module, config: ModelConfig, *, facts: dict, examples: torch.Tensor | None = None,
               example_labels: torch.Tensor | None = None) -> FastAPI:
    """The page and the API for `model` (in eval mode); `facts` shown on the page; `examples` test images to
    complete, with their classes."""
    gen = Generator(model, config)
    app = FastAPI(title="PixelNet", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.generations = []  # what each streamed generation's thread did: rows drawn, stopped or not

    def sample_result(req: SampleRequest, on_row: Callable | None = None) -> dict:
        images, labels = gen.sample(req, on_row)
        return {"images": images.tolist(), "labels": None if labels is None else labels.tolist()}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The page."""
        return PAGE.read_text()

    @app.get("/api/info")
    def info() -> dict:
        """The model's facts: dataset, levels, shape, architecture, head, test bits/dim or registry version."""
        c = config
        return facts | {"levels": c.levels, "shape": [c.image_channels, c.height, c.width], "arch": c.arch,
                        "head": c.head, "conditional": c.conditional, "classes": c.n_classes, "max_n": MAX_N,
                        "max_completions": MAX_COMPLETIONS}

    @app.get("/api/examples")
    def example_images(count: Annotated[int, Field(ge=1, le=32)] = 10) -> dict:
        """A few test images to complete and their classes (404 when the server has no --data)."""
        if examples is None:
            raise HTTPException(status_code=404, detail="no test images: start the server with --data")
        labels = example_labels[:count].tolist() if example_labels is not None else None
        return {"images": examples[:count].tolist(), "labels": labels}

    @app.post("/api/sample")
    def sample(req: SampleRequest) -> dict:
        """{n, label, temperature, seed} -> {images (N, C, H, W) levels, labels}."""
        return sample_result(req)

    @app.post("/api/sample/stream")
    async def sample_stream(req: SampleRequest, request: Request) -> StreamingResponse:
        """/api/sample as events, a row at a time."""
        gen.check_label(req.label)  # a 422 before the stream starts
        return StreamingResponse(stream(request, lambda on_row: sample_result(req, on_row), app.state.generations),
                                 media_type="text/event-stream")

    @app.post("/api/complete")
    def complete(req: CompleteRequest) -> dict:
        """{image (C, H, W) or (H, W) levels, rows, n, label, temperature, seed} -> {images}: n completions
        of the image below its top `rows` rows."""
        return {"images": gen.complete(req, gen.completion_image(req)).tolist()}

    @app.post("/api/complete/stream")
    async def complete_stream(req: CompleteRequest, request: Request) -> StreamingResponse:
        """/api/complete as events, a row at a time."""
        image = gen.completion_image(req)  # a 422 before the stream starts
        work = lambda on_row: {"images": gen.complete(req, image, on_row).tolist()}  # noqa: E731
        return StreamingResponse(stream(request, work, app.state.generations), media_type="text/event-stream")

    return app
