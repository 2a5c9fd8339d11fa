"""on_device moves a module to the run's device only when it is elsewhere: a module's .to()
walks every parameter even when nothing moves, which cost a tenth of a tiny model's run."""
from types import SimpleNamespace

import torch

from engine import Settings
from nodes._common import on_device


class CountingLinear(torch.nn.Linear):
    def __init__(self, device: str):
        super().__init__(2, 2, device=device)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):
        self.moves.append(str(args[0]))
        return self


def ctx_on(device: str, **options):
    return SimpleNamespace(settings=Settings(device=device, options=options))


def test_a_module_already_on_the_device_is_not_moved():
    module = CountingLinear("cpu")
    with on_device(ctx_on("cpu"), module):
        pass
    assert module.moves == []


def test_a_module_elsewhere_is_moved_to_the_device():
    module = CountingLinear("meta")
    with on_device(ctx_on("cpu"), module):
        pass
    assert module.moves == ["cpu"]


def test_offloaded_modules_visit_the_device_and_go_back():
    module = CountingLinear("meta")
    with on_device(ctx_on("cuda:0", cpu_offload=True), module):
        assert module.moves == ["cuda:0"]
    assert module.moves == ["cuda:0", "cpu"]
