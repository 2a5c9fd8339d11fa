"""A local Ray for the Ray tests, started once for the session: two logical GPUs on this CPU
machine, few CPUs, loopback only, dashboard off, its files in a short temp folder."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SERVER_TESTS = HERE.parent / "server"
for folder in (HERE, SERVER_TESTS):     # test node packs the workers import too
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from engine.ray_backend import import_ray  # noqa: E402

ray = import_ray()   # first, so Ray is imported with its loopback settings (the ray extra)


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of a Ray this test process started (it is the driver of in-process servers)."""
    from engine.ray_backend import connect

    temp = Path(tempfile.mkdtemp(prefix="loom-rt-"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(SERVER_TESTS),
                                                str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])
    connect(temp_dir=temp, num_cpus=2, num_gpus=2, namespace="loom-tests")
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), f"Ray must stay on loopback, not {address}"
    yield address
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
