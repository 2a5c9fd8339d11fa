"""graphs/avatar.json and graphs/avatar_sheet.json on the shipped avatars-tiny, its attribute
checker and the 2x upscaler: what the CLI makes is judged by pixel statistics that know
nothing of the checker; the quality gate regenerates without rerunning what it need not."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from tools.avatars import pixels

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "avatar.json"

# One set per background kind, seed 0, not chosen by outcome: avatars-tiny draws the asked hair
# colour and background on 91-100 % of held-out sets (checker and pixel judge, see its model
# card), so a miss here is most likely a wiring regression (prompt, tokenizer, gate, upscale, save).
CASES = [  # hair colour, hair style, background, expression, seed
    ("red", "long flowing", "simple background", "smiling", 0),
    ("blue", "short", "nature background", "serious", 0),
    ("pink", "braided", "abstract background", "smiling", 0),
    ("blonde", "curly", "gradient background", "serious", 0),
]


def as_64(path: Path) -> np.ndarray:
    """The saved (2x upscaled) PNG brought back to the model's 64x64 grid."""
    return np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BOX))


@pytest.mark.parametrize("hair_color, hair_style, background, expression, seed", CASES)
def test_avatar_graph_draws_the_asked_hair_colour_and_background(hair_color, hair_style, background, expression,
                                                                 seed, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(["run", "graphs/avatar.json", "--set", f"hair_color={hair_color}",
                 "--set", f"hair_style={hair_style}", "--set", f"background={background}",
                 "--set", f"expression={expression}", "--set", f"seed={seed}",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    [saved] = sorted((tmp_path / "out").glob("avatar*.png"))
    png = Image.open(saved)
    assert png.size == (128, 128) and png.text["ai_generated"] == "true"
    image = as_64(saved)
    assert pixels.hair_colour(image) == hair_color
    assert pixels.background_kind(image) == background


def graph_with(**extra_nodes):
    from engine import Graph

    data = json.loads(GRAPH.read_text())
    data["nodes"].update(extra_nodes)
    return Graph.from_dict(data, name="avatar-test")


def test_avatar_graph_logs_watermarks_and_keeps_provenance(executor, settings):
    result = executor.run(graph_with()).raise_for_status()
    [path] = result.outputs["save"]["files"]
    png = Image.open(path)
    assert json.loads(png.text["loom_provenance"])["watermark"] == "loom:ai"
    log = (settings.output_dir / "generation_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["sha256"] == result.outputs["log"]["entries"][0]


def test_gate_that_never_passes_tries_every_seed_and_runs_upstream_once(executor):
    show = {"tries": {"type": "show", "inputs": {"value": ["gate", "tries"]}},
            "checks": {"type": "show", "inputs": {"value": ["gate", "checks"]}}}
    # a contrast no image reaches: every try fails
    result = executor.run(graph_with(**show), {"max_tries": 3, "min_contrast": 1.0, "seed": 40}).raise_for_status()
    assert result.outputs["tries"]["value"] == 3
    checks = result.outputs["checks"]["value"]
    assert [c.passed for c in checks] == [False] * 3
    assert all(any("contrast" in r for r in c.reasons) and "attribute_match" in c.metrics[0] for c in checks)
    for upstream in ("ckpt", "pos", "neg", "latent", "prompt", "filter", "load_checker"):
        assert result.ran.count(upstream) == 1, (upstream, result.ran)
    assert result.ran.count("sampler") == 3 and result.ran.count("upscale") == 1


def test_gate_stops_at_the_first_seed_the_checker_accepts(executor):
    show = {"checks": {"type": "show", "inputs": {"value": ["gate", "checks"]}}}
    result = executor.run(graph_with(**show), {"max_tries": 6, "seed": 0, "min_attribute_match": 0.5})
    checks = result.raise_for_status().outputs["checks"]["value"]
    assert checks[-1].passed and checks[-1].metrics[0]["attribute_match"] >= 0.5
    assert all(not c.passed and c.metrics[0]["attribute_match"] < 0.5 for c in checks[:-1])
    assert all(any(r.startswith("attribute match") for r in c.reasons) for c in checks[:-1])
    assert result.ran.count("sampler") == len(checks)


def test_gate_with_require_pass_fails_with_a_readable_message(executor):
    from engine import Graph, NodeError

    data = json.loads(GRAPH.read_text())
    data["nodes"]["gate"]["inputs"]["require_pass"] = True
    with pytest.raises(NodeError) as err:
        executor.run(Graph.from_dict(data, name="avatar-require"), {"max_tries": 2, "min_sharpness": 1e12})
    assert "no try passed in 2 tries" in str(err.value)


def test_prompt_filter_rejects_with_rule_and_reason(executor):
    from engine import NodeError

    with pytest.raises(NodeError) as err:
        executor.run(graph_with(), {"details": "gore everywhere"})
    assert "content filter" in str(err.value) and "graphic violence" in str(err.value)
    assert "sampler" not in err.value.result.ran


def test_contact_sheet_is_one_character_on_four_backgrounds(executor):
    from engine import Graph

    graph = Graph.load(ROOT / "graphs" / "avatar_sheet.json")
    result = executor.run(graph, {"max_tries": 1}).raise_for_status()
    [path] = result.outputs["save"]["files"]
    sheet = Image.open(path)
    assert sheet.width > 2 * 128 and sheet.height > 2 * 128
    assert result.ran.count("ckpt") == 1 and result.ran.count("load_checker") == 1
    assert result.ran.count("upscale") == 4
