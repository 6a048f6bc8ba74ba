"""The benchmark harness behind ``make bench`` (``benchmarks/run_all.py``).

Benchmark-only code: swarmkeeper and its tests never import it. Modules, in
the order a run uses them:

* ``machine``: the machine and the versions the report names;
* ``swarm``: what the Docker SDK (an independent client) sees of the
  benchmark's stacks: object versions, settling, refusing a shared swarm,
  removal;
* ``workload``: the generated compose files and desired-state folders;
* ``tools``: the two commands compared, run as whole processes, and the
  frozen copy of the code under test;
* ``daemon``: the running daemon's drift latency, resync cost and idle cost;
* ``profiling``: one profiled apply, summarised;
* ``stats`` and ``report``: numbers to Markdown.
"""
