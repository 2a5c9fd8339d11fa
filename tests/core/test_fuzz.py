"""Fuzzing the loader, validator and planner: every hostile document is a GraphError, never a
crash (RecursionError, OverflowError, a deep library traceback)."""
from .fuzz_documents import fuzz


def test_hostile_documents_are_rejected_never_crash():
    tally = fuzz(examples=150)
    print(tally.line())
    assert tally.crashes == [], tally.crashes[:5]
    assert tally.rejected > 0 and tally.accepted > 0
