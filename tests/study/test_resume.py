"""A driver that started its own local Ray, killed with SIGKILL mid-study, then ``resume``.

The fault drill's ``driver`` scenario with no cluster address (test_faults.py runs it on
a multi-node cluster): the checks are the drill's, listed in ``study.drill.check_driver``.
"""

from __future__ import annotations

from study.drill import scenario_driver


def test_resume_after_the_driver_is_killed(tmp_path):
    out = scenario_driver(tmp_path, None, ship_code=False)
    assert out.passed, "\n".join(out.lines())
    assert len(out.checks) == 12  # the drill's checks, all run
