"""The avatar attribute checker: its reading of prompts, its accuracy on drawings it never
saw, and the nodes that use it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nodes.avatar_check import asked_attributes
from nodes.compose import avatar_prompt
from tools.avatars import data

LABELS = data.ATTRIBUTES


@settings(max_examples=80, deadline=None)
@given(hair_color=st.sampled_from(list(data.HAIR_COLOURS)), hair_style=st.sampled_from(data.HAIR_STYLES),
       eye_color=st.sampled_from(list(data.EYE_COLOURS)), expression=st.sampled_from(data.EXPRESSIONS),
       background=st.sampled_from(data.BACKGROUNDS), glasses=st.booleans())
def test_prompt_is_read_back_into_the_attributes_it_was_built_from(hair_color, hair_style, eye_color,
                                                                    expression, background, glasses):
    prompt = avatar_prompt(hair_style=hair_style, hair_color=hair_color, eye_color=eye_color, style="cartoon",
                           expression=expression, background=background,
                           details="glasses" if glasses else "").prompt
    assert asked_attributes(prompt, LABELS) == {
        "hair_color": hair_color, "hair_style": hair_style, "eye_color": eye_color,
        "expression": expression, "background": background, "glasses": "yes" if glasses else "no"}


def test_words_the_checker_does_not_know_are_not_judged():
    prompt = avatar_prompt(hair_style="wavy", hair_color="blue", eye_color="hazel", expression="calm",
                           background="abstract background").prompt
    assert asked_attributes(prompt, LABELS) == {"hair_color": "blue", "background": "abstract background",
                                                "glasses": "no"}


@pytest.fixture(scope="module")
def held_out():
    specs = [data.spec_for("eval", i) for i in range(300)]
    pixels = torch.from_numpy(np.stack([np.asarray(data.render(s), dtype=np.float32) / 255 for s in specs]))
    return specs, pixels


@pytest.fixture
def checker(ctx):
    from nodes.avatar_check import load_avatar_checker

    return load_avatar_checker(ctx, "avatar-attributes.safetensors")


def test_checker_is_small_and_right_on_held_out_drawings(checker, held_out, models_dir):
    assert (models_dir / "classifiers" / "avatar-attributes.safetensors").stat().st_size <= 2_000_000
    specs, pixels = held_out
    probabilities = checker.probabilities(pixels)
    for attribute, labels in checker.labels.items():
        seen = [labels[int(p.argmax())] for p in probabilities[attribute]]
        accuracy = np.mean([s == spec.attributes[attribute] for s, spec in zip(seen, specs)])
        assert accuracy >= 0.95, (attribute, accuracy)


def test_avatar_check_passes_the_asked_portrait_and_names_what_differs(checker, held_out):
    from nodes.avatar_check import avatar_check
    from nodes.types import Image

    specs, pixels = held_out
    i = next(i for i, s in enumerate(specs) if s.hair_color == "red")
    image = Image(pixels[i : i + 1])
    report = avatar_check(image, checker, specs[i].caption)
    assert report.passed and report.metrics[0]["attribute_match"] == 1.0
    wrong = specs[i].caption.replace("red ", "blue ", 1)
    report = avatar_check(image, checker, wrong)
    assert not report.passed and report.metrics[0]["attribute_match"] == pytest.approx(5 / 6)
    assert "hair_color: asked blue, looks red" in report.reasons[0]
    assert avatar_check(image, checker, wrong, min_match=0.8).passed


def test_quality_check_scores_attributes_beside_its_statistics(checker, held_out):
    from nodes.quality import quality_check
    from nodes.types import Image

    specs, pixels = held_out
    image = Image(pixels[:2])
    report = quality_check(image, checker=checker, prompt=specs[0].caption)
    assert "sharpness" in report.metrics[0] and report.metrics[0]["attribute_match"] == 1.0
    assert report.metrics[1]["attributes_checked"] == 6
    assert not report.passed and all(r.startswith("image 1: attribute match") for r in report.reasons)


def test_a_file_that_is_not_a_checker_is_refused_naming_it(tmp_path, settings_factory):
    from safetensors.torch import save_file

    from engine import CancelToken, Context, Graph, NodeInputError
    from engine.models import ModelManager, ModelPaths
    from nodes.avatar_check import load_avatar_checker

    (tmp_path / "classifiers").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "classifiers" / "other.safetensors"))
    settings = settings_factory(models_dirs=[tmp_path])
    other = Context(node_id="c", node_type="load_avatar_checker", run_id="t", settings=settings,
                    models=ModelManager(ModelPaths([tmp_path])), graph=Graph(), params={},
                    cancel_token=CancelToken(), publish=lambda event: None)
    with pytest.raises(NodeInputError) as err:
        load_avatar_checker(other, "other.safetensors")
    assert err.value.input == "name" and "other.safetensors is not an avatar checker" in str(err.value)
