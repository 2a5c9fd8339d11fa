"""LoRA activation: the adapters a handle names are switched on around each use of its modules.

The UNet and text encoders in memory are shared by every handle loaded from the same
checkpoint, so a LoRA is never fused into them. Each LoRA file is loaded once per module
as a peft adapter (named after its content digest); before a node uses a module it calls
`activate_*`, which enables exactly the handle's adapters with the handle's strengths
(or disables all adapters for a handle without LoRAs). A module keeps at most
`IDLE_ADAPTERS` adapters that the current use does not need, the least recently used going
first, so a server that sees many LoRAs does not grow its shared modules without bound.
A LoRA's state dict is read when its adapter is created and then let go: the weights live
in the adapter, not in the model manager beside the checkpoints.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from engine.context import Context
from engine.errors import NodeInputError

from .types import DiffusionModel, LoraSpec, TextEncoder

_lock = threading.RLock()
_TE_PREFIXES = ("text_encoder", "text_encoder_2")
IDLE_ADAPTERS = 4


def _adapter_name(spec: LoraSpec) -> str:
    return "lora_" + spec.digest[:16]


def _state_dict(spec: LoraSpec, family: str) -> tuple[dict, Any, dict | None]:
    """(state dict in diffusers' key layout, network alphas, adapter metadata) of a LoRA file:
    kohya / A1111 files are converted by the family's diffusers loader, which also returns the
    alphas they carry; files saved by diffusers record lora_alpha and the rank in metadata."""
    import inspect

    import diffusers.loaders

    from .families import family as family_of

    loader = getattr(diffusers.loaders, family_of(family).lora_loader)
    if "return_alphas" in inspect.signature(loader.lora_state_dict).parameters:   # FLUX's loader
        return loader.lora_state_dict(spec.path, return_alphas=True, return_lora_metadata=True)
    out = loader.lora_state_dict(spec.path, return_lora_metadata=True)
    return out if len(out) == 3 else (out[0], None, out[1])                      # SD3's: no alphas


def check_lora(ctx: Context, spec: LoraSpec, family: str = "sd1") -> None:
    """Fail early (naming the input) when the file is not a LoRA diffusers can read for the family."""
    try:
        state, _, _ = _state_dict(spec, family)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise NodeInputError("name", f"{spec.name} is not a LoRA file diffusers can read: {exc}") from None
    if not any(k.startswith(("unet.", "transformer.", *[p + "." for p in _TE_PREFIXES])) for k in state):
        raise NodeInputError("name", f"{spec.name} holds no denoiser or text-encoder LoRA weights")


def _loaded(module: Any) -> OrderedDict:
    """Adapter names on a shared module, least recently used first."""
    if not hasattr(module, "_loom_adapters"):
        module._loom_adapters = OrderedDict()
    return module._loom_adapters


def _retire_idle(module: Any, active: list[str], delete) -> None:
    """Mark `active` as just used and delete the oldest adapters beyond IDLE_ADAPTERS unused ones."""
    loaded = _loaded(module)
    for name in active:
        loaded.move_to_end(name)
    idle = [name for name in loaded if name not in active]
    for name in idle[:max(0, len(idle) - IDLE_ADAPTERS)]:
        delete(name)
        del loaded[name]


def _load_into_denoiser(family_name: str, state: dict, alphas: Any, metadata: dict | None, denoiser: Any,
                        name: str) -> None:
    """One LoRA's denoiser weights into the shared UNet or transformer as a peft adapter."""
    import inspect

    import diffusers.loaders

    from .families import family

    fam = family(family_name)
    if fam.denoiser[0] == "unet":
        diffusers.loaders.StableDiffusionLoraLoaderMixin.load_lora_into_unet(
            state, alphas, unet=denoiser, adapter_name=name, metadata=metadata)
        return
    loader = getattr(diffusers.loaders, fam.lora_loader)
    extra = {"network_alphas": alphas} if "network_alphas" in inspect.signature(
        loader.load_lora_into_transformer).parameters else {}
    loader.load_lora_into_transformer(state, transformer=denoiser, adapter_name=name, metadata=metadata, **extra)


def activate_unet(model: DiffusionModel) -> None:
    """Enable exactly `model.loras` (with strength_model) on the shared denoiser (UNet or transformer)."""
    from .families import family

    unet = model.unet
    prefix = family(model.family).denoiser[0] + "."
    with _lock:
        active = [s for s in model.loras if s.strength_model != 0]
        for spec in active:
            name = _adapter_name(spec)
            if name not in _loaded(unet):
                state, alphas, metadata = _state_dict(spec, model.family)
                unet_state = {k: v for k, v in state.items() if k.startswith(prefix)}
                if not unet_state:
                    continue
                _load_into_denoiser(model.family, unet_state, alphas, metadata, unet, name)
                _loaded(unet)[name] = None
        names = [_adapter_name(s) for s in active if _adapter_name(s) in _loaded(unet)]
        _retire_idle(unet, names, unet.delete_adapters)
        if names:
            unet.enable_lora()
            unet.set_adapters(names, weights=[s.strength_model for s in active
                                              if _adapter_name(s) in _loaded(unet)])
        elif _loaded(unet):
            unet.disable_lora()


def activate_text_encoders(te: TextEncoder) -> None:
    """Enable exactly `te.loras` (with strength_clip) on each shared text encoder."""
    from diffusers.loaders.lora_base import (delete_adapter_layers, disable_lora_for_text_encoder,
                                             enable_lora_for_text_encoder, set_adapters_for_text_encoder)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    with _lock:
        active = [s for s in te.loras if s.strength_clip != 0]
        from .families import family

        slots = family(te.family).text
        # each encoder's LoRA prefix is its diffusers subfolder, found by role: an encoder may be missing
        prefixes = ([next(s.encoder for s in slots if s.role == role) for role in te.roles] if te.roles
                    else [slot.encoder for slot in slots])
        for prefix, encoder in zip(prefixes, te.encoders):
            for spec in active:
                name = _adapter_name(spec)
                if name in _loaded(encoder):
                    continue
                state, alphas, metadata = _state_dict(spec, te.family)
                if not any(k.startswith(prefix + ".") for k in state):
                    continue
                StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                    state, alphas, encoder, prefix=prefix, adapter_name=name, metadata=metadata)
                _loaded(encoder)[name] = None
            usable = [s for s in active if _adapter_name(s) in _loaded(encoder)]
            _retire_idle(encoder, [_adapter_name(s) for s in usable],
                         lambda name, encoder=encoder: delete_adapter_layers(encoder, name))
            if usable:
                enable_lora_for_text_encoder(encoder)
                set_adapters_for_text_encoder([_adapter_name(s) for s in usable], encoder,
                                              [s.strength_clip for s in usable])
            elif _loaded(encoder):
                disable_lora_for_text_encoder(encoder)
