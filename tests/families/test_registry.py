"""The family registry: each family is recognised from its files, and nodes ask it instead of
checking names."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.families import FamilyError, detect_folder, detect_keys, families, family


def test_every_family_is_registered_in_detection_order():
    names = [f.name for f in families()]
    assert set(names) >= {"sd1", "sd2", "sdxl", "sdxl_refiner", "sd3"}
    assert names.index("sd3") < names.index("sdxl") < names.index("sd1")


def test_unknown_family_names_the_known_ones():
    with pytest.raises(FamilyError, match="sd1"):
        family("sd9")


@pytest.mark.parametrize("keys, name", [
    (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.x"], "sd1"),
    (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.x"], "sd2"),
    (["model.diffusion_model.x", "conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x"], "sdxl"),
    (["model.diffusion_model.x", "conditioner.embedders.0.model.x"], "sdxl_refiner"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "text_encoders.clip_l.x"], "sd3"),
    (["joint_blocks.0.x_block.attn.qkv.weight"], "sd3"),
])
def test_single_file_keys_pick_the_family(keys, name):
    assert detect_keys({k: (1,) for k in keys}).name == name


@given(st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", max_size=30),
                       st.tuples(st.integers(1, 8)), max_size=6))
def test_detection_never_claims_foreign_keys(keys):
    """Keys of no family's layout are refused with the list of families, never guessed."""
    known = ("model.diffusion_model.", "joint_blocks.", "double_blocks.")
    if any(k.startswith(known) for k in keys):
        return
    with pytest.raises(FamilyError, match="unknown checkpoint family"):
        detect_keys(keys)


@pytest.mark.parametrize("index, te_width, name", [
    ({"_class_name": "StableDiffusionPipeline", "unet": ["d", "U"], "text_encoder": ["t", "C"]}, 768, "sd1"),
    ({"_class_name": "StableDiffusionPipeline", "unet": ["d", "U"], "text_encoder": ["t", "C"]}, 1024, "sd2"),
    ({"_class_name": "StableDiffusionXLPipeline", "unet": ["d", "U"], "text_encoder": ["t", "C"],
      "text_encoder_2": ["t", "C"]}, 768, "sdxl"),
    ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "unet": ["d", "U"], "text_encoder": [None, None],
      "text_encoder_2": ["t", "C"]}, 768, "sdxl_refiner"),
    ({"_class_name": "StableDiffusion3Pipeline", "transformer": ["d", "T"], "text_encoder": ["t", "C"],
      "text_encoder_2": ["t", "C"], "text_encoder_3": [None, None]}, 768, "sd3"),
])
def test_diffusers_folders_pick_the_family(tmp_path, index, te_width, name):
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": te_width}))
    assert detect_folder(tmp_path).name == name


def test_a_folder_of_no_family_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(FamilyError, match="KandinskyPipeline"):
        detect_folder(tmp_path)


def test_families_declare_what_the_nodes_ask():
    for fam in families():
        assert fam.function("encode") and fam.function("sampler")
        assert fam.latent_channels in (4, 16) and fam.text
        if fam.predict:
            assert fam.function("predict")


def test_the_registry_loads_without_torch():
    """The node catalogue must not pay for torch: family modules import it only when used."""
    code = "import sys, nodes.families as f; f.families(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
