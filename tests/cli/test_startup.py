"""The commands that only read graphs and the catalogue start without the heavy libraries:
torch, diffusers, transformers and numpy load when a node runs, never to list or check nodes."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "numpy")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def heavy_modules_after(body: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `body`."""
    code = PROBE.format(body=body, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_the_node_catalogue_loads_without_torch():
    loaded = heavy_modules_after(
        "from engine import Registry\n"
        "registry = Registry.default()\n"
        "assert 'sample' in registry and 'load_checkpoint' in registry\n"
        "json.dumps(registry.catalogue())\n")
    assert loaded == [], f"importing the node catalogue imported {loaded}; import them inside the node"


def test_listing_and_validating_load_no_model_library():
    loaded = heavy_modules_after(
        "import contextlib, io\n"
        "from engine.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['nodes']) == 0\n"
        "    assert main(['validate', 'graphs/txt2img.json']) == 0\n")
    assert loaded == [], f"`loom nodes` / `loom validate` imported {loaded}"
