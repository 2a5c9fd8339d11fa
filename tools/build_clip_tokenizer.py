"""Derive CLIP's tokenizer files (vocab.json + merges.txt) once, offline, for the configs in nodes/configs.

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

Single-file SD 1.x/2.x/SDXL checkpoints carry no tokenizer and transformers ships no CLIP
vocabulary, but open-clip-torch's wheel carries CLIP's byte-level BPE as
open_clip/bpe_simple_vocab_16e6.txt.gz. The vocabulary is built as CLIP's own
SimpleTokenizer builds it: the 256 byte symbols, the same with `</w>`, one token per merge
(the first 49152 - 256 - 2 merges), `<|startoftext|>`, `<|endoftext|>` = 49408 tokens. Every
CLIP text encoder of SD 1.x, 2.x and SDXL uses this vocabulary (they differ only in padding).
"""
from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
OUT = Path(__file__).resolve().parents[1] / "nodes" / "configs" / "clip-tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build(bpe_gz: bytes, out: Path = OUT) -> tuple[Path, Path]:
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False,
                                               separators=(",", ":")), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    return out / "vocab.json", out / "merges.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="the open-clip-torch wheel, or the bpe_simple_vocab_16e6.txt.gz file")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.source.endswith(".whl"):
        with zipfile.ZipFile(args.source) as wheel:
            data = wheel.read(MEMBER)
    else:
        data = Path(args.source).read_bytes()
    for path in build(data, args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
