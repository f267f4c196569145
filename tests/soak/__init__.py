"""Long-running fault-injection drivers (`make soak`); short runs of them are tests elsewhere.

* `soak.cluster`: jobs on the real API server, scheduler and garbage collector with the
  simulated node agent and the operator as its own process, under seeded faults, with the
  invariants checked continuously (docs/reliability.md).
* `soak.trainer_kills`: `shufflenet-train` killed with SIGKILL at random moments, including
  during checkpoint writes, and resumed with `--resume auto` each time.
"""
