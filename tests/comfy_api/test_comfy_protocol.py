"""ComfyUI's HTTP API and websocket on `loom serve`, spoken as a ComfyUI client speaks it.

Only ComfyUI's protocol is used here: POST /prompt, the /ws message sequence, /history,
/view, /upload/image, /queue, /interrupt, /jobs, /object_info, settings and userdata.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect

from engine import node
from engine.types import file_input, model_name

from .conftest import draw_prompt, messages_until, steps_prompt


@node("test.pick", category="test")
def pick(ckpt: model_name("checkpoints"), image: file_input("input"), strength: float | None = None) -> str:
    """A node with a model name, an input file and an optional value, for /object_info."""
    return ckpt


def png_bytes(colour=(10, 200, 30), size=(16, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_history(client, prompt_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get(f"/history/{prompt_id}").json()
        if prompt_id in found:
            return found[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} never reached the history")


def wait_running(client, prompt_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = client.get("/queue").json()["queue_running"]
        if any(item[1] == prompt_id for item in running):
            return
        time.sleep(0.02)
    raise AssertionError(f"{prompt_id} never started")


# -- /object_info -----------------------------------------------------------------------------

def test_object_info_describes_every_node_from_its_declaration(client):
    info = client.get("/object_info").json()
    assert client.get("/api/object_info").json() == info
    assert {"draw_shape", "save_image", "add", "test.steps", "show"} <= set(info)

    draw = info["draw_shape"]
    assert draw["output"] == ["IMAGE"] and draw["output_name"] == ["image"]
    assert draw["output_is_list"] == [False]
    shape = draw["input"]["optional"]["shape"]
    assert "circle" in shape[0] and shape[1]["default"] == "circle"
    size = draw["input"]["optional"]["size"]
    assert size[0] == "INT" and size[1]["min"] == 1 and size[1]["max"] == 4096
    assert draw["input_order"]["optional"][0] == "shape"
    assert draw["category"] == "loom/image" and draw["output_node"] is False

    save = info["save_image"]
    assert save["output_node"] is True
    assert save["input"]["required"]["images"][0].split(",")[0] == "IMAGE"
    assert save["input"]["optional"]["prefix"][0] == "STRING"

    add = info["add"]["input"]["required"]
    assert add["a"][0] == "FLOAT"

    assert client.get("/object_info/draw_shape").json() == {"draw_shape": draw}
    assert client.get("/api/object_info/no_such_node").json() == {}


def test_model_and_input_file_names_are_choice_lists_read_at_each_request(tmp_path):
    from engine import Registry
    from server.comfy.object_info import ObjectInfo, list_input_images

    models = {"checkpoints": ["a.safetensors"]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "one.png").write_bytes(png_bytes())
    (tmp_path / "sub" / "two.webp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    info = ObjectInfo(Registry([pick.spec]), lambda kind: models.get(kind, []),
                      lambda: list_input_images(tmp_path))
    required = info.one("test.pick")["test.pick"]["input"]["required"]
    assert required["ckpt"][0] == ["a.safetensors"]
    assert required["image"] == [["one.png", "sub/two.webp"], {"image_upload": True}]
    # A value whose default is "nothing" is a socket: a widget would always send a number.
    assert info.one("test.pick")["test.pick"]["input"]["optional"]["strength"][0].startswith("FLOAT")
    models["checkpoints"].append("b.safetensors")
    assert info.all()["test.pick"]["input"]["required"]["ckpt"][0] == ["a.safetensors", "b.safetensors"]


def test_free_unloads_and_the_next_prompt_still_runs(comfy, client):
    assert client.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200
    assert client.post("/api/free", content=b"").status_code == 200
    pid = client.post("/prompt", json={"prompt": draw_prompt("black", prefix="after_free")}).json()["prompt_id"]
    assert wait_history(client, pid)["status"]["completed"] is True


# -- POST /prompt, the websocket, /history, /view ---------------------------------------------

def test_prompt_runs_and_the_websocket_reports_it_in_comfyui_order(comfy, client):
    workflow = {"last_node_id": 2, "nodes": [{"id": 1, "type": "draw_shape"}], "links": []}
    with connect(f"{comfy.ws_url}/ws?clientId=client-a") as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == "client-a"
        assert "queue_remaining" in first["data"]["status"]["exec_info"]
        prompt = draw_prompt("red", prefix="order")
        answer = client.post("/prompt", json={"prompt": prompt, "client_id": "client-a",
                                              "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
        pid = body["prompt_id"]
        got = messages_until(ws, pid)

    kinds = [m["type"] for m in got if m["type"] != "status"]
    assert kinds[0] == "execution_start"
    assert kinds[-3:] == ["executed", "executing", "execution_success"]
    executing = [m["data"]["node"] for m in got if m["type"] == "executing"]
    assert executing[-1] is None and set(executing[:-1]) <= {"1", "2"}
    executed = next(m["data"] for m in got if m["type"] == "executed")
    assert executed["node"] == "2" and executed["prompt_id"] == pid
    image = executed["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].startswith("order_")

    entry = wait_history(client, pid)
    assert entry["status"]["completed"] is True and entry["status"]["status_str"] == "success"
    assert entry["outputs"]["2"]["images"] == [image]
    number, item_id, item_prompt, extra, outputs = entry["prompt"]
    assert item_id == pid and item_prompt == prompt and outputs == ["2"]
    assert extra["client_id"] == "client-a"

    view = client.get("/view", params=image)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(view.content))
    assert png.size == (64, 64)
    assert png.getpixel((32, 32))[:3] == (255, 0, 0) or png.getpixel((32, 32))[0] > 200
    # Saved PNGs open in ComfyUI: the API prompt and the editor workflow ride along.
    assert json.loads(png.text["prompt"]) == prompt
    assert json.loads(png.text["workflow"]) == workflow
    assert client.get("/api/view", params=image).content == view.content


def test_a_cached_rerun_reports_execution_cached(comfy, client):
    prompt = draw_prompt("green", prefix="cached")
    with connect(f"{comfy.ws_url}/ws?clientId=cache-client") as ws:
        ws.recv(timeout=10)
        first = client.post("/prompt", json={"prompt": prompt, "client_id": "cache-client"}).json()
        messages_until(ws, first["prompt_id"])
        again = client.post("/prompt", json={"prompt": prompt, "client_id": "cache-client"}).json()
        got = messages_until(ws, again["prompt_id"])
    cached = {n for m in got if m["type"] == "execution_cached" for n in m["data"]["nodes"]}
    ran = {m["data"]["node"] for m in got if m["type"] == "executing"} - {None}
    assert cached and not cached & ran      # the drawing (or the whole save) comes from the cache
    assert any(m["type"] == "executed" and m["data"]["node"] == "2" for m in got)


def test_a_resent_prompt_id_is_the_same_prompt_not_a_second_run(client):
    body = {"prompt": draw_prompt("yellow", prefix="resent"), "prompt_id": "fixed-id-1"}
    first = client.post("/prompt", json=body).json()
    second = client.post("/prompt", json=body).json()
    assert first["prompt_id"] == second["prompt_id"] == "fixed-id-1"
    assert first["number"] == second["number"]
    clash = client.post("/prompt", json={**body, "prompt": draw_prompt("blue", prefix="other")})
    assert clash.status_code == 400 and "already used" in clash.json()["error"]["message"]


def test_events_go_to_the_submitting_client_and_to_clients_that_ask_for_all(comfy, client):
    with connect(f"{comfy.ws_url}/ws?clientId=owner") as owner, \
            connect(f"{comfy.ws_url}/ws?clientId=other") as other, \
            connect(f"{comfy.ws_url}/ws?clientId=watcher&all=true") as watcher:
        for ws in (owner, other, watcher):
            ws.recv(timeout=10)
        pid = client.post("/prompt", json={"prompt": draw_prompt("white", prefix="routed"),
                                           "client_id": "owner"}).json()["prompt_id"]
        messages_until(owner, pid)
        seen_by_watcher = messages_until(watcher, pid)
        assert any(m["type"] == "execution_start" for m in seen_by_watcher)
        # The other client only hears the queue count change.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                msg = json.loads(other.recv(timeout=0.2))
            except TimeoutError:
                continue
            assert msg["type"] == "status", msg


def test_feature_flags_are_answered_and_no_binary_frames_are_sent(comfy, client):
    with connect(f"{comfy.ws_url}/ws") as ws:
        hello = json.loads(ws.recv(timeout=10))
        sid = hello["data"]["sid"]
        assert sid
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "feature_flags"
        pid = client.post("/prompt", json={"prompt": steps_prompt(steps=5, seconds=0.01),
                                           "client_id": sid}).json()["prompt_id"]
        got = messages_until(ws, pid)
    progress = [m["data"] for m in got if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4, 5]
    assert all(p["max"] == 5 and p["node"] == "1" and p["prompt_id"] == pid for p in progress)


# -- queue, status, interrupt, jobs -------------------------------------------------------------

def test_queue_remaining_counts_the_running_prompt_and_interrupt_stops_it(comfy, client):
    with connect(f"{comfy.ws_url}/ws?clientId=int-client") as ws:
        ws.recv(timeout=10)
        pid = client.post("/prompt", json={"prompt": steps_prompt(steps=150, seconds=0.05, tag="long"),
                                           "client_id": "int-client"}).json()["prompt_id"]
        wait_running(client, pid)
        assert client.get("/prompt").json()["exec_info"]["queue_remaining"] >= 1
        queue = client.get("/queue").json()
        assert [item[1] for item in queue["queue_running"]] == [pid]
        jobs = client.get("/api/jobs", params={"status": "in_progress,pending"}).json()
        assert pid in [j["id"] for j in jobs["jobs"]]
        assert client.post("/interrupt", json={"prompt_id": pid}).status_code == 200
        got = messages_until(ws, pid)
    stopped = got[-1]
    assert stopped["type"] == "execution_interrupted" and stopped["data"]["node_id"] == "1"
    entry = wait_history(client, pid)
    assert entry["status"]["completed"] is False and entry["status"]["status_str"] == "error"
    job = client.get(f"/api/jobs/{pid}").json()
    assert job["status"] == "cancelled"


def test_queue_delete_and_clear_cancel_pending_prompts(client):
    blocker = client.post("/prompt", json={"prompt": steps_prompt(steps=150, seconds=0.05, tag="block")}).json()
    wait_running(client, blocker["prompt_id"])
    a = client.post("/prompt", json={"prompt": steps_prompt(steps=2, tag="a")}).json()["prompt_id"]
    b = client.post("/prompt", json={"prompt": steps_prompt(steps=2, tag="b")}).json()["prompt_id"]
    c = client.post("/prompt", json={"prompt": steps_prompt(steps=2, tag="c")}).json()["prompt_id"]
    pending = [item[1] for item in client.get("/queue").json()["queue_pending"]]
    assert pending == [a, b, c]
    client.post("/queue", json={"delete": [a]})
    assert [item[1] for item in client.get("/queue").json()["queue_pending"]] == [b, c]
    client.post("/api/queue", json={"clear": True})
    assert client.get("/queue").json()["queue_pending"] == []
    client.post("/api/jobs/cancel", json={"job_ids": [blocker["prompt_id"]]})
    assert wait_history(client, blocker["prompt_id"])["status"]["completed"] is False
    for pid in (a, b, c):
        assert client.get(f"/api/jobs/{pid}").json()["status"] == "cancelled"


def test_jobs_page_through_finished_prompts(client):
    ids = [client.post("/prompt", json={"prompt": steps_prompt(steps=1, tag=f"job{i}")}).json()["prompt_id"]
           for i in range(3)]
    for pid in ids:
        wait_history(client, pid)
    page = client.get("/api/jobs", params={"status": "completed", "limit": 2, "offset": 0}).json()
    assert len(page["jobs"]) == 2 and page["pagination"]["has_more"] is True
    assert page["jobs"][0]["id"] == ids[-1]
    assert all(j["status"] == "completed" and j["create_time"] > 0 for j in page["jobs"])
    assert client.get("/api/jobs", params={"status": "bogus"}).status_code == 400
    assert client.get("/api/jobs/not-a-job").status_code == 404


def test_history_lists_clears_and_deletes_without_losing_runs(client):
    pid = client.post("/prompt", json={"prompt": steps_prompt(steps=1, tag="hist")}).json()["prompt_id"]
    wait_history(client, pid)
    assert pid in client.get("/history", params={"max_items": 500}).json()
    assert len(client.get("/history", params={"max_items": 1}).json()) == 1
    client.post("/history", json={"delete": [pid]})
    assert client.get(f"/history/{pid}").json() == {}
    client.post("/api/history", json={"clear": True})
    assert client.get("/history").json() == {}
    # The run itself stays in the durable store.
    assert client.get(f"/api/jobs/{pid}").json()["status"] == "completed"


# -- errors ---------------------------------------------------------------------------------

def test_unknown_class_types_are_all_listed_at_once(client):
    prompt = {**draw_prompt(), "3": {"class_type": "KSamplerr", "inputs": {}},
              "4": {"class_type": "Nope", "inputs": {}}}
    answer = client.post("/prompt", json={"prompt": prompt})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_prompt"
    assert error["message"].startswith("Cannot execute because node")
    assert "#3" in error["details"] and "#4" in error["details"]


def test_invalid_inputs_come_back_under_their_node_ids(client):
    prompt = draw_prompt()
    prompt["1"]["inputs"]["size"] = 0
    prompt["1"]["inputs"]["colour"] = "not-a-colour"
    prompt["3"] = {"class_type": "save_image", "inputs": {"prefix": "x"}}
    answer = client.post("/api/prompt", json={"prompt": prompt})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    node1 = body["node_errors"]["1"]
    assert node1["class_type"] == "draw_shape"
    assert {e["extra_info"]["input_name"] for e in node1["errors"]} == {"size", "colour"}
    assert node1["dependent_outputs"] == ["2"]
    node3 = body["node_errors"]["3"]
    assert node3["errors"][0]["type"] == "required_input_missing"
    assert node3["errors"][0]["extra_info"]["input_name"] == "images"


@pytest.mark.parametrize("body", [
    {"prompt": {}},
    {"prompt": "not a prompt"},
    {"prompt": {"1": {"inputs": {}}}},
    {"prompt": {"1": {"class_type": "save_image", "inputs": {"images": ["9", 0]}}}},
    {"prompt": {"1": {"class_type": "draw_shape", "inputs": {}},
                "2": {"class_type": "save_image", "inputs": {"images": ["1", 5]}}}},
])
def test_malformed_prompts_get_a_400_in_comfyui_shape(client, body):
    answer = client.post("/prompt", json=body)
    assert answer.status_code == 400
    assert {"type", "message", "details", "extra_info"} <= set(answer.json()["error"])
    assert "node_errors" in answer.json()


def test_a_failing_node_is_an_execution_error_with_its_id(comfy, client):
    prompt = {"1": {"class_type": "test.fail", "inputs": {"message": "kaput"}},
              "2": {"class_type": "show", "inputs": {"value": ["1", 0]}}}
    with connect(f"{comfy.ws_url}/ws?clientId=fail-client") as ws:
        ws.recv(timeout=10)
        pid = client.post("/prompt", json={"prompt": prompt, "client_id": "fail-client"}).json()["prompt_id"]
        got = messages_until(ws, pid)
    error = got[-1]
    assert error["type"] == "execution_error"
    assert error["data"]["node_id"] == "1" and error["data"]["node_type"] == "test.fail"
    assert "kaput" in error["data"]["exception_message"]
    assert wait_history(client, pid)["status"]["status_str"] == "error"


# -- uploads and files -------------------------------------------------------------------------

def test_uploaded_images_are_checked_and_viewable(client):
    answer = client.post("/upload/image", files={"image": ("mine.png", png_bytes(), "image/png")},
                         data={"type": "input", "overwrite": "true"})
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert stored["type"] == "input" and stored["subfolder"] == ""
    view = client.get("/view", params={"filename": stored["name"], "type": "input"})
    assert view.status_code == 200 and Image.open(io.BytesIO(view.content)).size == (16, 16)
    # Choice lists for input files offer it.
    assert client.post("/api/upload/image", files={"image": ("x.png", b"not an image", "image/png")}
                       ).status_code == 415


def test_a_mask_upload_becomes_the_alpha_of_its_image(client):
    original = client.post("/upload/image", files={"image": ("o.png", png_bytes((200, 0, 0)), "image/png")}).json()
    mask = png_bytes((0, 0, 0, 0), mode="RGBA")
    answer = client.post("/upload/mask", files={"image": ("m.png", mask, "image/png")},
                         data={"original_ref": json.dumps({"filename": original["name"], "type": "input"})})
    assert answer.status_code == 200, answer.text
    masked = client.get("/view", params={"filename": answer.json()["name"], "type": "input"})
    pixel = Image.open(io.BytesIO(masked.content)).convert("RGBA").getpixel((3, 3))
    assert pixel == (200, 0, 0, 0)


@pytest.mark.parametrize("params", [
    {"filename": "../loom.sqlite3", "type": "output"},
    {"filename": "loom.sqlite3", "subfolder": "..", "type": "output"},
    {"filename": "/etc/passwd", "type": "input"},
    {"filename": "..%2Floom.sqlite3", "type": "output"},
    {"filename": "x\\..\\..\\loom.sqlite3", "type": "output"},
    {"filename": "passwd", "subfolder": "/etc", "type": "input"},
    {"filename": "loom.sqlite3", "type": "../.."},
])
def test_view_never_leaves_its_folders(client, params):
    answer = client.get("/view", params=params)
    assert answer.status_code in (400, 404)
    assert b"SQLite" not in answer.content and b"root:" not in answer.content


# -- settings and userdata (saved workflows) ---------------------------------------------------

def test_settings_are_stored_per_data_folder(client):
    settings = client.get("/api/settings").json()
    assert settings["Comfy.TutorialCompleted"] is True
    assert client.post("/api/settings/Comfy.LinkRenderMode", json=2).status_code == 200
    client.post("/api/settings", json={"Loom.Test": "yes"})
    settings = client.get("/api/settings").json()
    assert settings["Comfy.LinkRenderMode"] == 2 and settings["Loom.Test"] == "yes"
    assert client.get("/api/settings/Loom.Test").json() == "yes"


def test_workflows_save_list_open_move_and_delete(client):
    workflow = json.dumps({"nodes": [], "links": [], "version": 0.4}).encode()
    saved = client.post("/api/userdata/workflows%2Fmine.json", content=workflow,
                        params={"overwrite": "false", "full_info": "true"})
    assert saved.status_code == 200, saved.text
    assert saved.json()["path"] == "workflows/mine.json" and saved.json()["size"] == len(workflow)
    assert client.post("/api/userdata/workflows%2Fmine.json", content=workflow,
                       params={"overwrite": "false"}).status_code == 409
    listed = client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                 "full_info": "true", "split": "false"}).json()
    assert [f["path"] for f in listed] == ["mine.json"]
    assert client.get("/api/userdata/workflows%2Fmine.json").content == workflow
    moved = client.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Frenamed.json")
    assert moved.status_code == 200
    assert client.get("/api/userdata", params={"dir": "workflows"}).json() == ["renamed.json"]
    assert client.delete("/api/userdata/workflows%2Frenamed.json").status_code == 204
    assert client.get("/api/userdata/workflows%2Frenamed.json").status_code == 404
    assert client.get("/api/userdata", params={"dir": "nothing-here"}).status_code == 404


@pytest.mark.parametrize("name", ["..%2F..%2Floom.sqlite3", "%2Fetc%2Fpasswd", "..%2Fsettings.json",
                                  "a%5C..%5C..%5Cx"])
def test_userdata_never_leaves_its_folder(comfy, client, name):
    assert client.get(f"/api/userdata/{name}").status_code in (400, 404)
    assert client.post(f"/api/userdata/{name}", content=b"{}").status_code in (400, 404)
    assert client.delete(f"/api/userdata/{name}").status_code in (400, 404)
    assert client.get("/api/userdata", params={"dir": "../.."}).status_code in (400, 404)
    assert (comfy.data_dir / "loom.sqlite3").read_bytes()[:6] == b"SQLite"


# -- what the editor needs to start ------------------------------------------------------------

def test_the_editor_bookkeeping_endpoints_answer_in_shape(client):
    stats = client.get("/api/system_stats").json()
    assert isinstance(stats["system"]["argv"], list) and "required_frontend_version" in stats["system"]
    assert stats["devices"][0]["type"] == "cpu"
    assert isinstance(client.get("/api/extensions").json(), list)
    assert client.get("/api/users").json()["storage"] == "server"
    assert client.get("/api/i18n").json() == {}
    features = client.get("/api/features").json()
    assert features["supports_preview_metadata"] is False and features["max_upload_size"] > 0
    assert client.get("/api/prompt").json()["exec_info"]["queue_remaining"] >= 0
    assert client.get("/api/global_subgraphs").json() == {}
    assert client.get("/api/experiment/models").json() == []


def test_the_default_workflow_needs_the_node_types_it_uses(client):
    # This server loads no model nodes, so the editor keeps its own default graph.
    answer = client.get("/api/loom/default_workflow")
    assert answer.status_code == 404 and "load_checkpoint" in answer.json()["message"]


def test_a_loom_graph_is_drawn_as_an_editor_workflow(client):
    graph = {"loom": 1, "nodes": {"d": {"type": "draw_shape", "inputs": {"colour": "green"}},
                                  "s": {"type": "save_image", "inputs": {"images": ["d", "image"]}}}}
    workflow = client.post("/api/loom/workflow", json=graph).json()
    assert [n["type"] for n in workflow["nodes"]] == ["draw_shape", "save_image"]
    assert workflow["links"] == [[1, 1, 0, 2, 0, "IMAGE"]]
    assert "green" in workflow["nodes"][0]["widgets_values"]
    assert client.post("/api/loom/workflow", json={"nodes": 5}).status_code == 400
    assert client.post("/api/loom/workflow", content=b"not json").status_code == 400
    unknown = {"loom": 1, "nodes": {"x": {"type": "load_checkpoint", "inputs": {"name": "m"}}}}
    assert client.post("/api/loom/workflow", json=unknown).status_code == 404


def test_the_default_workflow_lines_up_with_object_info():
    from engine import Registry
    from server.comfy.object_info import ObjectInfo
    from server.comfy.workflow import ui_workflow

    graph = json.loads((Path(__file__).resolve().parents[2] / "graphs" / "txt2img.json").read_text())
    info = ObjectInfo(Registry.default(), lambda kind: ["shapes-tiny"], lambda: []).all()
    workflow = ui_workflow(graph, info)
    nodes = {n["type"]: n for n in workflow["nodes"]}
    sample = nodes["sample"]
    assert sample["widgets_values"][:4] == [0, "fixed", 20, 4.0]     # seed, its control value, steps, cfg
    assert [i["name"] for i in sample["inputs"] if i["link"] is not None] == ["model", "positive", "latent", "negative"]
    for link_id, src, slot, dst, dst_slot, kind in workflow["links"]:
        source = workflow["nodes"][src - 1]
        assert source["outputs"][slot]["type"] == kind and link_id in source["outputs"][slot]["links"]
        assert workflow["nodes"][dst - 1]["inputs"][dst_slot]["link"] == link_id
    assert nodes["save_image"]["widgets_values"] == ["txt2img", True]


def test_the_editor_page_has_its_own_narrow_content_security_policy(client):
    from server.comfy.editor import editor_root

    page = client.get("/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy
    if editor_root() is None:
        assert "comfyui-frontend-package" in page.text and "GPL-3.0" in page.text
    else:
        assert "connect-src 'self'" in policy
        assert client.get("/loom/editor.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/scripts/app.js").status_code == 200
        assert client.get("/../pyproject.toml").status_code == 404
    assert client.get("/api/extensions").json() == (["/loom/editor.js"] if editor_root() else [])


def test_routes_are_outside_the_v1_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/prompt" not in paths and "/api/prompt" not in paths and "/v1/runs" in paths


def test_v1_runs_show_in_comfyui_history_under_their_run_id(client):
    graph = {"loom": 1, "nodes": {"a": {"type": "int", "inputs": {"value": 2}},
                                  "s": {"type": "show", "inputs": {"value": ["a", "value"]}}}}
    run = client.post("/v1/runs", params={"wait": "true"}, json={"graph": graph}).json()
    entry = wait_history(client, run["id"])
    assert entry["status"]["completed"] is True and entry["prompt"][2] == graph


def test_a_token_server_needs_the_token_on_every_comfyui_route(start_comfy):
    from loom_server_testing import TOKEN

    server = start_comfy(token=TOKEN)
    bare = httpx.Client(base_url=server.url, timeout=10)
    for path in ("/prompt", "/api/object_info", "/history", "/view?filename=x", "/api/settings", "/"):
        assert bare.get(path).status_code == 401, path
    assert bare.post("/prompt", json={"prompt": draw_prompt()}).status_code == 401
    with pytest.raises(Exception):
        with connect(f"{server.ws_url}/ws?clientId=x") as ws:
            ws.recv(timeout=5)
    with server.client() as authed:
        assert authed.get("/api/object_info/draw_shape").status_code == 200
    # The editor signs in once: a wrong token is refused, the right one sets an HttpOnly cookie.
    assert bare.get("/login").status_code == 200
    assert bare.post("/login", data={"token": "wrong-token-0123456789"}).status_code == 401
    signed = bare.post("/login", data={"token": TOKEN})
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert bare.get("/api/object_info/draw_shape").status_code == 200   # the cookie jar carries it
    with connect(f"{server.ws_url}/ws?clientId=c",
                 additional_headers={"Cookie": f"loom_token={TOKEN}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Host": "evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_cross_origin_and_rebinding_are_refused_on_comfyui_routes(comfy, client, headers):
    assert client.post("/prompt", json={"prompt": draw_prompt()}, headers=headers).status_code == 403
    assert client.get("/api/object_info", headers=headers).status_code == 403
    assert client.post("/api/userdata/workflows%2Fx.json", content=b"{}", headers=headers).status_code == 403
    with pytest.raises(Exception):
        with connect(f"{comfy.ws_url}/ws", additional_headers=headers) as ws:
            ws.recv(timeout=5)


def test_uploads_over_the_limit_are_refused(start_comfy):
    server = start_comfy("--max-upload-mb", "0.01")
    with server.client() as c:
        big = png_bytes(size=(400, 400)) + b"\0" * 20000
        assert c.post("/upload/image", files={"image": ("big.png", big, "image/png")}).status_code == 413


def test_queue_and_history_survive_kill_9(start_comfy, tmp_path):
    server = start_comfy()
    with server.client() as c:
        done = c.post("/prompt", json={"prompt": draw_prompt("red", prefix="durable")}).json()["prompt_id"]
        wait_history(c, done)
        blocker = c.post("/prompt", json={"prompt": steps_prompt(steps=100, seconds=0.05, tag="k")}).json()["prompt_id"]
        wait_running(c, blocker)
        waiting = c.post("/prompt", json={"prompt": steps_prompt(steps=1, tag="after")}).json()["prompt_id"]
    server.kill()
    server.start()
    with server.client() as c:
        assert c.get(f"/history/{done}").json()[done]["status"]["completed"] is True
        # The interrupted prompt is re-queued, the waiting one is still there; both finish.
        assert wait_history(c, waiting, timeout=60)["status"]["completed"] is True
        assert c.get(f"/api/jobs/{blocker}").json()["status"] in ("in_progress", "pending", "completed")
