"""Reading and writing ComfyUI documents: errors before anything runs, the API round trip,
PNGs, `loom convert`, and ComfyUI-shaped errors for the HTTP API."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from engine import Executor, GraphError
from engine.cli import main
from engine.documents import Document, read_document
from nodes.comfy import SAMPLERS, SCHEDULES, export_api_prompt, node_errors, read_api_prompt

from .conftest import WORKFLOWS

# diffusers' schedulers hand numpy arrays to torch in a way numpy 2 deprecates (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


def api(name: str = "txt2img.api.json") -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def graph_of(prompt: dict, registry):
    return read_document(Document.from_value(prompt), registry)[0]


def test_unknown_class_types_are_listed_at_once_with_their_node_ids(registry):
    prompt = api()
    prompt["20"] = {"class_type": "FancyUpscaler", "inputs": {"image": ["8", 0]}}
    prompt["21"] = {"class_type": "FancyUpscaler", "inputs": {}}
    prompt["22"] = {"class_type": "FaceDetailer", "inputs": {}}
    with pytest.raises(GraphError) as info:
        read_api_prompt(prompt, registry)
    [problem] = info.value.problems
    assert "FancyUpscaler (nodes 20, 21)" in problem.message and "FaceDetailer (node 22)" in problem.message


def test_refused_class_type_names_the_node(registry):
    prompt = api()
    prompt["30"] = {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["6", 0]}}
    with pytest.raises(GraphError) as info:
        read_api_prompt(prompt, registry)
    assert info.value.problems[0].node == "30" and "area conditioning" in info.value.problems[0].message


def test_a_missing_model_is_a_problem_naming_node_input_and_what_is_available(registry, executor):
    prompt = api()
    prompt["4"]["inputs"]["ckpt_name"] = "sub\\v1-5-pruned-emaonly.safetensors"
    with pytest.raises(GraphError) as info:
        executor.plan(graph_of(prompt, registry))
    [problem] = info.value.problems
    assert (problem.node, problem.input) == ("4", "ckpt_name")
    assert "sub/v1-5-pruned-emaonly" in problem.message and "shapes-tiny" in problem.message


def test_model_names_resolve_as_workflows_write_them(models_dir, tmp_path):
    """With or without the extension, sub-folders with / or \\, a file name for a diffusers folder."""
    import shutil

    from engine.models import ModelPaths

    folder = tmp_path / "models"
    (folder / "loras" / "styles").mkdir(parents=True)
    lora = folder / "loras" / "styles" / "lcm.safetensors"
    shutil.copy(models_dir / "loras" / "lcm-lora-shapes-tiny.safetensors", lora)
    paths = ModelPaths([folder, models_dir])
    for name in ("styles\\lcm.safetensors", "styles/lcm.safetensors", "styles/lcm", "styles\\lcm"):
        assert paths.resolve("loras", name) == lora
    assert paths.resolve("checkpoints", "shapes-tiny.safetensors") == models_dir / "checkpoints" / "shapes-tiny"
    with pytest.raises(Exception, match="available: .*shapes-tiny"):
        paths.resolve("checkpoints", "shapes-huge.safetensors")


def test_unsupported_sampler_or_scheduler_is_refused_at_validation_with_the_list(registry):
    prompt = api()
    prompt["3"]["inputs"]["sampler_name"] = "euler_cfg_pp"
    prompt["3"]["inputs"]["scheduler"] = "kl_optimal"
    with pytest.raises(GraphError) as info:
        Executor(registry=registry).check(graph_of(prompt, registry))
    by_input = {p.input: p.message for p in info.value.problems}
    assert "dpmpp_2m_sde" in by_input["sampler_name"] and "euler_cfg_pp" in by_input["sampler_name"]
    assert "sgm_uniform" in by_input["scheduler"]


@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS.values())))
def test_every_mapped_sampler_builds_with_the_normal_schedule(sampler, models_dir):
    from nodes.sampling import make_scheduler

    config = json.loads((models_dir / "checkpoints/shapes-tiny/scheduler/scheduler_config.json").read_text())
    scheduler = make_scheduler(sampler, config, schedule="normal")
    scheduler.set_timesteps(6)
    assert len(scheduler.timesteps) >= 6


@pytest.mark.parametrize("schedule", sorted(set(SCHEDULES.values())))
def test_each_schedule_spreads_the_steps_its_own_way(schedule, models_dir):
    from nodes.sampling import make_scheduler

    config = json.loads((models_dir / "checkpoints/shapes-tiny/scheduler/scheduler_config.json").read_text())
    default = make_scheduler("euler", config)
    default.set_timesteps(5)
    scheduler = make_scheduler("euler", config, schedule=schedule)
    scheduler.set_timesteps(5)
    assert len(scheduler.sigmas) == 6 and scheduler.sigmas[-1] == 0
    if schedule == "ddim_uniform":
        assert scheduler.timesteps[-1] == 1           # DDIM's leading steps, offset by one
    if schedule == "normal":
        assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0


def test_a_sampler_without_a_schedule_says_so(models_dir):
    from engine.errors import NodeInputError
    from nodes.sampling import make_scheduler

    config = json.loads((models_dir / "checkpoints/shapes-tiny/scheduler/scheduler_config.json").read_text())
    with pytest.raises(NodeInputError, match="no karras schedule"):
        make_scheduler("ddim", config, schedule="karras")


# -- API -> Loom -> API ---------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "Zs"]), max_size=20)


@st.composite
def api_prompts(draw):
    """Random chains of ComfyUI nodes with valid links and literal values of every kind."""
    ids = draw(st.lists(st.integers(1, 10**6).map(str), min_size=3, max_size=8, unique=True))
    prompt = {ids[0]: {"inputs": {"ckpt_name": draw(_text.filter(bool))}, "class_type": "CheckpointLoaderSimple"}}
    outputs = {"CheckpointLoaderSimple": 3}

    def link():
        src = draw(st.sampled_from(sorted(prompt)))
        return [src, draw(st.integers(0, outputs.get(prompt[src]["class_type"], 1) - 1))]

    for node_id in ids[1:]:
        kind = draw(st.sampled_from(["CLIPTextEncode", "EmptyLatentImage", "KSampler", "ImageScale"]))
        if kind == "CLIPTextEncode":
            inputs = {"text": draw(_text), "clip": link()}
        elif kind == "EmptyLatentImage":
            inputs = {"width": draw(st.integers(16, 512)), "height": 64, "batch_size": draw(st.integers(1, 4))}
        elif kind == "KSampler":
            inputs = {"seed": draw(st.integers(0, 2**64 - 1)), "steps": draw(st.integers(1, 50)),
                      "cfg": draw(st.floats(0, 100, allow_nan=False)), "sampler_name": draw(st.sampled_from(sorted(SAMPLERS))),
                      "scheduler": draw(st.sampled_from(sorted(SCHEDULES))), "model": link(),
                      "positive": link(), "negative": link(), "latent_image": link(),
                      "denoise": draw(st.floats(0, 1))}
        else:
            inputs = {"image": link(), "upscale_method": "bilinear", "width": {"__value__": [1, 2]},
                      "crop": "center"}
        node = {"inputs": inputs, "class_type": kind}
        if draw(st.booleans()):
            node["_meta"] = {"title": draw(_text)}
            if draw(st.booleans()):
                node["_meta"]["models"] = [{"name": draw(_text), "url": "https://example.org/m.safetensors",
                                            "directory": "checkpoints"}]
        prompt[node_id] = node
    return prompt


@hsettings(max_examples=60, deadline=None)
@given(prompt=api_prompts())
def test_api_prompt_round_trips_through_a_loom_graph(prompt, registry):
    from engine import Graph

    document, id_map = read_api_prompt(prompt, registry)
    assert id_map == {i: i for i in prompt}
    graph = Graph.from_dict(json.loads(json.dumps(document)))
    assert export_api_prompt(graph, registry) == prompt


# -- PNGs, convert, export errors, ComfyUI-shaped errors ----------------------------------------

def test_a_comfyui_png_runs_from_its_prompt_chunk_and_a_ui_only_png_from_its_workflow(registry, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    both = PngInfo()
    both.add_text("prompt", (WORKFLOWS / "txt2img.api.json").read_text())
    both.add_text("workflow", (WORKFLOWS / "txt2img.ui.json").read_text())
    Image.new("RGB", (8, 8)).save(tmp_path / "both.png", pnginfo=both)
    ui_only = PngInfo()
    ui_only.add_text("workflow", (WORKFLOWS / "txt2img.ui.json").read_text())
    Image.new("RGB", (8, 8)).save(tmp_path / "ui.png", pnginfo=ui_only)
    from engine.documents import load_document

    from_prompt = load_document(tmp_path / "both.png", registry)
    from_workflow = load_document(tmp_path / "ui.png", registry)
    assert from_prompt.nodes["4"].meta == {"title": "Load Checkpoint"}     # the prompt chunk won
    assert from_workflow.nodes["3"].inputs == from_prompt.nodes["3"].inputs


def test_loom_convert_writes_both_ways(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["convert", str(WORKFLOWS / "txt2img.ui.json"), "-o", str(out)]) == 0
    loom = json.loads(out.read_text())
    assert loom["loom"] == 1 and loom["nodes"]["3"]["type"] == "KSampler"
    assert main(["convert", str(out), "--to", "comfy-api"]) == 0
    prompt = json.loads(capsys.readouterr().out)
    assert prompt["3"]["inputs"]["model"] == ["4", 0] and prompt["3"]["inputs"]["seed"] == 0


def test_exporting_a_node_without_a_comfyui_counterpart_names_it(tmp_path, capsys):
    graph = WORKFLOWS.parents[2] / "graphs" / "arithmetic.json"
    assert main(["convert", str(graph), "--to", "comfy-api"]) == 2
    err = capsys.readouterr().err
    assert "has no ComfyUI counterpart" in err and "node '" in err


def test_validation_problems_become_comfyui_node_errors(registry):
    prompt = api()
    prompt["3"]["inputs"]["steps"] = 0
    prompt["3"]["inputs"].pop("positive")
    document, id_map = read_api_prompt(prompt, registry)
    from engine import Graph

    with pytest.raises(GraphError) as info:
        Executor(registry=registry).check(Graph.from_dict(document))
    errors = node_errors(info.value, prompt, id_map)
    assert errors["3"]["class_type"] == "KSampler"
    inputs = {e["extra_info"]["input_name"] for e in errors["3"]["errors"]}
    assert inputs == {"steps", "positive"}


@given(steps=st.integers(1, 200), denoise=st.floats(0.001, 1.0))
def test_loom_denoise_exports_as_the_ksampler_settings_that_run_the_same_steps(steps, denoise):
    from nodes.comfy.counterparts import COUNTERPARTS, comfy_literals

    run = min(int(steps * denoise), steps)
    if run == 0:
        return
    literals = comfy_literals(COUNTERPARTS["sample"], {"steps": steps, "denoise": denoise, "schedule": "karras"})
    assert literals["steps"] == run                                   # KSampler runs `steps` steps ...
    assert int(literals["steps"] / literals["denoise"]) == steps       # ... at the end of this schedule


def test_a_loom_node_without_counterpart_or_setting_is_named_on_export(registry):
    from engine import GraphBuilder

    g = GraphBuilder()
    ckpt = g.add("load_checkpoint", name="shapes-tiny")
    pos = g.add("encode_text", text_encoder=ckpt["text_encoder"], text="x", clip_skip=1)
    g.add("sample", model=ckpt["model"], positive=pos, latent=g.add("empty_latent", vae=ckpt["vae"]))
    with pytest.raises(GraphError) as info:
        export_api_prompt(g.build(), registry)
    located = {(p.node, p.input) for p in info.value.problems}
    assert ("encode_text_1", "clip_skip") in located and ("sample_1", "schedule") in located


@given(seed=st.integers(0, 2**64 - 1), control=st.sampled_from(["fixed", "increment", "decrement", "randomize", None]),
       steps=st.integers(1, 10000), cfg=st.floats(0, 100, allow_nan=False), sampler=st.sampled_from(sorted(SAMPLERS)),
       scheduler=st.sampled_from(sorted(SCHEDULES)), denoise=st.floats(0, 1))
def test_ksampler_widgets_are_read_with_or_without_the_control_value(registry, seed, control, steps, cfg,
                                                                     sampler, scheduler, denoise):
    from nodes.comfy import ui_to_api

    widgets = [seed, *([control] if control else []), steps, cfg, sampler, scheduler, denoise]
    workflow = {"nodes": [{"id": 3, "type": "KSampler", "mode": 0, "inputs": [], "outputs": [],
                           "widgets_values": widgets}], "links": []}
    assert ui_to_api(workflow, registry)["3"]["inputs"] == {
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
        "denoise": denoise}


def test_comfyuis_extra_model_paths_yaml_is_read(tmp_path, models_dir):
    """Sections with a base_path and folders one per line, as ComfyUI writes the file."""
    import shutil

    from engine.models import ModelPaths

    webui = tmp_path / "webui"
    (webui / "models" / "Lora").mkdir(parents=True)
    shutil.copy(models_dir / "loras" / "lcm-lora-shapes-tiny.safetensors", webui / "models" / "Lora" / "lcm.safetensors")
    (tmp_path / "comfy" / "models" / "checkpoints").mkdir(parents=True)
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text("a111:\n    base_path: webui\n    loras: |\n        models/Lora\n        models/LyCORIS\n"
                      "comfyui:\n    base_path: comfy/\n    is_default: true\n    checkpoints: models/checkpoints/\n")
    paths = ModelPaths([models_dir], config)
    assert paths.resolve("loras", "lcm") == (webui / "models" / "Lora" / "lcm.safetensors").resolve()
    assert (tmp_path / "comfy" / "models" / "checkpoints").resolve() in paths.folders("checkpoints")
    assert (webui / "models" / "LyCORIS").resolve() in paths.folders("loras")


def test_annotated_image_names_are_read_as_the_editor_means_them(registry):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "pasted/cat.png [input]"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert read_api_prompt(prompt, registry)[0]["nodes"]["1"]["inputs"]["image"] == "pasted/cat.png"
    prompt["1"]["inputs"]["image"] = "ComfyUI_00001_.png [output]"
    with pytest.raises(GraphError) as info:
        read_api_prompt(prompt, registry)
    assert (info.value.problems[0].node, info.value.problems[0].input) == ("1", "image")


def _as_ui(prompt: dict, registry, draw) -> tuple[dict, dict]:
    """What the editor would save for `prompt` (widgets in input order, a control value after
    seeds, a Reroute on some links, Notes), and the prompt it should queue (absent widgets
    hold their defaults)."""
    from nodes.comfy import is_widget

    outputs = {nid: [] for nid in prompt}
    expected, nodes, links = {}, [], []
    next_id = max(int(n) for n in prompt) + 1
    for nid, node in prompt.items():
        spec = registry.get(node["class_type"])
        inputs, widgets, queued = [], [], {}
        for name, ispec in spec.inputs.items():
            value = node["inputs"].get(name, ispec.default if is_widget(ispec) else None)
            if value is None:
                continue
            queued[name] = value
            if isinstance(value, list):                        # a link
                link_id = len(links) + 1
                source, slot = int(value[0]), value[1]
                if draw(st.booleans()):                        # through a Reroute
                    reroute, into = next_id, link_id + 1
                    next_id += 1
                    links.append([link_id, source, slot, reroute, 0, "*"])
                    nodes.append({"id": reroute, "type": "Reroute", "mode": 0,
                                  "inputs": [{"name": "", "type": "*", "link": link_id}],
                                  "outputs": [{"name": "", "type": "*", "links": [into]}]})
                    link_id, source, slot = into, reroute, 0
                links.append([link_id, source, slot, int(nid), len(inputs), "*"])
                entry = {"name": name, "type": "*", "link": link_id}
                if is_widget(ispec):
                    entry["widget"] = {"name": name}
                    widgets.append(0)                          # stale: the link wins
                inputs.append(entry)
            else:
                widgets.append(value["__value__"] if isinstance(value, dict) else value)
                if name in ("seed", "noise_seed"):
                    widgets.append(draw(st.sampled_from(["fixed", "increment", "decrement", "randomize"])))
        ui_node = {"id": int(nid), "type": node["class_type"], "mode": 0, "inputs": inputs,
                   "outputs": outputs[nid], "widgets_values": widgets}
        if "_meta" in node:
            ui_node["title"] = node["_meta"]["title"]
        nodes.append(ui_node)
        expected[nid] = {"inputs": queued, "class_type": node["class_type"],
                         **({"_meta": {"title": node["_meta"]["title"]}} if "_meta" in node else {})}
    nodes.append({"id": next_id, "type": "Note", "mode": 0, "widgets_values": ["a note"]})
    return {"nodes": nodes, "links": links, "groups": [], "version": 0.4}, expected


@hsettings(max_examples=60, deadline=None)
@given(prompt=api_prompts(), data=st.data())
def test_a_ui_workflow_queues_the_prompt_it_was_saved_from(prompt, data, registry):
    from nodes.comfy import ui_to_api

    workflow, expected = _as_ui(prompt, registry, data.draw)
    assert ui_to_api(workflow, registry) == expected


def test_loom_validate_takes_comfyui_files_and_their_params(tmp_path, capsys, models_dir):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", (WORKFLOWS / "txt2img.api.json").read_text())
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=info)
    for document in (tmp_path / "comfy.png", WORKFLOWS / "txt2img.ui.json"):
        assert main(["validate", str(document), "--models-dir", str(models_dir),
                     "--set", "Positive.text=a blue square", "--set", "3.steps=4"]) == 0
    assert main(["validate", str(WORKFLOWS / "txt2img.ui.json"), "--models-dir", str(models_dir),
                 "--set", "3.sampler_name=euler_cfg_pp"]) == 2
    assert "dpmpp_2m_sde" in capsys.readouterr().err


def test_a_controlnet_on_one_conditioning_guides_that_pass_only():
    import torch

    from nodes.comfy.ports import OnePass
    from nodes.types import StepInfo

    def hook(model, step):
        rows = step.sample.shape[0]
        return {"down_block_additional_residuals": [torch.ones(rows, 2)], "mid_block_additional_residual": torch.ones(rows, 3)}

    batched = StepInfo(torch.zeros(4, 4, 2, 2), torch.tensor(1), torch.zeros(4, 1, 1), 0, 1, True)
    positive = OnePass(hook, positive=True)(None, batched)          # rows: [neg, neg, pos, pos]
    assert positive["mid_block_additional_residual"][:, 0].tolist() == [0, 0, 1, 1]
    negative = OnePass(hook, positive=False)(None, batched)
    assert negative["down_block_additional_residuals"][0][:, 0].tolist() == [1, 1, 0, 0]
    single = StepInfo(torch.zeros(2, 4, 2, 2), torch.tensor(1), torch.zeros(2, 1, 1), 0, 1, False)
    assert OnePass(hook, positive=False)(None, single) == {}      # no negative pass without guidance
    assert OnePass(hook, positive=True)(None, single)["mid_block_additional_residual"].sum() == 6
