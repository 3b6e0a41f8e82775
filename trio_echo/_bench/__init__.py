"""``trio-echo bench``: a measuring client for any echo server (the package's second half).

Modules, one job each: :mod:`.address` (what to connect to), :mod:`.pattern`
(the bytes sent and their verification, sans-IO), :mod:`.histogram`
(latencies), :mod:`.config` and :mod:`.result` (frozen inputs and outputs),
:mod:`.connect` (opening one connection), :mod:`.loops` (what each connection
does per mode), :mod:`.run` (the run as a whole: :func:`~.run.bench`),
:mod:`.output` (what a person reads) and :mod:`.cli` (the command line).
"""
