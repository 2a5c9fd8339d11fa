"""LoRA adapters on shared modules come and go: many LoRAs over time never pile up on the UNet,
and their state dicts never sit in the model manager beside the checkpoints."""
from __future__ import annotations


from nodes import lora as lora_module
from nodes.loaders import load_checkpoint_handles, load_lora
from nodes.text import encode_text


def test_idle_adapters_are_removed_from_the_shared_modules(ctx, models_dir):
    from safetensors.torch import load_file, save_file

    fixture = models_dir / "loras" / "lcm-lora-wiring-fixture.safetensors"
    state = load_file(str(fixture))
    names = []
    for i in range(lora_module.IDLE_ADAPTERS + 4):   # distinct content, so distinct adapters
        name = f"lifetime-{i}.safetensors"
        save_file({k: v * (1 + i / 100) for k, v in state.items()}, str(models_dir / "loras" / name))
        names.append(name)
    try:
        model, te, _ = load_checkpoint_handles(ctx, "tiny-sd")
        loaded_before = len(ctx.models)
        for name in names:
            patched, patched_te = load_lora(ctx, model, te, name)
            lora_module.activate_unet(patched)
            encode_text(ctx, patched_te, "a red circle")
            assert len(lora_module._loaded(model.unet)) <= lora_module.IDLE_ADAPTERS + 1
        assert len(ctx.models) == loaded_before                 # no state dict in the manager
        peft_layers = {n for m in model.unet.modules() for n in getattr(m, "lora_A", {})}
        assert peft_layers == set(lora_module._loaded(model.unet))   # deleted from the layers too
        lora_module.activate_unet(model)                             # the base handle: all off
    finally:
        for name in names:
            (models_dir / "loras" / name).unlink(missing_ok=True)
