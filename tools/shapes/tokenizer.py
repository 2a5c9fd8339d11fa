"""A real CLIPTokenizer built offline.

transformers ships no CLIP vocabulary and nothing can be downloaded, so the
vocabulary is CLIP's byte-level alphabet plus just enough merges to make every
word of the dataset's captions a single token. Any other text still tokenises
(byte by byte), so the tokenizer never fails on unfamiliar prompts.
"""

import itertools
import json
from pathlib import Path

from transformers import CLIPTokenizer

from tools.shapes.data import COLOURS, SHAPES

MAX_LENGTH = 16
START, END = "<|startoftext|>", "<|endoftext|>"
CAPTION_WORDS = ["a", "on", "background", *COLOURS, *SHAPES]


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(
        range(ord("¡"), ord("¬") + 1)
    )
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return list(symbols.values())


def _bpe(word_symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly join the adjacent pair with the lowest merge rank."""
    symbols = list(word_symbols)
    while len(symbols) > 1:
        pairs = [
            (ranks.get(pair, float("inf")), i)
            for i, pair in enumerate(itertools.pairwise(symbols))
        ]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_vocab_and_merges(
    words: list[str] = CAPTION_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_symbols = _byte_symbols()
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    # Each word is first run through the merges that already exist and then
    # joined left to right with new ones. New merges rank after all earlier ones,
    # so they can never pre-empt an earlier word's merges: every word stays whole.
    for word in words:
        symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            symbols[:2] = [pair[0] + pair[1]]
    tokens += [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizer(
    workdir: Path, words: list[str] = CAPTION_WORDS, max_length: int = MAX_LENGTH
) -> CLIPTokenizer:
    """Write vocab.json and merges.txt (CLIP's slow-tokenizer files, kept for
    inspection) into workdir and return the tokenizer built from them; every word
    of `words` is one token."""
    workdir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (workdir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=max_length,
        bos_token=START,
        eos_token=END,
        pad_token=END,
        unk_token=END,
    )
