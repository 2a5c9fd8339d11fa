"""The shipped default model, through the real CLI path: `loom run graphs/txt2img.json`.

A wiring regression (CFG sign, VAE scaling, scheduler timesteps, tokenizer) turns these
images into noise or the wrong colours, so this fails long before anyone looks at a picture.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from tools.shapes.evaluate import analyse

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("yellow", "triangle", "black", 3),
    ("red", "square", "blue", 11),
    ("white", "circle", "green", 7),
]


@pytest.mark.parametrize("colour, shape, background, seed", CASES)
def test_txt2img_draws_what_the_prompt_says(colour, shape, background, seed, tmp_path, capsys,
                                           monkeypatch):
    monkeypatch.chdir(ROOT)   # the graph names models/ relative to the repository, as the README runs it
    prompt = f"a {colour} {shape} on a {background} background"
    code = main(["run", "graphs/txt2img.json", "--set", f"prompt={prompt}", "--set", f"seed={seed}",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    files = sorted((tmp_path / "out").glob("*.png"))
    assert report["status"] == "succeeded" and len(files) == 1
    found = analyse(np.asarray(Image.open(files[0]).convert("RGB")))
    assert (found["colour"], found["background"]) == (colour, background)
    assert found["shape"] == shape
