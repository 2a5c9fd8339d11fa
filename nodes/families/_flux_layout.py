"""FLUX transformer weights in Black Forest Labs' released key layout (`double_blocks.*`,
`single_blocks.*`, `img_in`, ... as in flux1-dev.safetensors and most GGUF files) renamed to
diffusers' FluxTransformer2DModel layout.

diffusers converts this layout itself, but with the released model's width written in
(3072, MLP 4x), so a FLUX-architecture transformer of another width does not load through
it; here every size comes from the model's config and the file's own shapes. Works on plain
tensors and on diffusers' GGUFParameter (rows of quantized blocks split like any rows).
"""
from __future__ import annotations

import re

__all__ = ["is_bfl_layout", "bfl_to_diffusers"]

_PREFIX = "model.diffusion_model."   # files saved by ComfyUI nest the transformer under it

TOP = {
    "time_in.in_layer.": "time_text_embed.timestep_embedder.linear_1.",
    "time_in.out_layer.": "time_text_embed.timestep_embedder.linear_2.",
    "vector_in.in_layer.": "time_text_embed.text_embedder.linear_1.",
    "vector_in.out_layer.": "time_text_embed.text_embedder.linear_2.",
    "guidance_in.in_layer.": "time_text_embed.guidance_embedder.linear_1.",
    "guidance_in.out_layer.": "time_text_embed.guidance_embedder.linear_2.",
    "txt_in.": "context_embedder.", "img_in.": "x_embedder.",
    "final_layer.linear.": "proj_out.",
    "final_layer.adaLN_modulation.1.": "norm_out.linear.",
}
DOUBLE = {
    "img_mod.lin.": "norm1.linear.", "txt_mod.lin.": "norm1_context.linear.",
    "img_attn.qkv.": ("attn.to_q.", "attn.to_k.", "attn.to_v."),
    "txt_attn.qkv.": ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."),
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0.": "ff.net.0.proj.", "img_mlp.2.": "ff.net.2.",
    "txt_mlp.0.": "ff_context.net.0.proj.", "txt_mlp.2.": "ff_context.net.2.",
    "img_attn.proj.": "attn.to_out.0.", "txt_attn.proj.": "attn.to_add_out.",
}
SINGLE = {
    "modulation.lin.": "norm.linear.",
    "linear1.": ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp."),
    "norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2.": "proj_out.",
}
BLOCKS = {"double_blocks": ("transformer_blocks", DOUBLE), "single_blocks": ("single_transformer_blocks", SINGLE)}
# diffusers' AdaLayerNormContinuous reads (scale, shift) where the released model has (shift, scale)
SWAPPED = {"norm_out.linear."}
_BLOCK_KEY = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.*)$")


def is_bfl_layout(keys) -> bool:
    return any(k.removeprefix(_PREFIX).startswith("double_blocks.") for k in keys)


def _rename(rest: str, table: dict) -> tuple[str, str | tuple[str, ...]]:
    """(BFL prefix, diffusers name or names) of the longest table entry `rest` starts with."""
    for src in sorted(table, key=len, reverse=True):
        if rest.startswith(src):
            return src, table[src]
    raise KeyError(rest)


def _split(value, parts: tuple[str, ...], inner_dim: int):
    """Fused projections split along their rows: q, k, v of `inner_dim` each, then the MLP's rest."""
    import torch

    sizes = [inner_dim] * 3 + ([value.shape[0] - 3 * inner_dim] if len(parts) == 4 else [])
    return torch.split(value, sizes, dim=0)


def bfl_to_diffusers(state: dict, inner_dim: int, source: str = "file") -> dict:
    """`state` (BFL key layout) in diffusers' FluxTransformer2DModel layout; `inner_dim` is the
    attention width (num_attention_heads * attention_head_dim). A key of no known kind raises
    ValueError naming it."""
    import torch

    out = {}
    for key, value in state.items():
        name = key.removeprefix(_PREFIX)
        block = _BLOCK_KEY.match(name)
        try:
            if block:
                kind, index, rest = block.groups()
                head, table = BLOCKS[kind]
                src, dst = _rename(rest, table)
                head, tail = f"{head}.{index}.", rest[len(src):]
            else:
                src, dst = _rename(name, TOP)
                head, tail = "", name[len(src):]
        except KeyError:
            raise ValueError(f"{source}: {key} is not a FLUX transformer weight in Black Forest Labs' "
                             "layout") from None
        if isinstance(dst, tuple):
            for part, piece in zip(dst, _split(value, dst, inner_dim)):
                out[head + part + tail] = piece
            continue
        if dst in SWAPPED:
            shift, scale = value.chunk(2, dim=0)
            value = torch.cat([scale, shift], dim=0)
        out[head + dst + tail] = value
    return out
