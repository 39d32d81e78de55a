"""pipeline/record.py: what a long stage prints while it runs, and what it records."""

from __future__ import annotations

import time

from pipeline.record import Phases


def test_a_long_step_says_it_is_still_running_and_a_short_one_does_not(capsys):
    phases = Phases("export", heartbeat_s=0.2)
    with phases("compress"):
        time.sleep(0.7)
    with phases("save"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "export: compress"
    beats = [line for line in lines if line.startswith("export: compress still running, ")]
    assert 2 <= len(beats) <= 4 and lines[-1] == "export: save"
    assert [name for name, _ in phases.seconds] == ["compress", "save"] and phases.seconds[0][1] >= 0.7


def test_a_failing_step_stops_its_heartbeat_and_still_records_its_time(capsys):
    phases = Phases("reference", heartbeat_s=0.1)
    try:
        with phases("answers"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    time.sleep(0.3)
    assert "still running" not in capsys.readouterr().err and phases.seconds[0][0] == "answers"
