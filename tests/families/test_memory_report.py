"""Memory reported per model: the model manager knows each loaded model's name, kind, devices,
dtypes, quantization or upcast and bytes, and users see it in `loom run` (--models, --json) and
at GET /v1/models/loaded. A GGUF transformer reports its quantized size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_ctx(settings):
    """A Context with a model manager of its own, so the report holds only this test's loads."""
    from engine import CancelToken, Context, Graph
    from engine.models import ModelManager, ModelPaths

    return Context(node_id="test", node_type="test", run_id="test", settings=settings,
                   models=ModelManager(ModelPaths(settings.models_dirs)), graph=Graph(), params={},
                   cancel_token=CancelToken(), publish=lambda event: None)


def _param_bytes(*modules) -> int:
    storages = {}
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_each_loaded_model_is_reported(fresh_ctx, models_dir):
    from safetensors.torch import load_file, save_file

    from nodes.component_loaders import load_denoiser, load_text_encoders, load_vae
    from nodes.loaders import load_checkpoint_handles

    texts = models_dir / "text_encoders"
    state = load_file(str(texts / "tiny-flux-t5xxl.safetensors"))
    save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()},
              str(texts / "tiny-flux-t5xxl-report-fp8.safetensors"))
    full = load_denoiser(fresh_ctx, "tiny-flux.safetensors", config="tiny-flux")
    quantized = load_denoiser(fresh_ctx, "tiny-flux-Q8_0.gguf", config="tiny-flux")
    te = load_text_encoders(fresh_ctx, family="flux", clip_l="tiny-flux-clip_l.safetensors",
                            t5xxl="tiny-flux-t5xxl-report-fp8.safetensors", config="tiny-flux")
    vae = load_vae(fresh_ctx, "tiny-flux-ae.safetensors", config="tiny-flux")
    checkpoint = load_checkpoint_handles(fresh_ctx, "tiny-sd3")

    report = {m.name: m for m in fresh_ctx.models.loaded()}
    assert list(report) == ["tiny-flux.safetensors", "tiny-flux-Q8_0.gguf", "tiny-flux-clip_l.safetensors",
                            "tiny-flux-t5xxl-report-fp8.safetensors", "tiny-flux-ae.safetensors", "tiny-sd3"]
    dit, gguf = report["tiny-flux.safetensors"], report["tiny-flux-Q8_0.gguf"]
    assert (dit.kind, gguf.kind) == ("diffusion_model", "diffusion_model")
    assert dit.devices == {"cpu": _param_bytes(full.unet)} and dit.dtypes == {"float32": dit.bytes}
    assert dit.details == {}

    fp16_bytes = sum(p.numel() for p in full.unet.parameters()) * 2
    assert gguf.details == {"quantization": "GGUF Q8_0"}
    assert gguf.bytes == _param_bytes(quantized.unet) < fp16_bytes, "the quantized size, not the fp16 one"
    assert gguf.dtypes["uint8"] > gguf.bytes / 2        # most of it packed Q8_0 blocks

    t5 = report["tiny-flux-t5xxl-report-fp8.safetensors"]
    assert t5.kind == "text_encoder (t5xxl)" and t5.details == {"upcast": "F8_E4M3 -> float32"}
    assert t5.bytes == _param_bytes(te.encoders[1])
    assert report["tiny-flux-clip_l.safetensors"].kind == "text_encoder (clip_l)"
    assert report["tiny-flux-ae.safetensors"].kind == "vae"
    assert report["tiny-flux-ae.safetensors"].bytes == _param_bytes(vae.vae)

    ckpt = report["tiny-sd3"]
    assert ckpt.kind == "checkpoint"
    assert ckpt.details == {"family": "sd3", "parts": "denoiser, clip_l, clip_g, t5xxl, vae"}
    model, text, autoencoder = checkpoint
    assert ckpt.bytes == _param_bytes(model.unet, autoencoder.vae, *text.encoders)
    assert json.loads(json.dumps(ckpt.to_dict()))["bytes"] == ckpt.bytes


def test_an_unloaded_model_leaves_the_report(models_dir, settings):
    from engine import CancelToken, Context, Graph
    from engine.models import ModelManager, ModelPaths
    from nodes.component_loaders import load_vae

    manager = ModelManager(ModelPaths([models_dir]), budget_bytes=1)   # room for one model at a time
    ctx = Context(node_id="t", node_type="t", run_id="t", settings=settings, models=manager, graph=Graph(),
                  params={}, cancel_token=CancelToken(), publish=lambda event: None)
    load_vae(ctx, "tiny-flux-ae.safetensors", config="tiny-flux")
    load_vae(ctx, "tiny-sd3-ae.safetensors", config="tiny-sd3")
    assert [m.name for m in manager.loaded()] == ["tiny-sd3-ae.safetensors"]


def test_loom_run_reports_the_models_it_loaded(capsys, tmp_path):
    from engine.cli import main

    graph = str(ROOT / "graphs" / "flux.json")
    args = ["run", graph, "--models-dir", str(ROOT / "models"), "--set", "steps=1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kinds = {m["name"]: m["kind"] for m in report["models"]}
    assert kinds == {"flux-tiny": "diffusion_model", "flux-tiny-clip_l": "text_encoder (clip_l)",
                     "flux-tiny-t5xxl": "text_encoder (t5xxl)", "flux-tiny-ae": "vae"}
    assert all(m["bytes"] > 0 and m["devices"] == {"cpu": m["bytes"]} for m in report["models"])

    assert main([*args, "--no-cache", "--models", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "models in memory: 4" in err
    assert "flux-tiny-t5xxl" in err and "text_encoder (t5xxl)" in err and "MiB" in err


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_the_server_lists_loaded_models_under_its_token(tmp_path, token):
    from fastapi.testclient import TestClient

    from engine import Registry, Settings
    from server.config import ServerConfig
    from server.main import build

    settings = Settings(output_dir=tmp_path / "out", input_dir=tmp_path / "in", models_dirs=[])
    server = build(ServerConfig(data_dir=tmp_path / "data", token=token), settings, Registry())
    server.executor.models.get(("upscale", "abc"), lambda: torch.nn.Linear(8, 8), name="2x.safetensors",
                               kind="upscale_model", describe=lambda m: {"upcast": "F8_E4M3 -> float32"})
    try:
        with TestClient(server.app, base_url="http://127.0.0.1:8188") as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if token:
                assert client.get("/v1/models/loaded").status_code == 401
            response = client.get("/v1/models/loaded", headers=headers)
    finally:
        server.store.close()
    assert response.status_code == 200
    assert response.json() == {"bytes": 288, "models": [
        {"name": "2x.safetensors", "kind": "upscale_model", "bytes": 288, "devices": {"cpu": 288},
         "dtypes": {"float32": 288}, "details": {"upcast": "F8_E4M3 -> float32"}}]}
