"""The avatar tokenizer: the shapes tokenizer's construction over the avatar caption
words, long enough that a whole avatar prompt is one chunk."""

import itertools
import re
from pathlib import Path

from transformers import CLIPTokenizer

from tools.avatars import data
from tools.shapes import tokenizer

# A full caption is about 34 tokens; room for a few words of user details.
MAX_LENGTH = 48


def caption_words() -> list[str]:
    """Every word of every caption the drawer can make, in a fixed order."""
    words = set()
    for values in itertools.product(*data.ATTRIBUTES.values()):
        spec = data.AvatarSpec(*values[:5], glasses=values[5] == "yes", skin=0, shirt=0,
                               dx=0, dy=0, scenery=0)
        words.update(re.findall(r"[a-z]+", spec.caption))
    return sorted(words)


def build_tokenizer(workdir: Path) -> CLIPTokenizer:
    return tokenizer.build_tokenizer(workdir, caption_words(), MAX_LENGTH)
