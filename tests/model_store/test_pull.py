"""`loom models pull` against a loopback hub and file server: selection, resume, checks."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from engine.cli import main
from engine.model_inventory import read_records
from engine.model_pull import PullError, pull

from .fake_hub import COMMIT, FakeHub

SHAPES = Path(__file__).resolve().parents[2] / "models" / "checkpoints" / "shapes-tiny"
UNET = "unet/diffusion_pytorch_model.safetensors"


def shapes_repo() -> dict[str, bytes]:
    """The shipped shapes-tiny pipeline as a hub repository, with the duplicates real
    repositories carry: fp16 variants, pickled copies, a flax export, a top-level single file."""
    files = {str(p.relative_to(SHAPES)): p.read_bytes() for p in SHAPES.rglob("*") if p.is_file()}
    unet = files[UNET]
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = unet
    files["unet/diffusion_pytorch_model.bin"] = pickle.dumps({"not": "loaded"})
    files["unet/diffusion_flax_model.msgpack"] = b"\x80flax"
    files["shapes-tiny.safetensors"] = unet
    return files


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as server:
        server.repos["loom-test/shapes-tiny"] = shapes_repo()
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


@pytest.fixture(autouse=True)
def _hub_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def test_repo_pull_fetches_one_copy_of_each_weight_and_records_it(hub, tmp_path):
    pulled = pull("loom-test/shapes-tiny", tmp_path)
    assert pulled.kind == "checkpoints" and pulled.path == tmp_path / "checkpoints" / "shapes-tiny"
    got = sorted(str(p.relative_to(pulled.path)) for p in pulled.path.rglob("*") if p.is_file())
    expected = sorted(str(p.relative_to(SHAPES)) for p in SHAPES.rglob("*") if p.is_file())
    assert got == expected          # no .bin, no fp16 copy, no flax, no top-level single file
    assert (pulled.path / UNET).read_bytes() == (SHAPES / UNET).read_bytes()
    record = read_records(tmp_path / "checkpoints")["shapes-tiny"]
    assert record["source"].startswith("hf://loom-test/shapes-tiny@")
    assert record["files"][UNET]["sha256"] == hashlib.sha256((SHAPES / UNET).read_bytes()).hexdigest()
    assert not any(p.name.startswith(".pull-") for p in (tmp_path / "checkpoints").iterdir())

    from diffusers import StableDiffusionPipeline
    StableDiffusionPipeline.from_pretrained(pulled.path, local_files_only=True)

    before = len(hub.requests)
    again = pull("loom-test/shapes-tiny", tmp_path)
    assert again.already_installed
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]]   # nothing re-fetched


def test_variant_selects_the_variant_weights(hub, tmp_path):
    hub.repos["loom-test/shapes-tiny"]["unet/diffusion_pytorch_model.fp16.safetensors"] = (
        hub.repos["loom-test/shapes-tiny"][UNET])
    pulled = pull("loom-test/shapes-tiny@main", tmp_path, variant="fp16")
    unet_files = sorted(p.name for p in (pulled.path / "unet").iterdir())
    assert unet_files == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    # components without an fp16 file fall back to their only weights
    assert (pulled.path / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_interrupted_transfer_resumes_from_the_bytes_received(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)  # real files span many chunks
    size = len(hub.repos["loom-test/shapes-tiny"][UNET])
    hub.drop_after[f"/loom-test/shapes-tiny/resolve/{COMMIT}/{UNET}"] = [size // 2]
    pulled = pull("loom-test/shapes-tiny", tmp_path)
    assert (pulled.path / UNET).read_bytes() == (SHAPES / UNET).read_bytes()
    first, second = hub.gets(UNET)
    assert first is None and 0 < int(second[len("bytes="):].rstrip("-")) <= size // 2


def test_pull_killed_part_way_keeps_finished_files_and_installs_nothing_half_done(
        hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    # one chunk arrives, then the connection keeps dropping until the hub's retries give up
    hub.drop_after[f"/loom-test/shapes-tiny/resolve/{COMMIT}/{UNET}"] = [3 << 19] + [1000] * 10
    with pytest.raises(PullError, match="run the same command again"):
        pull("loom-test/shapes-tiny", tmp_path)
    assert not (tmp_path / "checkpoints" / "shapes-tiny").exists()
    assert "shapes-tiny" not in read_records(tmp_path / "checkpoints")
    hub.drop_after.clear()
    pulled = pull("loom-test/shapes-tiny", tmp_path)
    assert (pulled.path / UNET).read_bytes() == (SHAPES / UNET).read_bytes()
    for finished in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert len(hub.gets(finished)) == 1, f"{finished} was fetched again"


def test_pickled_only_weights_are_refused_unless_allowed(hub, tmp_path):
    hub.repos["loom-test/pickled"] = {"config.json": b'{"_class_name": "ControlNetModel"}',
                                      "diffusion_pytorch_model.bin": pickle.dumps({"a": 1})}
    with pytest.raises(PullError, match="pickled"):
        pull("loom-test/pickled", tmp_path)
    pulled = pull("loom-test/pickled", tmp_path, allow_pickle=True)
    assert pulled.kind == "controlnet"
    assert (pulled.path / "diffusion_pytorch_model.bin").is_file()


def test_unknown_repository_is_a_clear_error(hub, tmp_path):
    with pytest.raises(PullError, match="loom-test/missing"):
        pull("loom-test/missing", tmp_path)


def test_offline_mode_refuses_before_any_request(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LOOM_HUB_GUARD", raising=False)
    with pytest.raises(PullError, match="offline"):
        pull("loom-test/shapes-tiny", tmp_path)
    assert hub.requests == []


# -- single files by URL ------------------------------------------------------------------

def _lora_bytes() -> bytes:
    return (SHAPES / UNET).read_bytes()


def test_url_pull_checks_the_given_sha256(hub, tmp_path):
    data = _lora_bytes()
    hub.files["tiny-lora.safetensors"] = data
    url = f"{hub.url}/files/tiny-lora.safetensors"
    with pytest.raises(PullError, match="does not match"):
        pull(url, tmp_path, kind="loras", sha256="0" * 64)
    assert not (tmp_path / "loras" / "tiny-lora.safetensors").exists()
    assert not list((tmp_path / "loras").glob(".*.part"))
    pulled = pull(url, tmp_path, kind="loras", sha256=hashlib.sha256(data).hexdigest())
    assert pulled.path.read_bytes() == data
    again = pull(url, tmp_path, kind="loras", sha256=hashlib.sha256(data).hexdigest())
    assert again.already_installed


def test_url_pull_uses_the_published_digest_and_resumes(hub, tmp_path):
    data = _lora_bytes()
    hub.files["model.safetensors"] = data
    hub.publish_digest["model.safetensors"] = data
    hub.drop_after["/files/model.safetensors"] = [len(data) // 2]
    pulled = pull(f"{hub.url}/files/model.safetensors", tmp_path)
    assert pulled.path.read_bytes() == data and pulled.kind == "checkpoints"
    ranges = hub.gets("/files/model.safetensors")
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"

    hub.files["corrupt.safetensors"] = data[:-1] + bytes([data[-1] ^ 1])
    hub.publish_digest["corrupt.safetensors"] = data
    with pytest.raises(PullError, match="published by the server"):
        pull(f"{hub.url}/files/corrupt.safetensors", tmp_path)
    assert not (tmp_path / "checkpoints" / "corrupt.safetensors").exists()


def test_truncated_safetensors_is_not_installed(hub, tmp_path):
    data = _lora_bytes()
    hub.files["cut.safetensors"] = data[: len(data) // 2]
    with pytest.raises(PullError, match="truncated"):
        pull(f"{hub.url}/files/cut.safetensors", tmp_path, kind="loras")
    assert not (tmp_path / "loras" / "cut.safetensors").exists()


def test_pickle_by_url_is_refused_unless_allowed(hub, tmp_path):
    hub.files["model.ckpt"] = pickle.dumps({"state_dict": {}})
    with pytest.raises(PullError, match="pickled"):
        pull(f"{hub.url}/files/model.ckpt", tmp_path)
    assert not (tmp_path / "checkpoints" / "model.ckpt").exists()
    assert pull(f"{hub.url}/files/model.ckpt", tmp_path, allow_pickle=True).path.is_file()


def test_cli_pull_list_verify_rm(hub, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    data = _lora_bytes()
    hub.files["style.safetensors"] = data
    folder = ["--models-dir", str(models)]
    assert main(["models", "pull", f"{hub.url}/files/style.safetensors", "--kind", "loras",
                 *folder]) == 0
    assert main(["models", "pull", "loom-test/shapes-tiny", *folder]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json", *folder]) == 0
    listed = {(e["kind"], e["name"]): e for e in json.loads(capsys.readouterr().out)}
    lora = listed[("loras", "style.safetensors")]
    assert lora["sha256"] == hashlib.sha256(data).hexdigest() and lora["size"] == len(data)
    assert lora["format"] == "safetensors"
    assert listed[("checkpoints", "shapes-tiny")]["format"] == "diffusers"
    assert listed[("checkpoints", "shapes-tiny")]["family"] == "sd1"

    assert main(["models", "verify", *folder]) == 0
    target = models / "loras" / "style.safetensors"
    target.write_bytes(data[: len(data) - 100])
    capsys.readouterr()
    assert main(["models", "verify", "style", *folder]) == 1
    assert "truncated" in capsys.readouterr().out

    assert main(["models", "rm", "loras/style.safetensors", "--yes", *folder]) == 0
    assert not target.exists()
    assert "style.safetensors" not in read_records(models / "loras")


def test_pull_command_comes_from_a_nodes_model_list_or_repo():
    from engine.model_pull import pull_command

    comfy = {"models": [{"name": "v1-5-pruned-emaonly.safetensors", "directory": "checkpoints",
                         "url": "https://example.org/v1-5-pruned-emaonly.safetensors"}]}
    assert pull_command(comfy, "v1-5-pruned-emaonly", "checkpoints") == (
        "loom models pull https://example.org/v1-5-pruned-emaonly.safetensors --kind checkpoints")
    assert pull_command(comfy, "other.safetensors", "checkpoints") is None
    assert pull_command({"repo": "owner/sdxl-turbo"}, "sdxl-turbo", "checkpoints") == (
        "loom models pull owner/sdxl-turbo --kind checkpoints")
    assert pull_command({"repo": "not a repo"}, "x", "checkpoints") is None
    assert pull_command(None, "x", "checkpoints") is None


def test_validation_names_the_pull_command_for_a_missing_model(tmp_path, capsys):
    graph = {"loom": 1, "nodes": {
        "ckpt": {"type": "load_checkpoint", "inputs": {"name": "sdxl-turbo"},
                 "meta": {"repo": "stabilityai/sdxl-turbo"}},
        "dec": {"type": "save_image", "inputs": {"images": ["ckpt", "vae"]}}}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(graph))
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    assert main(["validate", str(path), "--models-dir", str(models)]) == 2
    assert "loom models pull stabilityai/sdxl-turbo --kind checkpoints" in capsys.readouterr().err


def test_list_and_verify_the_shipped_models_and_a_corrupted_copy(tmp_path, capsys):
    shipped = Path(__file__).resolve().parents[2] / "models"
    assert main(["models", "list", "--json", "--models-dir", str(shipped)]) == 0
    listed = {(e["kind"], e["name"]): e for e in json.loads(capsys.readouterr().out)}
    assert listed[("checkpoints", "shapes-tiny")]["family"] == "sd1"
    assert listed[("checkpoints", "sdxl-tiny-base")]["family"] == "sdxl"
    assert listed[("checkpoints", "shapes-tiny")]["format"] == "diffusers"
    assert listed[("checkpoints", "shapes-tiny")]["size"] > 1 << 20
    assert main(["models", "verify", "--models-dir", str(shipped)]) == 0

    import shutil
    copy = tmp_path / "models" / "checkpoints" / "shapes-tiny"
    shutil.copytree(SHAPES, copy)
    unet = copy / UNET
    unet.write_bytes(unet.read_bytes()[:-4096])
    capsys.readouterr()
    assert main(["models", "verify", "shapes-tiny", "--models-dir", str(tmp_path / "models")]) == 1
    report = capsys.readouterr().out
    assert "truncated" in report and "diffusion_pytorch_model.safetensors" in report


def test_a_comfy_ui_workflow_names_the_download_of_its_missing_checkpoint(tmp_path, capsys):
    workflows = Path(__file__).resolve().parents[1] / "comfy" / "workflows"
    workflow = json.loads((workflows / "txt2img.ui.json").read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"] = ["v1-5-pruned-emaonly.safetensors"]
    loader["properties"]["models"] = [{
        "name": "v1-5-pruned-emaonly.safetensors", "directory": "checkpoints",
        "url": "https://example.org/v1-5-pruned-emaonly.safetensors"}]
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    shipped = Path(__file__).resolve().parents[2] / "models"
    assert main(["validate", str(path), "--models-dir", str(shipped)]) == 2
    message = capsys.readouterr().err
    assert "v1-5-pruned-emaonly" in message
    assert ("loom models pull https://example.org/v1-5-pruned-emaonly.safetensors "
            "--kind checkpoints") in message
