"""A fixed-seed subset of the kill matrix (the full one is `make chaos`)."""

from __future__ import annotations

import os

from . import chaos


def test_kill_matrix_subset(schema, dsn, tmp_path):
    base_env = dict(os.environ)  # the schema fixture points it at this test's schema
    summary = chaos.run_matrix(trials=8, seed=2026, base_env=base_env, dsn=dsn, schema=schema,
                               kills_per_trial=3, log=print)  # fmt: skip
    assert summary["violations"] == []
    assert summary["workflows_finished_right"] == 8
    assert summary["trials_by_durability"] == {"full": 4, "kernel": 4}  # SIGKILLs under both
    assert summary["kills_by_durability"].get("kernel", 0) >= 4
    outside = summary["faults_from_outside"]
    assert outside.get("cancel", 0) + outside.get("cancel (too late)", 0) == 2
    assert outside.get("gc.lookalike", 0) >= 1
    assert summary["kills"] >= 8  # a drawn point may not be reached once earlier steps replay
    assert summary["kill_points_offered"] >= 40
    from durablenb._faults import PHASES

    assert set(summary["phases"]) == set(PHASES)  # every phase is offered as a kill point
