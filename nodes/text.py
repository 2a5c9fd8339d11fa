"""Text encoding: prompts to Conditioning, with A1111-style weights and prompts of any length.

Weights: `(word:1.3)` multiplies a fragment's weight, `(word)` by 1.1, `[word]` divides by
1.1, `\\(` and `\\)` are literal brackets. Weighted token embeddings are scaled and the chunk
rescaled to its original mean (A1111's method); a prompt with no weights encodes exactly as
diffusers' pipelines encode it. Long prompts are split into chunks of the tokenizer's
context length (BOS + up to L-2 tokens + EOS + padding), encoded separately and
concatenated along the token axis.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.context import Context
from engine.node import node

from ._common import no_grad
from .families import family
from .lora import activate_text_encoders
from .types import Conditioning, TextEncoder

if TYPE_CHECKING:
    import torch

_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """[(fragment, weight)] for an A1111-style weighted prompt; adjacent equal weights merged."""
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\") and len(token) > 1:
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply(square_brackets.pop(), 1 / 1.1)
        else:
            res.append([token, 1.0])
    for pos in round_brackets:
        multiply(pos, 1.1)
    for pos in square_brackets:
        multiply(pos, 1 / 1.1)
    merged: list[list] = []
    for frag, w in res:
        if merged and merged[-1][1] == w:
            merged[-1][0] += frag
        else:
            merged.append([frag, w])
    return [(f, w) for f, w in merged] or [("", 1.0)]


def _tokens(tokenizer, fragments: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    weights: list[float] = []
    for frag, w in fragments:
        frag_ids = tokenizer(frag, truncation=False, add_special_tokens=False).input_ids
        ids += frag_ids
        weights += [w] * len(frag_ids)
    return ids, weights


def _chunks(tokenizer, ids: list[int], weights: list[float]) -> list[tuple[list[int], list[float]]]:
    length = tokenizer.model_max_length
    room = length - 2
    out = []
    for start in range(0, max(len(ids), 1), room):
        part, part_w = ids[start:start + room], weights[start:start + room]
        pad = length - 2 - len(part)
        out.append(([tokenizer.bos_token_id, *part, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * pad],
                    [1.0, *part_w, 1.0, *[1.0] * pad]))
    return out


def _hidden(te: TextEncoder, encoder, ids: torch.Tensor, sdxl: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(token embeddings, pooled or None) of one chunk, choosing the layer as the pipelines do."""
    out = encoder(ids, output_hidden_states=True)
    if sdxl:
        pooled = out[0] if out[0].ndim == 2 else None
        return out.hidden_states[-(te.clip_skip + 2)], pooled
    if te.clip_skip:
        hidden = out.hidden_states[-(te.clip_skip + 1)]
        # transformers 5's CLIPTextModel holds final_layer_norm itself (4.x: under .text_model)
        final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
        return final_norm(hidden), None
    return out[0], None


def _apply_weights(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    import torch
    if all(w == 1.0 for w in weights):
        return z
    w = torch.tensor(weights, dtype=z.dtype, device=z.device)[None, :, None]
    original_mean = z.mean()
    z = z * w
    return z * (original_mean / z.mean())


@no_grad
def encode_prompt(te: TextEncoder, text: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(embeds [1, T, D], pooled [1, P] or None, pad chunk [1, L, D] or None) for one prompt."""
    import torch
    activate_text_encoders(te)
    sdxl = family(te.family).clip_layer == "penultimate"
    fragments = parse_weights(text)
    per_encoder, pooled, pad = [], None, []
    for tokenizer, encoder in zip(te.tokenizers, te.encoders):
        ids, weights = _tokens(tokenizer, fragments)
        chunks = _chunks(tokenizer, ids, weights)
        encoded = []
        for n, (chunk_ids, chunk_w) in enumerate(chunks):
            ids_t = torch.tensor([chunk_ids], device=encoder.device)
            z, pool = _hidden(te, encoder, ids_t, sdxl)
            if pool is not None and n == 0:
                pooled = pool
            encoded.append(_apply_weights(z, chunk_w))
        per_encoder.append(torch.cat(encoded, dim=1))
        if len(chunks) > 1:
            empty_ids = torch.tensor([_chunks(tokenizer, [], [])[0][0]], device=encoder.device)
            pad.append(_hidden(te, encoder, empty_ids, sdxl)[0])
    embeds = torch.cat(per_encoder, dim=-1)
    pad_chunk = torch.cat(pad, dim=-1) if pad else None
    return embeds, pooled, pad_chunk


def _to_cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().cpu()


ClipSkip = Annotated[int, Field(ge=0, le=24, description="layers to skip from the end: 0 = the model's "
                                                         "default layer, 1 = one earlier (A1111's 'Clip skip: 2')")]


@node("encode_text", category="conditioning", version=1)
def encode_text(ctx: Context, text_encoder: TextEncoder, text: str, clip_skip: ClipSkip = 0) -> Conditioning:
    """Encode a prompt with the checkpoint's text encoder(s). Supports `(word:1.3)` weights and
    prompts longer than the encoder's context (encoded in chunks). The model family decides how
    its encoders form the conditioning: SDXL uses both CLIPs with default micro-conditioning
    (the sampled image size); SD3 uses CLIP-L, CLIP-G and T5-XXL (pooled + sequence); FLUX
    uses CLIP-L's pooled embedding and T5-XXL's tokens. clip_skip takes the prompt from an
    earlier layer, as diffusers' pipelines' `clip_skip` does."""
    if clip_skip:
        layers = min(e.config.num_hidden_layers for e in text_encoder.encoders)
        if clip_skip >= layers:
            from engine.errors import NodeInputError
            raise NodeInputError("clip_skip", f"clip_skip {clip_skip} skips every layer of a "
                                              f"{layers}-layer text encoder")
        text_encoder = text_encoder.with_patch(clip_skip=clip_skip)
    _warn_unknown_words(ctx, text_encoder, text)
    return family(text_encoder.family).function("encode")(ctx, text_encoder, text)


def _warn_unknown_words(ctx: Context, text_encoder: TextEncoder, text: str) -> None:
    """Say when a prompt uses words the model does not know (it would ignore them silently)."""
    from ._vocabulary import unknown_words

    found = unknown_words(text_encoder.tokenizers[0], text) if text_encoder.tokenizers else None
    if found and found[0]:
        words, known = found
        ctx.log.warning("the prompt's %s not known to this model, which ignores %s; it knows: %s",
                        ", ".join(repr(w) for w in words) + (" is" if len(words) == 1 else " are"),
                        "it" if len(words) == 1 else "them", ", ".join(sorted(known)))


def encode_clip(ctx: Context, text_encoder: TextEncoder, text: str) -> Conditioning:
    """CLIP conditioning of the UNet families: each encoder's hidden states side by side, SDXL's
    pooled embeddings from the last one."""
    from ._common import on_device

    with on_device(ctx, *text_encoder.encoders):
        embeds, pooled, pad = encode_prompt(text_encoder, text)
    return Conditioning(_to_cpu(embeds), _to_cpu(pooled), _to_cpu(pad), family=text_encoder.family, text=text)


@node("encode_text_sdxl", category="conditioning", version=1)
def encode_text_sdxl(ctx: Context, text_encoder: TextEncoder, text: str,
                     original_width: Annotated[int, Field(ge=0, le=16384)] = 0,
                     original_height: Annotated[int, Field(ge=0, le=16384)] = 0,
                     target_width: Annotated[int, Field(ge=0, le=16384)] = 0,
                     target_height: Annotated[int, Field(ge=0, le=16384)] = 0,
                     crop_top: Annotated[int, Field(ge=0, le=16384)] = 0,
                     crop_left: Annotated[int, Field(ge=0, le=16384)] = 0,
                     aesthetic_score: Annotated[float, Field(ge=0, le=10)] = 6.0,
                     clip_skip: ClipSkip = 0) -> Conditioning:
    """Encode a prompt for SDXL (both text encoders, pooled embeddings) with explicit
    micro-conditioning: original and target size (0 = the sampled image size), crop
    coordinates, and the refiner's aesthetic score; clip_skip as in encode_text."""
    from engine.errors import NodeInputError

    if not family(text_encoder.family).micro_conditioning:
        raise NodeInputError("text_encoder", f"encode_text_sdxl needs an SDXL text encoder, got {text_encoder.family}")
    cond = encode_text(ctx, text_encoder, text, clip_skip)
    return cond.replace(
        original_size=[original_height, original_width] if original_width and original_height else None,
        target_size=[target_height, target_width] if target_width and target_height else None,
        crop_coords=[crop_top, crop_left], aesthetic_score=aesthetic_score)


# ---------------------------------------------------------------------------
# combining conditionings
# ---------------------------------------------------------------------------

def pad_tokens(a: torch.Tensor, b: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [B, T, D] embeddings brought to the same T by appending empty-chunk encodings."""
    import torch
    def grow(x: torch.Tensor, length: int) -> torch.Tensor:
        if x.shape[1] >= length:
            return x
        chunk = pad if pad is not None else x[:, -1:, :].expand(-1, length - x.shape[1], -1)
        chunk = chunk.to(x)
        while x.shape[1] < length:
            x = torch.cat([x, chunk.expand(x.shape[0], -1, -1)], dim=1)
        return x[:, :length]
    length = max(a.shape[1], b.shape[1])
    return grow(a, length), grow(b, length)


@node("conditioning_average", category="conditioning", version=1)
def conditioning_average(a: Conditioning, b: Conditioning,
                         weight: Annotated[float, Field(ge=0, le=1)] = 0.5) -> Conditioning:
    """Blend two conditionings: weight * a + (1 - weight) * b (embeddings and pooled)."""
    ea, eb = pad_tokens(a.embeds, b.embeds, a.pad_chunk if a.pad_chunk is not None else b.pad_chunk)
    pooled = None
    if a.pooled is not None and b.pooled is not None:
        pooled = a.pooled * weight + b.pooled * (1 - weight)
    return a.replace(embeds=ea * weight + eb * (1 - weight), pooled=pooled,
                     text=f"{a.text} | {b.text}", combined=[])


@node("conditioning_concat", category="conditioning", version=1)
def conditioning_concat(a: Conditioning, b: Conditioning) -> Conditioning:
    """Append b's tokens to a's (the UNet attends to both prompts at once)."""
    import torch
    return a.replace(embeds=torch.cat([a.embeds, b.embeds.to(a.embeds)], dim=1),
                     text=f"{a.text} BREAK {b.text}")


@node("conditioning_combine", category="conditioning", version=1)
def conditioning_combine(a: Conditioning, b: Conditioning) -> Conditioning:
    """Use both prompts: the sampler predicts noise for each and averages the predictions."""
    return a.replace(combined=[*a.combined, b, *b.combined])
