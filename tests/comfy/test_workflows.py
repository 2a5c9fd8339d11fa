"""ComfyUI workflows run as they are: every file in workflows/ converts to its golden Loom graph,
validates, and runs on the shipped models; the compat nodes give the same pixels as the
hand-written Loom graph; the cache and `loom explain` work in ComfyUI's node ids."""
from __future__ import annotations

import json
import os

import pytest

from engine import Executor, GraphError
from engine.documents import Document, read_document
from nodes.comfy import SAMPLERS

from .conftest import GOLDEN, WORKFLOWS

# torchsde's Brownian tree notices float32 rounding at shapes-tiny's largest sigma (harmless)
# and diffusers' schedulers hand numpy arrays to torch in a way numpy 2 deprecates
pytestmark = [pytest.mark.filterwarnings("ignore:Should have t:UserWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]

WORKFLOW_FILES = sorted(p.name for p in WORKFLOWS.glob("*.json"))
UI_TWINS = sorted(n for n in WORKFLOW_FILES if n.endswith(".ui.json")
                  and (WORKFLOWS / n.replace(".ui.", ".api.")).is_file())
# each UI file is shown to give its API twin's graph, so the API files (and the UI file with
# every editor quirk) are the ones run
RUN_FILES = sorted(n for n in WORKFLOW_FILES if n.endswith(".api.json")) + ["txt2img.ui.json"]


def read(name: str, registry):
    path = WORKFLOWS / name
    return read_document(Document(path.read_bytes(), source=name), registry, name=name)


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_converts_to_its_golden_graph(name, registry):
    graph, fmt = read(name, registry)
    assert fmt == ("comfy-ui" if ".ui." in name else "comfy-api")
    golden = GOLDEN / name.replace(".json", ".loom.json")
    if os.environ.get("LOOM_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(graph.to_dict(), indent=1) + "\n")
    assert graph.to_dict() == json.loads(golden.read_text())


@pytest.mark.parametrize("name", RUN_FILES)
def test_workflow_validates_and_runs_on_the_shipped_models(name, registry, executor):
    import numpy as np
    from PIL import Image

    graph, _ = read(name, registry)
    result = executor.run(graph)
    files = [f for outputs in result.outputs.values() for f in outputs["files"]]
    assert files
    for file in files:
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32)
        assert pixels.shape[0] >= 64 and pixels.std() > 1.0, f"{file} is blank"


def test_ui_format_follows_the_editors_rules(registry):
    """Positional widgets with the seed's control value skipped, a PrimitiveNode feeding the
    seed, a Reroute, a bypassed LoRA (its MODEL/CLIP inputs pass through), a muted save and a
    Note: the same graph as the API-format twin."""
    ui, _ = read("txt2img.ui.json", registry)
    api, _ = read("txt2img.api.json", registry)
    assert set(ui.nodes) == {"3", "4", "5", "6", "7", "8", "9"}
    assert {n: (e.type, e.inputs) for n, e in ui.nodes.items()} == \
           {n: (e.type, e.inputs) for n, e in api.nodes.items()}
    assert ui.nodes["3"].inputs["seed"] == 0          # from the PrimitiveNode, not the stale 123456


@pytest.mark.parametrize("name", UI_TWINS)
def test_ui_file_gives_the_graph_of_its_api_twin(name, registry):
    """Widgets in class-type order with the seeds' control values skipped, LoadImage's upload
    value ignored, links through Reroutes: the editor's save and its queued prompt agree."""
    ui, _ = read(name, registry)
    api, _ = read(name.replace(".ui.", ".api."), registry)
    assert {n: (e.type, e.inputs) for n, e in ui.nodes.items()} == \
           {n: (e.type, e.inputs) for n, e in api.nodes.items()}


def test_widget_values_saved_by_name_are_read_by_name(registry):
    from nodes.comfy import ui_to_api

    workflow = {"nodes": [{"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "outputs": [],
                           "widgets_values": {"height": 96, "width": 128, "batch_size": 2, "extra": 1}}],
                "links": []}
    assert ui_to_api(workflow, registry)["1"]["inputs"] == {"height": 96, "width": 128, "batch_size": 2}


def test_subgraphs_expand_into_their_nodes(registry):
    """The sampler and decoder inside a subgraph, the seed promoted to the instance's widget:
    the same graph as the flat workflow, the inner nodes named <instance>:<inner> as ComfyUI
    names them."""
    nested, _ = read("txt2img_subgraph.ui.json", registry)
    flat, _ = read("txt2img.api.json", registry)
    renamed = {"30:3": "3", "30:8": "8"}

    def unprefixed(value):
        return type(value)(renamed.get(value.node, value.node), value.output) if hasattr(value, "node") else value
    assert {renamed.get(n, n): (e.type, {k: unprefixed(v) for k, v in e.inputs.items()})
            for n, e in nested.nodes.items()} == {n: (e.type, e.inputs) for n, e in flat.nodes.items()}


def test_a_muted_subgraph_instance_is_dropped(registry):
    from nodes.comfy import ui_to_api

    workflow = json.loads((WORKFLOWS / "txt2img_subgraph.ui.json").read_text())
    next(n for n in workflow["nodes"] if n["id"] == 30)["mode"] = 2
    prompt = ui_to_api(workflow, registry)
    assert not any(n.startswith("30:") for n in prompt) and "images" not in prompt["9"]["inputs"]


def hand_written_txt2img(steps: int = 8, denoise: float = 1.0):
    """The txt2img workflow's job as a Loom graph of Loom's own nodes."""
    from engine import GraphBuilder

    g = GraphBuilder()
    ckpt = g.add("load_checkpoint", name="shapes-tiny")
    pos = g.add("encode_text", text_encoder=ckpt["text_encoder"], text="a red circle on a blue background")
    neg = g.add("encode_text", text_encoder=ckpt["text_encoder"], text="")
    latent = g.add("empty_latent", vae=ckpt["vae"], width=64, height=64, batch=1)
    sampled = g.add("sample", model=ckpt["model"], positive=pos, negative=neg, latent=latent, seed=0,
                    steps=steps, cfg=4.0, scheduler="dpmpp_2m", schedule="normal", denoise=denoise)
    decoded = g.add("vae_decode", vae=ckpt["vae"], latent=sampled)
    g.add("save_image", node_id="save", images=decoded, prefix="loom")
    return g.build()


def test_compat_run_gives_the_pixels_of_the_hand_written_loom_graph(registry, executor):
    compat, _ = read("txt2img.api.json", registry)
    loom_pixels = _pixels(executor.run(hand_written_txt2img()).outputs["save"]["files"][0])
    compat_pixels = _pixels(executor.run(compat).outputs["9"]["files"][0])
    assert (loom_pixels == compat_pixels).all()


def test_a_loom_graph_exported_to_comfyui_and_read_back_gives_the_same_pixels(registry, executor):
    from engine import Graph
    from nodes.comfy import export_api_prompt, read_api_prompt

    loom = hand_written_txt2img(steps=6, denoise=1.0)
    prompt = export_api_prompt(loom, registry)
    assert prompt["sample_1"]["class_type"] == "KSampler" and prompt["sample_1"]["inputs"]["scheduler"] == "normal"
    back = Graph.from_dict(read_api_prompt(prompt, registry)[0])
    assert {e.type for e in back.nodes.values()} >= {"CheckpointLoaderSimple", "KSampler", "SaveImage"}
    assert (_pixels(executor.run(loom).outputs["save"]["files"][0])
            == _pixels(executor.run(back).outputs["save"]["files"][0])).all()


def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))


def test_seed_change_reruns_the_sampler_and_what_follows_only(registry, executor):
    graph, _ = read("txt2img.api.json", registry)
    executor.run(graph)
    explained = executor.explain(graph, {"3.seed": 11})
    assert explained["3"].reason == "input `seed` changed"
    assert explained["8"].status == "will run" and "upstream `3`" in explained["8"].reason
    assert {n for n, e in explained.items() if e.status == "will run"} == {"3", "8", "9"}
    again = executor.run(graph, {"3.seed": 11})
    assert set(again.ran) == {"3", "8", "9"} and set(again.cached) == {"4", "5", "6", "7"}


def test_params_are_named_by_node_id_and_by_title(registry):
    graph, _ = read("txt2img.api.json", registry)
    assert graph.params["3.seed"].node == "3"
    assert graph.params["Positive.text"].node == "6"
    assert "KSampler.seed" not in graph.params      # a title equal to the class type names nothing
    edited = graph.with_params({"Positive.text": "a cat", "5.width": 96})
    assert edited.nodes["6"].inputs["text"] == "a cat" and edited.nodes["5"].inputs["width"] == 96


def _one_name_per_loom_sampler() -> list[str]:
    names: dict[str, str] = {}
    for comfy, loom in SAMPLERS.items():
        names.setdefault(loom, comfy)
    return sorted(names.values())


@pytest.mark.parametrize("sampler_name", _one_name_per_loom_sampler())
def test_every_mapped_sampler_makes_an_image(sampler_name, registry, executor):
    import numpy as np

    graph, _ = read("txt2img.api.json", registry)
    params = {"3.sampler_name": sampler_name, "3.steps": 2}
    if sampler_name == "dpm_2_ancestral":       # its sigma interpolation overflows on shapes-tiny's betas
        from engine import NodeError

        with pytest.raises(NodeError, match="sampler_name.*diverged"):
            executor.run(graph, params)
        return
    files = executor.run(graph, params).outputs["9"]["files"]
    assert np.asarray(_image(files[0]), dtype=float).std() > 1.0


def _image(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _vae_loader_decodes_like_the_checkpoint(registry, settings_factory, models_dirs, vae_name):
    """txt2img.api.json decoded a second time with VAELoader(vae_name): the same pixels."""
    executor = Executor(registry=registry, settings=settings_factory(models_dirs=models_dirs))
    prompt = json.loads((WORKFLOWS / "txt2img.api.json").read_text())
    prompt["3"]["inputs"]["steps"] = 2
    prompt["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
    prompt["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["10", 0]}}
    prompt["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "own_vae"}}
    outputs = executor.run(read_document(Document.from_value(prompt), registry)[0]).outputs
    assert (_pixels(outputs["9"]["files"][0]) == _pixels(outputs["12"]["files"][0])).all()


def test_vae_loader_reads_a_vae_folder_named_as_a_file(registry, settings_factory, models_dir, tmp_path):
    """A separate VAE (here the checkpoint's own, copied to models/vae) decodes the same pixels."""
    import shutil

    extra = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints" / "shapes-tiny" / "vae", extra / "vae" / "shapes-vae")
    _vae_loader_decodes_like_the_checkpoint(registry, settings_factory, [extra, models_dir], "shapes-vae.safetensors")


def test_vae_loader_takes_a_pipeline_folders_vae(registry, settings_factory, models_dir, tmp_path):
    """A whole diffusers pipeline folder in models/vae: its vae/ is the VAE."""
    import shutil

    extra = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints" / "shapes-tiny", extra / "vae" / "shapes-pipeline")
    _vae_loader_decodes_like_the_checkpoint(registry, settings_factory, [extra, models_dir], "shapes-pipeline")


@pytest.mark.parametrize("file_name, latent_channels, config", [
    ("ae.safetensors", 16, "flux-dev"), ("sdxl_vae.safetensors", 4, "sdxl-base"),
    ("vae-ft-mse-840000.safetensors", 4, "sd15")])
def test_a_single_vae_files_config_follows_its_channels_and_name(file_name, latent_channels, config):
    """SD and SDXL VAE files share a layout; only SDXL's latent scale differs, so the name decides."""
    from nodes.component_loaders import _vae_config

    assert _vae_config({"encoder.conv_out.weight": (2 * latent_channels, 512, 3, 3)}, file_name) == config


def test_schema_1_link_objects_read_like_link_arrays(registry):
    """The editor's newer schema writes links as objects; the graph is the same."""
    from nodes.comfy import read_ui_workflow

    workflow = json.loads((WORKFLOWS / "txt2img.ui.json").read_text())
    workflow["version"] = 1
    workflow["links"] = [{"id": i, "origin_id": a, "origin_slot": b, "target_id": c, "target_slot": d, "type": t}
                         for i, a, b, c, d, t in workflow["links"]]
    document, _ = read_ui_workflow(workflow, registry)
    assert document == read("txt2img.ui.json", registry)[0].to_dict()
