"""`loom run` says when a prompt uses words the shipped shapes model does not know."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from .conftest import ROOT

SHAPES = ROOT / "models" / "checkpoints" / "shapes-tiny"


def shapes_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(SHAPES / "tokenizer"), local_files_only=True)


def test_words_outside_the_shapes_vocabulary_are_named():
    from nodes._vocabulary import unknown_words

    words, known = unknown_words(shapes_tokenizer(), "a (red:1.2) dog on a blue Background, 4k")
    assert words == ["dog", "k"] and {"red", "circle", "background"} <= known
    assert unknown_words(shapes_tokenizer(), "a red circle on a blue background")[0] == []


def test_encode_text_warns_through_the_node_logger(caplog):
    from nodes.text import _warn_unknown_words
    from nodes.types import TextEncoder

    te = TextEncoder(tokenizers=[shapes_tokenizer()], encoders=[], family="sd1", identity="shapes")
    ctx = SimpleNamespace(log=logging.getLogger("loom.node"))
    with caplog.at_level(logging.WARNING, logger="loom.node"):
        _warn_unknown_words(ctx, te, "a purple dog on a blue background")
        _warn_unknown_words(ctx, te, "a red square on a blue background")
    assert len(caplog.records) == 1
    assert "'dog', 'purple' are not known to this model" in caplog.records[0].getMessage()


def test_models_without_a_declared_vocabulary_are_not_checked(tmp_path):
    from nodes._vocabulary import unknown_words

    assert unknown_words(SimpleNamespace(name_or_path=str(tmp_path)), "anything at all") is None
