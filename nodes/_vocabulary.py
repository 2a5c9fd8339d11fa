"""Models that know only a few words say which, so a prompt outside them is not silently ignored.

A diffusers model folder may list its words in `model_index.json` under `_loom_vocabulary`
(diffusers ignores keys that start with `_`). The project's shapes-tiny model does: it
was trained on `a {colour} {shape} on a {colour} background` and nothing else.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

VOCABULARY_KEY = "_loom_vocabulary"


@lru_cache(maxsize=32)
def declared_vocabulary(folder: str) -> frozenset[str] | None:
    """The words a model folder declares, or None (an open vocabulary)."""
    index = Path(folder) / "model_index.json"
    try:
        words = json.loads(index.read_text()).get(VOCABULARY_KEY)
    except (OSError, ValueError):
        return None
    return frozenset(w.lower() for w in words) if isinstance(words, list) else None


def unknown_words(tokenizer, text: str) -> tuple[list[str], frozenset[str]] | None:
    """(words of `text` the tokenizer's model does not know, the words it knows), or None when
    the model declares no vocabulary. The tokenizer's folder is `<model>/tokenizer`."""
    source = getattr(tokenizer, "name_or_path", "") or ""
    if not source or not Path(source).is_dir():
        return None
    known = declared_vocabulary(str(Path(source).resolve().parent))
    if known is None:
        return None
    words = re.findall(r"[^\W\d_]+", text.lower())
    return sorted({w for w in words if w not in known}), known
