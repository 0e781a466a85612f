"""gchat's load benchmark (entry: ``python tools/bench.py`` or ``python -m tools.benchmark``).

For each target (gchat, a bare Tornado relay, a python-socketio relay; see docs/performance.md):

1. The server is started by itself (a subprocess pinned with ``taskset`` to ``--server-cpu``,
   default CPU 0). gchat gets a fresh MariaDB database with the Moodle 2.2 tables, gchat's tables
   (``gchat initdb``), users, courses and sessions; the relays need none.
2. Throughput: pairs of users exchange 100-character messages at an open-loop target rate
   (sends are scheduled by the clock, never paced by replies; the intended send time travels
   in the text). The rate steps up until p99 passes 250 ms, a message is lost or a send fails:
   the last rate that passed is the *knee*. Separately for WebSocket pairs and long-poll pairs,
   then each again at half its knee, then a mixed run (WS↔WS, WS↔poll, poll↔poll at once).
3. Idle: 1,000 / 5,000 / 10,000 idle WebSockets, then (on a fresh server) as many idle
   long-poll tabs: RSS delta per connection after ``gc.collect()`` in the server, and the CPU
   their heartbeats cost, measured with heartbeats every 10 s (Engine.IO polling: 20 s) and
   scaled back to the real intervals (WebSocket ping 25 s, long-poll 45-55 s, Engine.IO 25 s).
4. One markdown table: gchat's figures and its ratio to each baseline, the machine, and
   warnings (e.g. a load generator near saturation: such a result is not a server limit).

The load generator runs in ``--gen-procs`` worker processes (default 1) pinned to
``--gen-cpu`` (default CPU 1), each holding many connections on one event loop (uvloop when
installed). Its CPU is measured from /proc and reported with every step.

Modules: ``cli`` (command line), ``run`` (the orchestrator), ``load`` and ``idle`` (the phases),
``servers`` (the targets, started through tests/support/process.py), ``serve_gchat`` (gchat with
the benchmark's statistics route), ``generators`` and ``gen`` (the load generator), ``wire``
(its raw clients), ``site`` (the Moodle site in MariaDB), ``stats``, ``procfs``, ``profile``
(py-spy), ``report``, ``config``.
"""
