"""``trio-echo bench``: a measuring client for any echo server (the package's second half).

Modules, one job each: :mod:`.address` (what to connect to), :mod:`.pattern`
(the bytes sent and their verification, sans-IO), :mod:`.histogram`
(latencies), :mod:`.config` and :mod:`.result` (frozen inputs and outputs),
:mod:`.meter` (what the connections of a run share), :mod:`.connect` (opening
one connection), :mod:`.multiplex` (the plain closed loop, all connections in
one task: the hot path), :mod:`.loops` (the other modes, a task pair per
connection), :mod:`.udp` (flows of datagrams), :mod:`.run` (the run as a
whole: :func:`~.run.bench`), :mod:`.output` (what a person reads) and
:mod:`.cli` (the command line).
"""
