"""Nodes that write files are never served from the cache: each run writes files of its own,
which exist and carry that run's graph; everything upstream of them stays cached."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image as PILImage

from ..conftest import load_graph

FAST = {"model": "tiny-sd", "steps": 2}


def embedded(path: str) -> dict:
    with PILImage.open(path) as image:
        return json.loads(image.text["loom"])


def test_a_deleted_output_is_written_again_and_carries_the_rerun_graph(executor):
    graph = load_graph("txt2img.json")
    first = executor.run(graph, params=FAST)
    written = Path(first.outputs["save"]["files"][0])
    written.unlink()                                      # the user deletes the image
    graph.meta = {"title": "second run"}
    second = executor.run(graph, params=FAST)
    assert second.ran == ["save"]                         # the image itself comes from the cache
    again = Path(second.outputs["save"]["files"][0])
    assert again.is_file()
    assert embedded(str(again))["meta"] == {"title": "second run"}


def test_two_submissions_of_one_graph_get_files_of_their_own(executor):
    graph = load_graph("txt2img.json")
    files = [executor.run(graph, params=FAST).outputs["save"]["files"][0] for _ in range(2)]
    assert files[0] != files[1] and all(Path(f).is_file() for f in files)
