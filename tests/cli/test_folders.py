"""Models are found wherever the command runs: the project's models/ by default, `--models-dir`
and loom.toml add folders in front of it, a folder that does not exist is an error."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.config import ConfigError, load_config

from .conftest import GRAPHS, ROOT

TXT2IMG = str(GRAPHS / "txt2img.json")


def a_models_folder(base: Path, checkpoint: str = "mine") -> Path:
    """A models folder in ComfyUI's layout holding one (empty) checkpoint file."""
    folder = base / "my-models"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / f"{checkpoint}.safetensors").write_bytes(b"")
    return folder


def test_readme_first_command_works_outside_the_repo(elsewhere, cache_dir, capsys):
    code = main(["run", TXT2IMG, "--set", "prompt=a yellow triangle on a black background",
                 "--cache-dir", cache_dir, "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = list((elsewhere / "output").glob("*.png"))
    assert len(saved) == 1 and saved[0].stat().st_size > 0


def test_models_dir_adds_a_folder_in_front_of_the_default(elsewhere, capsys):
    folder = a_models_folder(elsewhere)
    # shapes-tiny still comes from the project's models/, "mine" from the added folder
    assert main(["validate", TXT2IMG, "--models-dir", str(folder)]) == 0
    assert main(["validate", TXT2IMG, "--models-dir", str(folder), "--set", "model=mine"]) == 0
    assert main(["validate", TXT2IMG, "--set", "model=mine"]) == 2
    assert "no checkpoints model named 'mine'" in capsys.readouterr().err


def test_a_missing_models_folder_is_an_error(elsewhere, capsys):
    assert main(["validate", TXT2IMG, "--models-dir", str(elsewhere / "nope")]) == 2
    message = capsys.readouterr().err
    assert "nope does not exist" in message and "--models-dir" in message


def test_extra_model_paths_yaml_keeps_working(elsewhere):
    folder = a_models_folder(elsewhere, "from-yaml")
    extra = elsewhere / "extra_model_paths.yaml"
    extra.write_text(f"checkpoints:\n  - {folder / 'checkpoints'}\n")
    assert main(["validate", TXT2IMG, "--extra-model-paths", str(extra), "--set", "model=from-yaml"]) == 0


def test_loom_toml_in_the_working_folder_sets_folders_and_cache(elsewhere, capsys):
    a_models_folder(elsewhere)
    (elsewhere / "loom.toml").write_text(
        '[models]\ndirs = ["my-models"]\n[cache]\ndir = "my-cache"\n[run]\nout = "images"\n')
    config = load_config()
    assert config.models.dirs == [(elsewhere / "my-models").resolve()]
    assert main(["validate", TXT2IMG, "--set", "model=mine"]) == 0
    assert main(["cache", "info"]) == 0
    assert str(elsewhere / "my-cache") in capsys.readouterr().out


def test_user_config_is_read_and_the_working_folder_wins(elsewhere, tmp_path):
    user = tmp_path / "config" / "loom"
    user.mkdir(parents=True)
    (user / "loom.toml").write_text('[run]\ndevice = "cpu"\ndtype = "float16"\n[server]\nport = 9000\n')
    (elsewhere / "loom.toml").write_text('[run]\ndtype = "bfloat16"\n')
    config = load_config()
    assert (config.run.device, config.run.dtype, config.server.port) == ("cpu", "bfloat16", 9000)


@pytest.mark.parametrize("text, expected", [
    ('[model]\ndirs = []\n', "unknown section [model]"),
    ('[models]\nfolders = []\n', "unknown key 'folders' in [models]"),
    ('[server]\nport = "80"\n', "server.port must be a whole number"),
    ('[models\n', "not valid TOML"),
])
def test_a_bad_config_names_the_file_and_key(elsewhere, capsys, text, expected):
    (elsewhere / "loom.toml").write_text(text)
    with pytest.raises(ConfigError, match="loom.toml"):
        load_config()
    assert main(["validate", TXT2IMG]) == 2
    assert expected in capsys.readouterr().err


def test_a_configured_folder_that_does_not_exist_is_an_error(elsewhere, capsys):
    (elsewhere / "loom.toml").write_text('[models]\ndirs = ["gone"]\n')
    assert main(["validate", TXT2IMG]) == 2
    assert "gone does not exist (from models.dirs in" in capsys.readouterr().err


def test_python_api_takes_the_same_settings(elsewhere):
    from engine import Executor, Graph, Settings

    folder = a_models_folder(elsewhere)
    executor = Executor(settings=Settings(models_dirs=[folder, ROOT / "models"]))
    graph = Graph.load(TXT2IMG)
    assert executor.check(graph, {"model": "mine"}).outputs == ["save"]
    assert Settings().models_dirs == [ROOT / "models"]   # the project's folder, from anywhere


def test_serve_keeps_its_data_in_the_user_data_folder_not_the_working_one(elsewhere, tmp_path,
                                                                         monkeypatch):
    import server.main

    seen = {}
    monkeypatch.setattr(server.main, "serve", lambda **kwargs: seen.update(kwargs))
    assert main(["serve"]) == 0
    assert seen["data_dir"] == tmp_path / "data" / "loom"          # $XDG_DATA_HOME/loom
    assert seen["settings"].output_dir == tmp_path / "data" / "loom" / "outputs"
    assert not any(elsewhere.iterdir())                               # nothing in the working folder
    (elsewhere / "loom.toml").write_text('[server]\ndata_dir = "served"\nport = 9999\n')
    assert main(["serve"]) == 0
    assert (seen["data_dir"], seen["port"]) == ((elsewhere / "served").resolve(), 9999)
