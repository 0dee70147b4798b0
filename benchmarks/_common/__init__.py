"""What every benchmark needs besides what it measures: statistics over rounds, the private
broker and child processes, CPU and memory readers, the machine and code description, output.

A benchmark here answers one question ("how much does a routed call cost against raw paho?")
and should read as that question. These pieces used to be copied from file to file, each
copy drifting a little (two ``Sample`` classes, three ``machine_info``, percentile code in
several places); one copy, with unit tests (``tests/test_bench_common.py``), means a number in
``docs/benchmarks.md`` is computed the same way whichever benchmark printed it.

Conventions:

- **Rounds.** A measurement is repeated in rounds, its variants interleaved in an order that
  rotates every round (:func:`rotation`, :func:`run_rounds`), so a burst of other work on a
  small, shared machine hits every variant alike; the report gives the median over rounds,
  metric by metric (:func:`summarize`, :func:`median_by_key`).
- **Percentiles** are nearest-rank (:func:`percentile`): always a value that was measured.
- **Time.** Durations being measured are read with ``time.perf_counter`` (the instrument);
  deadlines for waiting (a broker, a child's ``ready``) go through edgeagent's one clock
  (:data:`CLOCK`), as in the package.
- **Brokers.** Only the tests' private mosquitto on a free port (:func:`private_broker`), never
  the system broker on 1883.

Modules: :mod:`.stats` (pure), :mod:`.calls` (timing request/response calls), :mod:`.system`
(``/proc``, machine, code), :mod:`.processes` (broker, agents, helpers), :mod:`.output`.
Benchmarks import the names below from the package::

    from benchmarks import _common as common
"""

from __future__ import annotations

from .calls import (
    Load,
    Requester,
    echo_payload,
    measure_calls,
    measure_requester,
    pipelined_calls,
    sequential_calls,
)
from .output import markdown_table, print_json, progress
from .processes import (
    CLOCK,
    REPO,
    Broker,
    agent_command,
    edgeagent_command,
    private_broker,
    script_process,
    spawn,
    stop_process,
    wait_for_line,
    wait_online,
    with_pythonpath,
)
from .stats import (
    Sample,
    Summary,
    make_sample,
    median,
    median_by_key,
    percentile,
    rotation,
    run_rounds,
    summarize,
)
from .system import (
    CpuMeter,
    code_state,
    cpu_flags,
    machine_info,
    package_version,
    pid_rss,
    process_cpu_s,
    settled_rss,
)

__all__ = [
    "CLOCK",
    "REPO",
    "Broker",
    "CpuMeter",
    "Load",
    "Requester",
    "Sample",
    "Summary",
    "agent_command",
    "code_state",
    "cpu_flags",
    "echo_payload",
    "edgeagent_command",
    "machine_info",
    "make_sample",
    "markdown_table",
    "measure_calls",
    "measure_requester",
    "median",
    "median_by_key",
    "package_version",
    "percentile",
    "pid_rss",
    "pipelined_calls",
    "print_json",
    "private_broker",
    "process_cpu_s",
    "progress",
    "rotation",
    "run_rounds",
    "script_process",
    "sequential_calls",
    "settled_rss",
    "spawn",
    "stop_process",
    "summarize",
    "wait_for_line",
    "wait_online",
    "with_pythonpath",
]
