"""Request and response bodies of the HTTP API; they generate its OpenAPI schema.

Graph documents and node outputs stay plain JSON objects here: the engine owns their
shape and validates them (`engine.Graph.from_dict`), the API does not restate it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import without_private_fields
from .store import RunRecord

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graph: dict[str, Any] = Field(description="a Loom graph document: {loom: 1, params, nodes}")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="values for the graph's declared params")


class Submitted(BaseModel):
    id: str
    status: RunStatus


class ProblemView(BaseModel):
    message: str
    node: str | None = None
    input: str | None = None
    hint: str | None = None
    file: str | None = None


class Problems(BaseModel):
    error: str = Field(description="invalid_graph or invalid_request")
    problems: list[ProblemView]


class ErrorView(BaseModel):
    error: str
    message: str
    id: str | None = Field(default=None, description="error id of an internal error, as logged")
    run: str | None = None


class RunError(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: str = Field(description="node_failed, cancelled, interrupted, invalid_graph, internal")
    id: str | None = Field(default=None, description="error id: the server log has the details "
                                                     "(traceback) under it")
    message: str | None = None
    node: str | None = Field(default=None, description="id of the node that failed")
    type: str | None = Field(default=None, description="its node type")
    problems: list[ProblemView] | None = None


class RunSummary(BaseModel):
    id: str
    seq: int = Field(description="position in submission order; page with `before`")
    status: RunStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = Field(description="times a worker started this run")
    cancel_requested: bool = False
    error: RunError | None = None

    @classmethod
    def of(cls, run: RunRecord) -> "RunSummary":
        return cls(id=run.id, seq=run.seq, status=run.status, created_at=run.created_at,
                   started_at=run.started_at, finished_at=run.finished_at, attempts=run.attempts,
                   cancel_requested=run.cancel_requested, error=without_private_fields(run.error))


class RunView(RunSummary):
    ran: list[str] = Field(default_factory=list, description="nodes that ran")
    cached: list[str] = Field(default_factory=list, description="nodes answered from the cache")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per node")
    outputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="output node id -> output name -> value; files are "
                                          "{file, url}, other non-JSON values {type, shape, ...}")
    files: list[str] = Field(default_factory=list, description="output files, for /outputs/{name}")
    notes: list[str] = Field(default_factory=list, description="what happened to it (re-queued ...)")
    model_loads: int | None = Field(default=None, description="models its worker had to load "
                                                              "(Ray backend; null on the local one)")
    worker: str | None = Field(default=None, description="the Ray worker that ran it")
    graph: dict[str, Any] | None = None
    params: dict[str, Any] | None = None

    @classmethod
    def of(cls, run: RunRecord, *, with_graph: bool = True) -> "RunView":
        r = run.result
        return cls(**RunSummary.of(run).model_dump(), ran=r.get("ran", []),
                   cached=r.get("cached", []), timings=r.get("timings", {}),
                   outputs=r.get("outputs", {}), files=r.get("files", []), notes=run.notes,
                   model_loads=r.get("model_loads"), worker=r.get("worker"),
                   graph=run.graph if with_graph else None, params=run.params if with_graph else None)

    def body(self) -> dict:
        """The JSON body; a view without the graph leaves `graph` and `params` out rather than
        saying `null`, which would read as a run that has no graph."""
        return self.model_dump(exclude={k for k in ("graph", "params") if getattr(self, k) is None})


class RunList(BaseModel):
    runs: list[RunSummary]
    next: int | None = Field(description="pass as `before` for the next page; null on the last")


class NodeCatalogue(BaseModel):
    nodes: list[dict[str, Any]] = Field(description="one JSON Schema description per node type")


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description="the models folder it is in: checkpoints, loras, ...")
    family: str | None = Field(description="sd1, sd2, sdxl, sd3, flux ... read from its keys or configs")
    size: int = Field(description="bytes of weights")
    format: str = Field(description="diffusers, safetensors, gguf or pickle")
    sha256: str | None = Field(description="SHA-256 recorded when Loom installed it (single files)")
    source: str | None = Field(description="where it was pulled from, if Loom pulled it")


class ModelList(BaseModel):
    models: dict[str, list[str]] = Field(description="model kind (folder) -> names")
    entries: list[ModelInfo] = Field(description="every model with its kind, family, size, format")


class LoadedModelView(BaseModel):
    name: str = Field(description="the file or folder it was loaded from, as the graph named it")
    kind: str = Field(description="checkpoint, diffusion_model, text_encoder (role), vae, controlnet, ...")
    bytes: int = Field(description="bytes it holds, all devices together")
    devices: dict[str, int] = Field(description="device -> bytes")
    dtypes: dict[str, int] = Field(description="tensor dtype -> bytes (quantized blocks count as uint8)")
    details: dict[str, str] = Field(description="what its loader adds: quantization (GGUF type), upcast "
                                                "(fp8 stored, loaded wider), family, parts")


class LoadedModels(BaseModel):
    models: list[LoadedModelView] = Field(description="models in the worker's memory, least recently used first")
    bytes: int = Field(description="their bytes together")


class PullRequest(BaseModel):
    source: str = Field(description="a hub repository id (owner/name[@revision]) or an http(s) URL")
    kind: str | None = Field(default=None, description="models folder; default from the repository")
    variant: str | None = Field(default=None, description="weights variant, e.g. fp16")
    sha256: str | None = Field(default=None, description="expected SHA-256 of a URL's file")


class PullStatus(BaseModel):
    id: str
    source: str
    status: str = Field(description="running, installed or failed")
    done: int = Field(description="bytes received so far (URL pulls)")
    total: int | None = None
    kind: str | None = None
    name: str | None = None
    message: str | None = None
    already_installed: bool | None = None


class Uploaded(BaseModel):
    name: str = Field(description="the file name to give a load-image node")
    width: int
    height: int
    format: str = Field(description="format the upload was sniffed as; stored as PNG")
    bytes: int


class Health(BaseModel):
    status: Literal["ok", "worker_stopped"] = "ok"
