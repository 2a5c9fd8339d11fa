"""Runs from the durable store seen as ComfyUI sees them: queue items, history entries, jobs.

Nothing is kept beside the store: a run's ComfyUI identity (prompt id, client id, the
prompt and workflow) travels in its graph's `meta.comfy`, so history, the queue and the
jobs panel read the same after a restart. Runs submitted through `/v1` show up too, under
their run id, with their Loom graph as the prompt.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Iterable

from ..store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from .prompts import comfy_meta

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
JOB_STATUS = {QUEUED: "pending", RUNNING: "in_progress", SUCCEEDED: "completed", FAILED: "failed",
              CANCELLED: "cancelled"}
STATUS_OF_JOB = {v: k for k, v in JOB_STATUS.items()}


def prompt_id_of(run: RunRecord) -> str:
    return comfy_meta(run.graph).get("prompt_id") or run.id


def client_id_of(run: RunRecord) -> str | None:
    return comfy_meta(run.graph).get("client_id")


def prompt_of(run: RunRecord) -> dict:
    """The API prompt the run was submitted as (its Loom graph for a /v1 run)."""
    return comfy_meta(run.graph).get("prompt") or run.graph


def extra_data_of(run: RunRecord) -> dict:
    meta = comfy_meta(run.graph)
    extra: dict[str, Any] = {}
    if meta.get("client_id"):
        extra["client_id"] = meta["client_id"]
    if "workflow" in meta:
        extra["extra_pnginfo"] = {"workflow": meta["workflow"]}
    return extra


def output_nodes_of(run: RunRecord) -> list[str]:
    return list(comfy_meta(run.graph).get("outputs") or run.result.get("outputs", {}).keys())


def queue_item(run: RunRecord) -> list:
    """[number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    return [run.seq, prompt_id_of(run), prompt_of(run), extra_data_of(run), output_nodes_of(run)]


def node_images(run: RunRecord) -> dict[str, dict[str, list[dict]]]:
    """{node_id: {"images": [{filename, subfolder, type}]}} for every image file a node wrote."""
    found: dict[str, dict[str, list[dict]]] = {}
    for node_id, outputs in run.result.get("outputs", {}).items():
        images = [image_ref(name) for name in _files_in(outputs)
                  if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES]
        if images:
            found[node_id] = {"images": images}
    return found


def image_ref(name: str, kind: str = "output") -> dict:
    path = PurePosixPath(name)
    subfolder = "" if str(path.parent) == "." else str(path.parent)
    return {"filename": path.name, "subfolder": subfolder, "type": kind}


def _files_in(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        if isinstance(value.get("file"), str) and "url" in value:
            yield value["file"]
            return
        for item in value.values():
            yield from _files_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _files_in(item)


def status_messages(run: RunRecord) -> list:
    messages: list[list] = [["execution_start", {"prompt_id": prompt_id_of(run),
                                                 "timestamp": _ms(run.started_at)}]]
    if run.result.get("cached"):
        messages.append(["execution_cached", {"nodes": run.result["cached"],
                                              "prompt_id": prompt_id_of(run),
                                              "timestamp": _ms(run.started_at)}])
    end = {SUCCEEDED: "execution_success", FAILED: "execution_error",
           CANCELLED: "execution_interrupted"}.get(run.status)
    if end is not None:
        body = {"prompt_id": prompt_id_of(run), "timestamp": _ms(run.finished_at)}
        if run.status != SUCCEEDED and run.error:
            body.update({"node_id": run.error.get("node"), "node_type": run.error.get("type"),
                         "exception_message": run.error.get("message", "")})
        messages.append([end, body])
    return messages


def history_entry(run: RunRecord) -> dict:
    status_str = {SUCCEEDED: "success", FAILED: "error", CANCELLED: "error"}.get(run.status)
    outputs = node_images(run)
    return {
        "prompt": queue_item(run),
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": run.status == SUCCEEDED,
                   "messages": status_messages(run)},
        "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                 for n in outputs},
    }


def job(run: RunRecord, *, detailed: bool = False) -> dict:
    images = node_images(run)
    first = next(((n, refs["images"][0]) for n, refs in images.items()), None)
    preview = ({**first[1], "nodeId": first[0], "mediaType": "images"} if first else None)
    error = None
    if run.status in (FAILED, CANCELLED) and run.error:
        error = {"node_id": run.error.get("node"), "node_type": run.error.get("type"),
                 "exception_message": run.error.get("message", ""),
                 "exception_type": run.error.get("error", "")}
    view = {
        "id": prompt_id_of(run),
        "status": JOB_STATUS[run.status],
        "create_time": _ms(run.created_at),
        "execution_start_time": _ms(run.started_at),
        "execution_end_time": _ms(run.finished_at),
        "preview_output": preview,
        "outputs_count": sum(len(v["images"]) for v in images.values()),
        "previewable_outputs_count": sum(len(v["images"]) for v in images.values()),
        "execution_error": error,
        "workflow_id": _workflow_id(run),
        "priority": run.seq,
    }
    if detailed:
        meta = comfy_meta(run.graph)
        view.update({"outputs": images, "workflow": {"prompt": prompt_of(run),
                                                     "extra_data": extra_data_of(run)},
                     "update_time": _ms(run.finished_at or run.started_at or run.created_at),
                     "execution_status": history_entry(run)["status"],
                     "client_id": meta.get("client_id")})
    return view


def _workflow_id(run: RunRecord) -> str | None:
    workflow = comfy_meta(run.graph).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) else None


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds is not None else None
