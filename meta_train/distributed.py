"""Multi-host meta-training: join N processes with ``jax.distributed`` so that the
population mesh (sharding.py) spans every process's devices.

Each process runs the same command with its own ``--process-id``; the coordinator
(process 0's host:port) runs jax's coordination service. After ``initialize`` the
trainer's jitted steps are global SPMD programs: each process computes its devices'
slice of the population and the meta-gradient is all-reduced across hosts (gloo on CPU,
NCCL / ICI on accelerators). Process 0 alone writes files (run.py).

Why a pre-flight rendezvous: when a peer never shows up, ``jax.distributed.initialize``
does not raise, it aborts the process from C++ (LOG(FATAL), exit 134, a stack trace)
after its timeout. So before calling it, the processes meet over plain TCP on PORT+1:
process 0 listens and waits for the other N-1 to connect and say their id, within
``timeout`` seconds; the others retry connecting until the same deadline. Anyone
missing (or a duplicate id, or a disagreeing process count) raises DistributedError on
every process that is there, with a message that says who is missing and what to do.

A peer dying mid-run: the rendezvous connections stay open for the whole run (process 0 holds
one to every other process, each other process one to process 0) and a watchdog thread waits on
them. A killed or crashed process's connections are closed by its kernel at once, so the
survivors see it within milliseconds: each prints one line (who stopped, that the last
checkpoint is intact, to restart every process with --resume) and exits with status 3, before
jax's heartbeat timeout would abort it from C++ (the bound that remains for a host that vanishes
without closing its connections: the heartbeat and shutdown timeouts, both ``timeout``). When
process 0 dies, the coordination service dies with it and jax's client in each survivor may log
its own error lines first (it detects the lost service as fast as the watchdog does); the
watchdog's line is then the last one and the exit status is still 3. Checkpoints are atomic renames (run.py), so the last one is whole whenever the
process is stopped. ``shutdown`` disarms the watchdog: the group leaves through a barrier.
"""
from __future__ import annotations

import dataclasses
import math
import os
import select
import signal
import socket
import sys
import threading
import time

from learned_opt.errors import LearnedOptError

ENV_COORDINATOR = "LOPT_COORDINATOR"
ENV_NUM_PROCESSES = "LOPT_NUM_PROCESSES"
ENV_PROCESS_ID = "LOPT_PROCESS_ID"
DEFAULT_TIMEOUT = 120.0
PEER_LOST_EXIT = 3
_HELLO = "lopt-rendezvous"


class DistributedError(LearnedOptError, RuntimeError):
    """A multi-process run cannot start (bad settings, a process missing)."""

    def __init__(self, msg: str):
        super().__init__(f"distributed: {msg}")


@dataclasses.dataclass(frozen=True)
class DistConfig:
    coordinator: str        # "host:port" of process 0 (jax's coordination service)
    num_processes: int
    process_id: int
    timeout: float = DEFAULT_TIMEOUT   # seconds to wait for all processes to show up

    @property
    def host(self) -> str:
        return self.coordinator.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])

    @property
    def rendezvous_port(self) -> int:
        return self.port + 1


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, timeout: float | None = None,
            env: dict | None = None) -> DistConfig:
    """Settings from the flags, falling back to LOPT_COORDINATOR / LOPT_NUM_PROCESSES /
    LOPT_PROCESS_ID (flags win); validated."""
    env = os.environ if env is None else env

    def from_env(value, name, kind):
        if value is not None:
            return value
        raw = env.get(name)
        if raw is None or raw == "":
            return None
        try:
            return kind(raw)
        except ValueError:
            raise DistributedError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

    coordinator = from_env(coordinator, ENV_COORDINATOR, str)
    num_processes = from_env(num_processes, ENV_NUM_PROCESSES, int)
    process_id = from_env(process_id, ENV_PROCESS_ID, int)
    missing = [flag for flag, v in (("--coordinator HOST:PORT (or LOPT_COORDINATOR)", coordinator),
                                    ("--num-processes N (or LOPT_NUM_PROCESSES)", num_processes),
                                    ("--process-id I (or LOPT_PROCESS_ID)", process_id)) if v is None]
    if missing:
        raise DistributedError("--distributed needs " + ", ".join(missing))
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise DistributedError(f"coordinator {coordinator!r} must look like HOST:PORT "
                               "with PORT < 65535 (PORT+1 is used too)")
    if num_processes < 1:
        raise DistributedError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id must be in [0, {num_processes - 1}], got {process_id}")
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not timeout > 0:
        raise DistributedError(f"--dist-timeout must be > 0 seconds, got {timeout:g}")
    return DistConfig(coordinator, int(num_processes), int(process_id), timeout)


# ---------------------------------------------------------------- pre-flight rendezvous

def _missing_message(cfg: DistConfig, seen) -> str:
    absent = [i for i in range(cfg.num_processes) if i not in seen]
    return (f"only processes {sorted(seen)} of {cfg.num_processes} reached coordinator "
            f"{cfg.coordinator} within {cfg.timeout:g} s; start the others with --process-id "
            f"{' / '.join(map(str, absent))} or raise --dist-timeout")


def _readline(conn: socket.socket, deadline: float) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = conn.recv(256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _listen(port: int) -> socket.socket:
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                        reuse_port=False)
        return socket.create_server(("", port))
    except OSError as e:
        raise DistributedError(f"process 0 cannot listen on port {port} (coordinator port + 1): "
                               f"{e.strerror or e}; choose another --coordinator port") from None


def _serve(cfg: DistConfig, deadline: float) -> dict[int, socket.socket]:
    """Process 0: accept the others until all N-1 said hello or the deadline passes; returns
    the open connection to each (process id -> socket)."""
    peers: dict[int, socket.socket] = {}
    error = None
    with _listen(cfg.rendezvous_port) as server:
        while len(peers) < cfg.num_processes - 1 and time.monotonic() < deadline:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                break
            try:
                words = _readline(conn, min(deadline, time.monotonic() + 5)).split()
            except OSError:
                conn.close()
                continue
            if len(words) != 3 or words[0] != _HELLO or not (words[1] + words[2]).isdigit():
                conn.close()            # not one of ours (a port scanner, a stale client)
                continue
            pid, n = int(words[1]), int(words[2])
            if n != cfg.num_processes:
                error = (f"process {pid} was started with --num-processes {n}, process 0 with "
                         f"{cfg.num_processes}; use the same value everywhere")
            elif pid == 0 or pid in peers:
                error = f"two processes were started with --process-id {pid}; give each its own id"
            peers[pid] = conn
            if error:
                break
        ok = error is None and len(peers) == cfg.num_processes - 1
        if not ok and error is None:
            error = _missing_message(cfg, {0, *peers})
        for conn in peers.values():
            try:
                conn.sendall(b"ok\n" if ok else f"fail {error}\n".encode())
            except OSError:
                pass
            if not ok:
                conn.close()
    if not ok:
        raise DistributedError(error)
    return peers


def _join(cfg: DistConfig, deadline: float) -> dict[int, socket.socket]:
    """Process I > 0: connect to process 0 (retrying until the deadline), say hello, and
    wait for process 0's verdict; returns the open connection ({0: socket})."""
    addr = (cfg.host, cfg.rendezvous_port)
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistributedError(
                f"process {cfg.process_id} could not reach process 0 at {cfg.host}:{cfg.rendezvous_port} "
                f"(coordinator {cfg.coordinator} + 1) within {cfg.timeout:g} s ({last}); start process 0 "
                "with --process-id 0 and the same --coordinator, or raise --dist-timeout")
        try:
            conn = socket.create_connection(addr, timeout=min(left, 2.0))
            break
        except OSError as e:
            last = e.strerror or e.__class__.__name__
            time.sleep(min(0.2, max(left, 0)))
    try:
        conn.sendall(f"{_HELLO} {cfg.process_id} {cfg.num_processes}\n".encode())
        # Process 0 answers when everyone is there or at its deadline, which may be a
        # little after ours: wait a few seconds longer than our own deadline.
        reply = _readline(conn, deadline + 5)
    except OSError as e:
        reply = f"fail lost the connection to process 0 ({e.__class__.__name__})"
    if reply == "ok":
        conn.settimeout(None)
        return {0: conn}
    conn.close()
    if reply.startswith("fail "):
        raise DistributedError(reply[5:])
    raise DistributedError(f"no answer from process 0 at {cfg.host}:{cfg.rendezvous_port} within "
                           f"{cfg.timeout:g} s; raise --dist-timeout")


def rendezvous(cfg: DistConfig, keep: bool = False) -> dict[int, socket.socket]:
    """All ``num_processes`` meet over TCP on the coordinator's port + 1, or every one that
    is there raises DistributedError within about ``timeout`` seconds. ``keep``: return the
    open connections (process id -> socket) for the watchdog, else close them."""
    if cfg.num_processes == 1:
        return {}
    deadline = time.monotonic() + cfg.timeout
    links = (_serve if cfg.process_id == 0 else _join)(cfg, deadline)
    if not keep:
        for conn in links.values():
            conn.close()
        return {}
    return links


# ---------------------------------------------------------------- peer watchdog

class _Watchdog:
    """Waits on the rendezvous connections; when one closes while armed, prints one line and
    ends this process with PEER_LOST_EXIT (the main thread may be blocked in a collective).
    Process 0 watches every peer and, before stopping, tells the others which one died
    (``lost K``), so with more than two processes every survivor names the dead one."""

    def __init__(self, links: dict[int, socket.socket], me: int):
        self.links, self.me, self.armed = links, me, True
        self.reported: str | None = None     # what process 0 said died
        self.thread = threading.Thread(target=self._watch, name="lopt-peer-watchdog", daemon=True)
        self.thread.start()

    def _watch(self):
        by_fd = {conn.fileno(): pid for pid, conn in self.links.items()}
        conns = list(self.links.values())
        buffers = {fd: b"" for fd in by_fd}
        while True:
            try:
                ready, _, _ = select.select(conns, [], [])
            except (OSError, ValueError):
                return                      # a socket went bad under select: nothing to watch
            for conn in ready:
                fd = conn.fileno()
                try:
                    data = conn.recv(256)
                except OSError:
                    data = b""
                if data:                    # only process 0 sends, and only "lost K\n"
                    buffers[fd] += data
                    for line in buffers[fd].split(b"\n")[:-1]:
                        words = line.decode(errors="replace").split()
                        if len(words) == 2 and words[0] == "lost":
                            self.reported = words[1]
                    buffers[fd] = buffers[fd].rsplit(b"\n", 1)[-1]
                    continue
                if not self.armed:
                    return
                self._peer_lost(by_fd[fd])

    def _peer_lost(self, pid: int):
        if self.me == 0:
            for other, conn in self.links.items():
                if other != pid:
                    try:
                        conn.sendall(f"lost {pid}\n".encode())
                    except OSError:
                        pass
            _stop(f"process {pid} stopped mid-run (its connection to process 0 closed); process 0 "
                  "stops too")
        elif self.reported is not None:
            _stop(f"process {self.reported} stopped mid-run (reported by process 0); process "
                  f"{self.me} stops too")
        else:
            _stop(f"process {pid} stopped mid-run (its connection to process {self.me} closed); "
                  f"process {self.me} stops too")

    def disarm(self):
        self.armed = False


_WATCHDOG: _Watchdog | None = None
_STOPPING = threading.Lock()


def _stop(what: str) -> None:
    """One line on stderr and exit PEER_LOST_EXIT, once, whichever thread detects it first."""
    _STOPPING.acquire()     # a second detector blocks here until the process is gone
    line = (f"lopt: error: distributed: {what}. The last checkpoint in the run directory is intact: "
            "restart every process with --resume\n")
    # The runtime's own threads (gRPC, the coordination client's fatal "Terminating process") may
    # log the lost connection at any moment: silence fd 2 first, then write our line through a copy
    # of it, so that nothing can follow it (writing first left a window where they could).
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    out = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.write(out, line.encode())
    os._exit(PEER_LOST_EXIT)


def disarm() -> None:
    """From here a peer's connection closing is not a lost peer (this process is leaving with
    its own error or through ``shutdown``)."""
    if _WATCHDOG is not None:
        _WATCHDOG.disarm()


def run_failed(exc: BaseException) -> None:
    """Called with an exception that ended a distributed run's loop. A runtime error from jax
    (a collective fails when a peer dies: gloo raises in the main thread while the watchdog is
    about to act): give the watchdog a moment to name the lost process, else stop with one line
    naming the error. Anything else is a bug: disarm and return, so it is raised with its
    traceback (the peers then report this process as stopped)."""
    if _WATCHDOG is None or not _WATCHDOG.armed:
        return
    if type(exc).__module__.split(".")[0] not in ("jax", "jaxlib"):
        disarm()
        return
    time.sleep(5.0)             # the watchdog ends the process meanwhile if a peer is gone
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    _stop(f"the run failed in process {_WATCHDOG.me} ({type(exc).__name__}: {first})")


# ---------------------------------------------------------------- jax.distributed

def initialize(cfg: DistConfig) -> None:
    """Rendezvous, then ``jax.distributed.initialize``. Must run before anything touches a
    jax backend (no jax.devices(), no arrays) in this process."""
    import jax

    global _WATCHDOG
    links = rendezvous(cfg, keep=True)
    # Cross-process collectives on CPU need gloo; it does not affect GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    secs = max(10, math.ceil(cfg.timeout))
    jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id,
                               initialization_timeout=secs, heartbeat_timeout_seconds=secs,
                               shutdown_timeout_seconds=secs)
    # jax installs a preemption notifier that swallows SIGTERM (for checkpoint-on-preemption,
    # which this trainer does not use): without this, `kill PID` would not stop a process.
    # The other processes then end after the heartbeat timeout.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if links:
        _WATCHDOG = _Watchdog(links, cfg.process_id)


def shutdown() -> None:
    """Leave the process group (a barrier: every process waits for the others); from here a
    peer's connection closing is a normal exit, not a lost peer."""
    import jax
    disarm()
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def is_main_process() -> bool:
    import jax
    return jax.process_index() == 0
