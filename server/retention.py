"""How long finished runs and their output files are kept: `--keep-runs N`, `--keep-days D`.

The default keeps everything (said at start-up). With a policy, finished runs beyond the
newest N, or finished more than D days ago, are deleted from the run table together with
the output files they declared; a file another kept run still lists stays. Queued and
running runs are never pruned. Pruning happens at start-up and each time a run finishes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.paths import UnsafePath, contained

from .store import RunStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    keep_runs: int | None = None     # newest finished runs kept
    keep_days: float | None = None   # finished runs kept this long

    @property
    def keeps_everything(self) -> bool:
        return self.keep_runs is None and self.keep_days is None

    def describe(self) -> str:
        if self.keeps_everything:
            return ("keeping every finished run and its output files "
                    "(prune with --keep-runs N or --keep-days D)")
        rules = []
        if self.keep_runs is not None:
            rules.append(f"the newest {self.keep_runs}")
        if self.keep_days is not None:
            rules.append(f"those finished in the last {self.keep_days:g} days")
        return f"keeping {' and '.join(rules)} finished runs; older ones are deleted with their output files"

    def prune(self, store: RunStore, output_dir: Path) -> int:
        """Delete runs past the policy and their files; returns how many runs went."""
        if self.keeps_everything:
            return 0
        pruned = store.prune(self.keep_runs, self.keep_days)
        for run in pruned:
            for name in run.files:
                if store.file_in_use(name):
                    continue
                try:
                    contained(output_dir, name).unlink(missing_ok=True)
                except (UnsafePath, OSError) as exc:
                    log.warning("could not delete %s of pruned run %s: %s", name, run.id, exc)
        if pruned:
            log.info("pruned %d finished runs and their output files", len(pruned))
        return len(pruned)
