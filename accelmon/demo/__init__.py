"""``accelmon demo``: the seeded vCenter simulator, simulated GPU agents, the daemon, Prometheus
and the report, end to end in one command (see :mod:`accelmon.demo.runner`).

Demo and test support, not product code: the only package that may import the simulator
(:mod:`accelmon.sim`), and the home of the real-Prometheus harness (:mod:`accelmon.demo.prometheus`)
that the demo, the tests and the benches start Prometheus with. Kept empty so that importing
:mod:`accelmon.demo.simnvml` (``accelmon agent --simulate``) loads nothing of the demo runner."""
