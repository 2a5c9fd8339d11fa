import pytest

from engine import Executor

from .helpers import registry as make_registry


@pytest.fixture(scope="session")
def registry():
    return make_registry()


@pytest.fixture
def executor(registry):
    return Executor(registry=registry)
