"""Chaos soak: well-behaved and hostile clients against two `--workers 2` servers, under faults.

Starts two supervisors, each with two workers, pinned to their own cores:

* ``plain``: ``--proxy-protocol --framing line --rounds 50``; every client sends
  a PROXY v1 header first (bad ones excepted);
* ``tls``: ``--certfile`` (a trustme certificate) ``--framing line --rounds 50``
  with injected faults (``--latency``, ``--jitter``, ``--fragment``).

Client kinds run together, each in a loop, for ``--duration`` seconds:
``echo`` (plain) and ``tls-echo`` verify every byte of every round trip (TLS
sessions end with the server's ``close_notify``, checked strictly);
``pipelined`` sends 60 lines in one write and must read exactly the first 50,
then EOF, never a reset; ``oversize`` sends a line longer than
``--max-message`` and must read EOF; ``reset`` resets mid-session; ``idle``
must be closed by the idle timeout; ``slowloris`` trickles a TLS ClientHello
and must be closed by the handshake timeout; ``bad-proxy`` must be closed
without an echo.  Every ``--chaos-interval`` seconds one chaos action hits a
random worker, in turn: ``kill -9``, SIGSTOP for ``--stop-for`` seconds (the
supervisor's ``--worker-timeout`` replaces it), and EMFILE pressure (its soft
``RLIMIT_NOFILE`` lowered to what it has open, for ``--stop-for`` seconds).
SIGHUP is not sent: trio-echo has no certificate reload.

A well-behaved client's failure (reset, early EOF, time-out) is excused only
if its session overlapped a chaos action (from the action until
``--stop-for`` + 15 s after); outside those windows, any byte not echoed back
is *lost*, and the run fails.  Printed and written as JSON (``--output``):
connections and outcomes by kind, bytes verified, bytes lost, resets seen
by well-behaved clients, p99 latency of the well-behaved round trips in
each minute, the servers' RSS (all processes) per minute, restarts.

    python benchmarks/chaos.py [--duration 600] [--output chaos.json]
    python benchmarks/chaos.py --smoke      # 20 s, chaos every 3 s (CI)

Exit status 1 if a byte was lost or corrupted, a server logged a traceback or
exited non-zero, or RSS grew by 5 % or more after the first minute (full runs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
import trustme

ROUNDS = 50
MAX_MESSAGE = 16384
PROXY_HEADER = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 9999\r\n"
WELL_BEHAVED = ("echo", "tls-echo", "pipelined")


class Server:
    """One ``trio-echo --workers 2`` supervisor (WARNING log level: no line per
    connection); a thread follows its log, its workers are its child processes."""

    def __init__(self, name: str, args: list[str], cores: str | None) -> None:
        self.name = name
        self.port = free_port()
        command = [sys.executable, "-m", "trio_echo", "--port", str(self.port), "--workers", "2"]
        command += args
        if cores is not None and shutil.which("taskset"):
            command = ["taskset", "-c", cores, *command]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while len(self.workers()) < 2 or not accepts(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name}: did not start: {self.problems}")
            time.sleep(0.1)

    def _follow(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            for key, pattern in (
                ("restarts", "restarting in"),
                ("unresponsive", "sent no heartbeat"),
                ("accept_errors", "accept failed"),
            ):
                if pattern in line:
                    self.counts[key] += 1
            if "Traceback" in line or " ERROR " in line or "Exception ignored" in line:
                self.problems.append(line.rstrip())

    def workers(self) -> list[int]:
        """The supervisor's child processes (taskset execs in place)."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return []
        return sorted(int(child) for child in children)

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.workers()]

    def worker(self, rng: random.Random) -> int | None:
        workers = self.workers()
        return rng.choice(workers) if workers else None

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a worker between death and restart
        return total

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)


class Soak:
    def __init__(self, args: argparse.Namespace, plain: Server, tls: Server, ctx: ssl.SSLContext):
        self.args = args
        self.plain = plain
        self.tls = tls
        self.ctx = ctx
        self.started = time.monotonic()
        #: What ran: the checkout when the soak started (restarted workers load
        #: the files as they are then).
        self.commit = commit()
        self.deadline = self.started + args.duration
        self.connections: collections.Counter[str] = collections.Counter()
        self.outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.bytes_verified = 0
        self.bytes_lost = 0
        self.bytes_corrupted = 0
        self.bytes_unanswered_in_chaos = 0
        self.resets_well_behaved = 0
        self.resets_in_chaos = 0
        self.latencies: dict[int, list[float]] = collections.defaultdict(list)
        self.rss: dict[str, dict[int, list[int]]] = {"plain": {}, "tls": {}}
        self.chaos: list[dict[str, Any]] = []
        self.windows: list[tuple[float, float]] = []

    def now(self) -> float:
        return time.monotonic() - self.started

    def in_chaos(self, start: float, end: float) -> bool:
        return any(a <= end and start <= b for a, b in self.windows)

    # ---- the clients ----

    async def loop(self, kind: str, session: Any, pause: float) -> None:
        rng = random.Random(hash(kind) ^ id(session))
        while time.monotonic() < self.deadline:
            self.connections[kind] += 1
            start = self.now()
            try:
                with trio.fail_after(self.args.session_limit):
                    outcome = await session(rng)
            except trio.TooSlowError:
                outcome = "timeout"
            except (trio.BrokenResourceError, ConnectionError, ssl.SSLError) as exc:
                outcome = "reset" if not isinstance(exc, ssl.SSLError) else "tls-error"
            except OSError as exc:
                outcome = f"oserror-{exc.errno}"
            self.outcomes[kind][outcome] += 1
            if kind in WELL_BEHAVED and outcome in ("reset", "timeout", "early-eof"):
                if self.in_chaos(start, self.now()):
                    self.resets_in_chaos += outcome == "reset"
                else:
                    self.resets_well_behaved += outcome == "reset"
            await trio.sleep(pause * rng.random())

    async def plain_stream(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", self.plain.port)
        await stream.send_all(PROXY_HEADER)
        return stream

    async def echo_session(
        self, stream: trio.abc.Stream, lines: list[bytes], kind: str
    ) -> tuple[str, int]:
        """Send each line, verify its echo; the outcome and the bytes verified."""
        verified = 0
        start = self.now()
        sent = 0
        last = time.monotonic()
        try:
            for line in lines:
                t0 = time.monotonic()
                # The server may have seen no progress for the idle timeout since
                # the previous line was sent (this process starved on a loaded
                # machine): then it rightly closed, and nothing was lost.
                idle = t0 - last >= self.args.idle_timeout
                last = t0
                await stream.send_all(line)
                sent += len(line)
                got = bytearray()
                while len(got) < len(line):
                    chunk = await stream.receive_some(len(line) - len(got))
                    if not chunk:
                        raise EOFError
                    got += chunk
                if got != line:
                    self.bytes_corrupted += len(line)
                    return "corrupted", verified
                verified += len(line)
                self.bytes_verified += len(line)
                self.latencies[int(self.now() // 60)].append(time.monotonic() - t0)
        except EOFError:
            if idle:
                return "client-idle", verified
            self.account_unanswered(sent - verified, start)
            return "early-eof", verified
        except BaseException:
            self.account_unanswered(sent - verified, start)
            raise
        return "ok", verified

    def account_unanswered(self, nbytes: int, start: float) -> None:
        if self.in_chaos(start, self.now() + 1):
            self.bytes_unanswered_in_chaos += nbytes
        else:
            self.bytes_lost += nbytes

    @staticmethod
    def lines(rng: random.Random, n: int) -> list[bytes]:
        return [
            bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(k)) + b"\n"
            for k in (rng.randrange(1, 2000) for _ in range(n))
        ]

    async def echo(self, rng: random.Random) -> str:
        stream = await self.plain_stream()
        async with stream:
            rounds = rng.randrange(1, ROUNDS + 1)
            outcome, _ = await self.echo_session(stream, self.lines(rng, rounds), "echo")
            if outcome != "ok":
                return outcome
            if rounds < ROUNDS:
                await stream.send_eof()
            return "ok" if await stream.receive_some() == b"" else "bytes-after-last-echo"

    async def tls_echo(self, rng: random.Random) -> str:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.tls.port)
        stream = trio.SSLStream(tcp, self.ctx, server_hostname="127.0.0.1")
        async with stream:
            await stream.do_handshake()
            outcome, _ = await self.echo_session(stream, self.lines(rng, ROUNDS), "tls-echo")
            if outcome != "ok":
                return outcome
            # Strict: a TCP FIN without close_notify raises BrokenResourceError.
            return "ok" if await stream.receive_some() == b"" else "bytes-after-last-echo"

    async def pipelined(self, rng: random.Random) -> str:
        stream = await self.plain_stream()
        async with stream:
            lines = self.lines(rng, ROUNDS + 10)
            start = self.now()
            await stream.send_all(b"".join(lines))
            expected = b"".join(lines[:ROUNDS])
            got = bytearray()
            try:
                while chunk := await stream.receive_some():
                    got += chunk
            except BaseException:
                self.account_unanswered(len(expected) - len(got), start)
                raise
            if got != expected:
                if not expected.startswith(got):
                    self.bytes_corrupted += len(expected)
                    return "corrupted"
                self.account_unanswered(len(expected) - len(got), start)
                return "early-eof"
            self.bytes_verified += len(got)
            return "ok"

    async def oversize(self, rng: random.Random) -> str:
        stream = await self.plain_stream()
        async with stream:
            await stream.send_all(b"x" * (MAX_MESSAGE + 100))
            return "closed" if await stream.receive_some() == b"" else "echoed"

    async def resetter(self, rng: random.Random) -> str:
        stream = await self.plain_stream()
        await stream.send_all(b"".join(self.lines(rng, 5)))
        await stream.receive_some(100)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        return "reset-sent"

    async def idle(self, rng: random.Random) -> str:
        stream = await self.plain_stream()
        async with stream:
            t0 = time.monotonic()
            data = await stream.receive_some()
            took = time.monotonic() - t0
            if data:
                return "echoed"
            return "closed-in-time" if took < self.args.idle_timeout * 1.05 + 2 else "closed-late"

    async def slowloris(self, rng: random.Random) -> str:
        stream = await trio.open_tcp_stream("127.0.0.1", self.tls.port)
        async with stream:
            t0 = time.monotonic()
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)
            try:
                for byte in hello:
                    await stream.send_all(bytes([byte]))
                    with trio.move_on_after(0.5):
                        if await stream.receive_some() == b"":
                            break
            except (trio.BrokenResourceError, ConnectionError):
                pass
            took = time.monotonic() - t0
            return "closed-in-time" if took < self.args.handshake_timeout + 2 else "closed-late"

    async def bad_proxy(self, rng: random.Random) -> str:
        stream = await trio.open_tcp_stream("127.0.0.1", self.plain.port)
        async with stream:
            await stream.send_all(rng.choice([b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP9 x\r\n"]))
            return "closed" if await stream.receive_some() == b"" else "echoed"

    # ---- chaos and sampling ----

    async def chaos_loop(self) -> None:
        """One action every --chaos-interval seconds (each in a task of its own,
        so a SIGSTOP's wait does not delay the next action)."""
        rng = random.Random(self.args.seed)
        actions = ["kill-9", "sigstop", "emfile"]
        step = 0
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self.args.chaos_interval)
                if time.monotonic() + self.args.stop_for + 5 > self.deadline:
                    return
                server = rng.choice([self.plain, self.tls])
                pid = server.worker(rng)
                if pid is not None:
                    nursery.start_soon(self.act, actions[step % len(actions)], server, pid)
                    step += 1

    async def act(self, action: str, server: Server, pid: int) -> None:
        t = self.now()
        self.windows.append((t, t + self.args.stop_for + 15))
        record: dict[str, Any] = {"t": round(t, 1), "action": action, "server": server.name}
        self.chaos.append(record)
        try:
            if action == "kill-9":
                os.kill(pid, signal.SIGKILL)
            elif action == "sigstop":
                os.kill(pid, signal.SIGSTOP)
                await trio.sleep(self.args.stop_for)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    # The usual end: the supervisor killed it (--worker-timeout).
                    record["note"] = "killed by the supervisor while stopped"
            else:
                soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
                in_use = len(os.listdir(f"/proc/{pid}/fd"))
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, hard))
                await trio.sleep(self.args.stop_for)
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        except (ProcessLookupError, FileNotFoundError, PermissionError) as exc:
            record["note"] = f"target gone: {exc}"

    async def sample_rss(self) -> None:
        while time.monotonic() < self.deadline:
            minute = int(self.now() // 60)
            for server in (self.plain, self.tls):
                self.rss[server.name].setdefault(minute, []).append(server.rss_kib())
            await trio.sleep(5)

    async def run(self) -> None:
        kinds = [
            ("echo", self.echo, self.args.echo_clients, 0.05),
            ("tls-echo", self.tls_echo, self.args.tls_clients, 0.05),
            ("pipelined", self.pipelined, 2, 0.2),
            ("oversize", self.oversize, 1, 0.5),
            ("reset", self.resetter, 2, 0.2),
            ("idle", self.idle, 3, 0.5),
            ("slowloris", self.slowloris, 2, 0.5),
            ("bad-proxy", self.bad_proxy, 1, 0.5),
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.chaos_loop)
            nursery.start_soon(self.sample_rss)
            async with trio.open_nursery() as clients:
                for kind, session, count, pause in kinds:
                    for _ in range(count):
                        clients.start_soon(self.loop, kind, session, pause)
            nursery.cancel_scope.cancel()


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def p99_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--chaos-interval", type=float, default=30.0)
    parser.add_argument("--stop-for", type=float, default=15.0, help="SIGSTOP/EMFILE seconds")
    parser.add_argument("--worker-timeout", type=float, default=10.0)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--handshake-timeout", type=float, default=3.0)
    parser.add_argument("--echo-clients", type=int, default=16)
    parser.add_argument("--tls-clients", type=int, default=8)
    parser.add_argument("--session-limit", type=float, default=60.0, help="seconds per session")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--server-cores", default="0", help="taskset list for the servers")
    parser.add_argument("--client-cores", default="1", help="CPU list for this process")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="20 s, chaos every 3 s (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.chaos_interval, args.stop_for = 20.0, 3.0, 2.0
        args.worker_timeout, args.idle_timeout, args.handshake_timeout = 1.0, 5.0, 1.0
        args.echo_clients, args.tls_clients, args.session_limit = 4, 2, 20.0
    if args.client_cores and hasattr(os, "sched_setaffinity"):
        cores = {int(c) for c in args.client_cores.split(",")} & os.sched_getaffinity(0)
        if cores:
            os.sched_setaffinity(0, cores)
    common = [
        *("--framing", "line", "--rounds", str(ROUNDS), "--max-message", str(MAX_MESSAGE)),
        *("--idle-timeout", f"{args.idle_timeout}s", "--grace", "2s"),
        *("--worker-timeout", f"{args.worker_timeout}s", "--log-level", "warning"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        certfile, keyfile = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        plain = Server("plain", [*common, "--proxy-protocol"], args.server_cores)
        try:
            tls = Server(
                "tls",
                [
                    *common,
                    *("--certfile", str(certfile), "--keyfile", str(keyfile)),
                    *("--tls-handshake-timeout", f"{args.handshake_timeout}s"),
                    *("--latency", "1ms", "--jitter", "1ms", "--fragment", "512"),
                ],
                args.server_cores,
            )
        except BaseException:
            plain.stop()
            raise
        soak = Soak(args, plain, tls, ctx)
        statuses = {}
        try:
            trio.run(soak.run)
        finally:
            statuses = {server.name: server.stop() for server in (plain, tls)}
    report(args, soak, statuses)


def report(args: argparse.Namespace, soak: Soak, statuses: dict[str, int]) -> None:
    rss_by_minute = {
        name: [int(statistics.median(v)) for _, v in sorted(minutes.items())]
        for name, minutes in soak.rss.items()
    }
    growth = {}
    for name, series in rss_by_minute.items():
        if len(series) >= 3:
            base = series[1]
            growth[name] = round((max(series[1:]) - base) / base * 100, 2)
    servers = (soak.plain, soak.tls)
    result = {
        "duration_s": round(soak.now(), 1),
        "commit": soak.commit,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "connections": dict(soak.connections),
        "outcomes": {kind: dict(c) for kind, c in soak.outcomes.items()},
        "bytes_verified": soak.bytes_verified,
        "bytes_lost": soak.bytes_lost,
        "bytes_corrupted": soak.bytes_corrupted,
        "bytes_unanswered_in_chaos_windows": soak.bytes_unanswered_in_chaos,
        "resets_seen_by_well_behaved": soak.resets_well_behaved,
        "resets_seen_by_well_behaved_in_chaos_windows": soak.resets_in_chaos,
        "p99_ms_by_minute": [p99_ms(v) for _, v in sorted(soak.latencies.items()) if v],
        "rss_kib_by_minute": rss_by_minute,
        "rss_growth_after_first_minute_pct": growth,
        "restarts": {s.name: s.counts["restarts"] for s in servers},
        "unresponsive_workers_killed": {s.name: s.counts["unresponsive"] for s in servers},
        "chaos_actions": soak.chaos,
        "server_exit_status": statuses,
        "server_problems": [p for s in servers for p in s.problems if p],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    failures = []
    if soak.bytes_lost or soak.bytes_corrupted:
        failures.append(f"{soak.bytes_lost} bytes lost, {soak.bytes_corrupted} corrupted")
    if any(statuses.values()):
        failures.append(f"server exit statuses {statuses}")
    if result["server_problems"]:
        failures.append("a server logged a traceback or an error")
    if not args.smoke and any(g >= 5 for g in growth.values()):
        failures.append(f"RSS grew after the first minute: {growth}")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
