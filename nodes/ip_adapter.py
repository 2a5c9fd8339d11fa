"""IP-Adapter: image prompts as a model patch.

Three nodes: `load_ip_adapter` (weights from models/ipadapter plus a CLIP vision encoder
from models/clip_vision), `encode_ip_image` (the reference images' CLIP features: a node
of its own, so editing the text prompt never re-encodes the image), and
`apply_ip_adapter` (returns a copy of the model handle with an IP-Adapter hook).

How it reaches the UNet without changing the shared module's behaviour: the first apply
installs, on the shared UNet, attention processors that compute exactly what diffusers'
AttnProcessor2_0 does unless the call carries a `loom_ip` cross-attention argument; the
hook supplies that argument at every step (the image tokens, scales and to_k_ip/to_v_ip
weights of every adapter applied), and the processors add the decoupled image attention
the way diffusers' IPAdapterAttnProcessor2_0 does. Several adapters (or several applies of
one) become one hook with several entries; several reference images for one adapter are
concatenated as tokens, as diffusers does.

Variants: plain (ImageProjection), plus (Resampler on the encoder's penultimate hidden
states) and full-face load through diffusers' own converter of the `image_proj` weights.
The FaceID variants need face embeddings from insightface, which is not part of Loom.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.models import file_digest
from engine.node import node

from engine.settings import Settings
from engine.types import model_name

from ._common import PICKLE_SUFFIXES, fingerprint_model, no_grad, read_state_dict, resolve_model, torch_dtype
from .control_types import ImageEmbeds, IPAdapter
from .families import family
from .types import DiffusionModel, Image, StepInfo

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

def _read_state(ctx: Context, path) -> dict:
    flat = read_state_dict(ctx.settings, path)
    if path.suffix in PICKLE_SUFFIXES:  # pickles already nest {"image_proj": ..., "ip_adapter": ...}
        state = flat
    else:
        state = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            head, _, rest = key.partition(".")
            if head in state:
                state[head][rest] = value
    if not state.get("image_proj") or not state.get("ip_adapter"):
        raise NodeInputError("name", f"{path.name} has no image_proj / ip_adapter weights (not an IP-Adapter)")
    return state


def _variant(projection) -> str:
    return {"ImageProjection": "plain", "IPAdapterPlusImageProjection": "plus",
            "IPAdapterFullImageProjection": "full_face"}.get(type(projection).__name__, type(projection).__name__)


def _ip_fingerprint(name: str, clip_vision: str, settings: Settings, **_) -> str:
    return (fingerprint_model(settings, "ipadapter", name) + "|"
            + fingerprint_model(settings, "clip_vision", clip_vision))


@node("load_ip_adapter", category="ip_adapter", version=1, fingerprint=_ip_fingerprint,
      output="ip_adapter")
def load_ip_adapter(ctx: Context, name: model_name("ipadapter"), clip_vision: model_name("clip_vision")) -> IPAdapter:
    """Load IP-Adapter weights (models/ipadapter, .safetensors with image_proj.* / ip_adapter.*
    keys, or a .bin with allow_pickle) and the CLIP vision encoder they were trained with
    (a CLIPVisionModelWithProjection folder in models/clip_vision)."""
    path = resolve_model(ctx, "ipadapter", name)
    enc_path = resolve_model(ctx, "clip_vision", clip_vision, "clip_vision")
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    identity = f"{file_digest(path)}|{file_digest(enc_path)}|{device}|{dtype}"

    def load():
        from diffusers.loaders.unet import UNet2DConditionLoadersMixin
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        state = _read_state(ctx, path)
        try:
            projection = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
                None, state["image_proj"], low_cpu_mem_usage=False)
        except Exception as exc:  # noqa: BLE001 - an unknown projection layout
            raise NodeInputError("name", f"{path.name}: unknown image projection layout: {exc}") from None
        keys = sorted({int(k.split(".")[0]) for k in state["ip_adapter"]})
        layers = [(state["ip_adapter"][f"{k}.to_k_ip.weight"].to(dtype), state["ip_adapter"][f"{k}.to_v_ip.weight"].to(dtype))
                  for k in keys if f"{k}.to_k_ip.weight" in state["ip_adapter"]]
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(enc_path, local_files_only=True, torch_dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - not a CLIP vision folder
            raise NodeInputError("clip_vision", f"{enc_path.name}: cannot load a CLIP vision encoder: {exc}") from None
        if (enc_path / "preprocessor_config.json").is_file():
            processor = CLIPImageProcessor.from_pretrained(enc_path, local_files_only=True)
        else:
            size = encoder.config.image_size
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        projection = projection.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return projection, layers, encoder.to(device).eval().requires_grad_(False), processor

    projection, layers, encoder, processor = ctx.models.get(("ip_adapter", identity), load)
    variant = _variant(projection)
    return IPAdapter(projection, layers, encoder, processor, hidden_states=variant != "plain", variant=variant,
                     identity=f"ip_adapter:{identity}", device=device, dtype=dtype)


# ---------------------------------------------------------------------------
# image embeddings
# ---------------------------------------------------------------------------

@no_grad
def encode_images(ip: IPAdapter, images: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds, negative) for PIL images, as diffusers' encode_image computes them."""
    import torch
    x = ip.processor(images, return_tensors="pt").pixel_values.to(ip.device, ip.encoder.dtype)
    if ip.hidden_states:
        pos = ip.encoder(x, output_hidden_states=True).hidden_states[-2]
        neg = ip.encoder(torch.zeros_like(x), output_hidden_states=True).hidden_states[-2]
    else:
        pos = ip.encoder(x).image_embeds
        neg = torch.zeros_like(pos)
    return pos.float().cpu(), neg.float().cpu()


@node("encode_ip_image", category="ip_adapter", version=1)
def encode_ip_image(ip_adapter: IPAdapter, image: Image) -> ImageEmbeds:
    """CLIP vision features of the reference image(s) (every image of the batch is one
    reference). Cached on its own: a new text prompt does not re-encode the image."""
    from .image import image_to_pil

    pos, neg = encode_images(ip_adapter, [image_to_pil(image, i) for i in range(image.batch)])
    return ImageEmbeds(pos, neg, adapter=ip_adapter.identity)


@node("combine_image_embeds", category="ip_adapter", version=1)
def combine_image_embeds(a: ImageEmbeds, b: ImageEmbeds) -> ImageEmbeds:
    """Use the reference images of both as one set (same adapter)."""
    import torch
    if a.adapter != b.adapter or a.embeds.shape[1:] != b.embeds.shape[1:]:
        raise NodeInputError("b", "the embeddings were made for different IP-Adapters")
    return ImageEmbeds(torch.cat([a.embeds, b.embeds]), torch.cat([a.negative, b.negative]), a.adapter)


# ---------------------------------------------------------------------------
# the patch: attention processors on the shared UNet, driven by a hook
# ---------------------------------------------------------------------------

class LoomAttnProcessor:
    """diffusers' AttnProcessor2_0, plus IP-Adapter image attention when `loom_ip` is given."""

    def __init__(self, cross_index: int | None):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.base = AttnProcessor2_0()
        self.cross_index = cross_index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 loom_ip=None, *args, **kwargs):
        import torch.nn.functional as F
        if loom_ip is None or self.cross_index is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        # the same steps as diffusers' IPAdapterAttnProcessor2_0, with the adapter weights passed in
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(t):
            return t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(t):
            return t.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        query = heads(query)
        hidden_states = merge(F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask,
                                                             dropout_p=0.0, is_causal=False))
        for tokens, scale, layers in loom_ip:
            if scale == 0:
                continue
            k_w, v_w = layers[self.cross_index]
            ip_key = heads(F.linear(tokens, k_w.to(tokens)))
            ip_value = heads(F.linear(tokens, v_w.to(tokens)))
            ip = merge(F.scaled_dot_product_attention(query, ip_key, ip_value, attn_mask=None, dropout_p=0.0,
                                                      is_causal=False))
            hidden_states = hidden_states + scale * ip
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_processors(unet) -> int:
    """Put LoomAttnProcessor on every attention layer of the UNet (once); the number of
    cross-attention layers, in attn_processors order (the order of the ip_adapter weights)."""
    if getattr(unet, "_loom_ip_layers", None) is not None:
        return unet._loom_ip_layers
    procs, cross = {}, 0
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = LoomAttnProcessor(None)
        else:
            procs[name] = LoomAttnProcessor(cross)
            cross += 1
    unet.set_attn_processor(procs)
    unet._loom_ip_layers = cross
    return cross


@dataclasses.dataclass
class IPEntry:
    adapter: IPAdapter
    embeds: ImageEmbeds
    scale: float


class IPAdapterHook:
    """Supplies the `loom_ip` cross-attention argument: per adapter, image tokens batched like
    the UNet input (negatives first under CFG), the scale, and the per-layer weights."""

    def __init__(self, entries: list[IPEntry]):
        self.entries = entries
        self._tokens: dict = {}

    def _project(self, entry: IPEntry, embeds: torch.Tensor) -> torch.Tensor:
        import torch
        ip = entry.adapter
        with torch.no_grad():
            tokens = ip.projection(embeds.to(ip.device, ip.dtype))       # [N, T, X]
        return tokens.reshape(1, -1, tokens.shape[-1])                    # the images' tokens, concatenated

    def __call__(self, model: DiffusionModel, step: StepInfo) -> dict:
        import torch
        rows = step.sample.shape[0]
        payload = []
        for i, entry in enumerate(self.entries):
            key = (i, rows, step.cfg_batched)
            if key not in self._tokens:
                pos = self._project(entry, entry.embeds.embeds)
                if step.cfg_batched:
                    neg = self._project(entry, entry.embeds.negative)
                    half = rows // 2
                    tokens = torch.cat([neg.expand(half, -1, -1), pos.expand(half, -1, -1)])
                else:
                    tokens = pos.expand(rows, -1, -1)
                self._tokens[key] = tokens.to(model.unet.dtype)
            payload.append((self._tokens[key], entry.scale, entry.adapter.layers))
        return {"cross_attention_kwargs": {"loom_ip": payload}}


@node("apply_ip_adapter", category="ip_adapter", version=1)
def apply_ip_adapter(model: DiffusionModel, ip_adapter: IPAdapter, embeds: ImageEmbeds,
                     scale: Annotated[float, Field(ge=0, le=5)] = 0.6) -> DiffusionModel:
    """Patch the model with an image prompt at `scale` (0 = off, 1 = full strength). Chain it
    for several adapters or reference sets; it combines with ControlNet patches freely."""
    if embeds.adapter and embeds.adapter != ip_adapter.identity:
        raise NodeInputError("embeds", "these image embeddings were made with another IP-Adapter / encoder")
    fam = family(model.family)
    if fam.denoiser[0] != "unet":   # before install_processors: they would replace a transformer's own
        raise NodeInputError("model", f"IP-Adapter applies to UNet models (SD 1.x, 2.x, SDXL); {fam.label} "
                                      "has a transformer")
    layers = install_processors(model.unet)
    if layers != len(ip_adapter.layers):
        raise NodeInputError("ip_adapter", f"the IP-Adapter has weights for {len(ip_adapter.layers)} "
                                           f"cross-attention layers, the model has {layers} (wrong model family?)")
    width = ip_adapter.layers[0][0].shape[1]
    if width != model.unet.config.cross_attention_dim:
        raise NodeInputError("ip_adapter", f"the IP-Adapter expects cross-attention width {width}, "
                                           f"the model has {model.unet.config.cross_attention_dim}")
    entry = IPEntry(ip_adapter, embeds, scale)
    hooks = list(model.hooks)
    for i, hook in enumerate(hooks):
        if isinstance(hook, IPAdapterHook):       # one hook carries every adapter
            hooks[i] = IPAdapterHook([*hook.entries, entry])
            return dataclasses.replace(model, hooks=hooks)
    return model.with_patch(hooks=[IPAdapterHook([entry])])
