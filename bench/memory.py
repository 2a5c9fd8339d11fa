"""Memory over a long session: a 50-variation sweep (seeds, prompts, LoRA on/off) in one process.

At each step: the result cache's accounted bytes, its budget, what its entries hold counted
afresh (every entry walked together, shared storages once), the model manager's bytes and
the process RSS. The accounted bytes should stay within the budget and within 10 % of the
fresh count; RSS should flatten once the cache is full and the models are loaded.

Run: python bench/memory.py [--steps 50] [--cache-mb 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as a file: this folder would shadow the `engine` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from engine import Cache, Executor, Graph, MemoryCache, Settings  # noqa: E402
from engine.footprint import footprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle on a blue background", "a yellow triangle on a black background",
           "a green square on a white background", "a blue circle on a yellow background",
           "a white triangle on a red background"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fresh_count(cache: MemoryCache) -> int:
    """What the cache's entries hold, walked together (independent of the running account)."""
    values = [cache.get(key) for key in list(cache._entries)]
    return footprint(values, cache._owned).bytes - footprint([None] * len(values)).bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cache-mb", type=float, default=1.0, help="result cache budget")
    args = parser.parse_args()
    budget = int(args.cache_mb * 2**20)
    txt2img = Graph.load(ROOT / "graphs" / "txt2img.json")
    with_lora = Graph.load(ROOT / "graphs" / "lcm_lora.json")
    with tempfile.TemporaryDirectory() as out:
        settings = Settings(models_dirs=[ROOT / "models"], output_dir=Path(out), input_dir=Path(out))
        executor = Executor(settings=settings, cache=Cache(MemoryCache(budget_bytes=budget)))
        rows = []
        for step in range(args.steps):
            lora = step % 2 == 1
            params = {"seed": step, "prompt": PROMPTS[step % len(PROMPTS)], "steps": 4}
            if lora:
                executor.run(with_lora, params={**params, "cfg": 1.0, "strength": 1.0 if step % 4 == 1 else 0.5})
            else:
                executor.run(txt2img, params=params)
            memory = executor.cache.memory
            held = fresh_count(memory)
            row = {"step": step + 1, "lora": lora, "cache_accounted": memory.bytes, "cache_budget": budget,
                   "cache_held": held, "accounted_vs_held": round(memory.bytes / held, 3) if held else None,
                   "entries": len(memory), "models_bytes": executor.models.bytes(), "rss": rss_bytes()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    quarter = max(1, args.steps // 4)
    ratios = [r["accounted_vs_held"] for r in rows if r["accounted_vs_held"]]
    print(json.dumps({
        "summary": True, "steps": args.steps,
        "max_accounted_over_budget": round(max(r["cache_accounted"] for r in rows) / budget, 3),
        "accounted_vs_held_min_max": [min(ratios), max(ratios)],
        "rss_mb_at": {str(r["step"]): round(r["rss"] / 2**20, 1) for r in rows[quarter - 1::quarter]},
        "rss_growth_second_half_mb": round((rows[-1]["rss"] - rows[len(rows) // 2]["rss"]) / 2**20, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
