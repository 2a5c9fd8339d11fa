"""A training loop that survives being stopped.

Training runs in chunks (`--minutes N` per invocation) on a shared CPU, so the
loop checkpoints every couple of minutes and on SIGTERM, and a rerun continues
from the last checkpoint. Batches are drawn from a generator seeded by
(seed, step), so a resumed run sees exactly the batches an unbroken run would.
"""

import copy
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

SAVE_EVERY_SECONDS = 120


class Ema:
    """Exponential moving average of a module's weights, with the usual warm-up
    so early averages are not dominated by the random initialisation."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.averaged = copy.deepcopy(module).requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for averaged, current in zip(self.averaged.parameters(), module.parameters()):
            averaged.lerp_(current, 1 - decay)

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.updates = state["updates"]


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, floor: float = 0.05):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def checkpoint_path(stage_dir: Path) -> Path:
    return stage_dir / "checkpoint.pt"


def load_checkpoint(stage_dir: Path) -> dict | None:
    path = checkpoint_path(stage_dir)
    return torch.load(path, weights_only=False) if path.exists() else None


def run(
    stage_dir: Path,
    components: dict,
    train_step: Callable[[int], float],
    total_steps: int,
    minutes: float,
    log_every: int = 50,
) -> int:
    """Call train_step(step) until total_steps or the time budget runs out.

    components: name -> object with state_dict()/load_state_dict() (models,
    optimiser, LR schedule, EMA); all are saved together. Returns the step reached.
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    step, earlier_seconds = 0, 0.0
    saved = load_checkpoint(stage_dir)
    if saved is not None:
        for name, component in components.items():
            component.load_state_dict(saved[name])
        step, earlier_seconds = saved["step"], saved["seconds"]
        print(f"resuming at step {step}", flush=True)

    stop_requested = False

    def request_stop(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)

    def save():
        state = {name: component.state_dict() for name, component in components.items()}
        state["step"] = step
        # Training time, for the model card.
        state["seconds"] = earlier_seconds + time.monotonic() - started
        temporary = checkpoint_path(stage_dir).with_suffix(".tmp")
        torch.save(state, temporary)
        # Renaming is atomic: a stop mid-save never leaves a half-written checkpoint.
        temporary.replace(checkpoint_path(stage_dir))

    started = last_save = time.monotonic()
    deadline = started + minutes * 60
    running_loss, logged_steps, steps_this_run = 0.0, 0, 0
    while step < total_steps and not stop_requested and time.monotonic() < deadline:
        running_loss += train_step(step)
        logged_steps += 1
        steps_this_run += 1
        step += 1
        if step % log_every == 0:
            rate = steps_this_run / (time.monotonic() - started)
            print(
                f"step {step}/{total_steps} loss {running_loss / logged_steps:.5f} ({rate:.2f} steps/s)",
                flush=True,
            )
            running_loss, logged_steps = 0.0, 0
        if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
            save()
            last_save = time.monotonic()
    save()
    print(f"stopped at step {step}/{total_steps}", flush=True)
    return step
