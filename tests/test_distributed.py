"""Multi-process meta-training on localhost: two processes reach the one-process theta, only
process 0 writes; a missing process is a one-line error within the timeout, not a hang or
a C++ abort."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from meta_train import distributed
from meta_train.distributed import DistConfig, DistributedError
from procs import communicate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ["--set", "outer_steps=4", "--set", "eval_every=2"]   # smoke: 4 particles, checkpoint_every=2


def _free_port() -> int:
    """A port p with p and p + 1 free (the coordinator and the rendezvous)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def _lopt(args, devices=1):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "meta_train", "train", "--config", "smoke",
                             "--no-report", "--no-progress", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout):
    return communicate(proc, timeout, "lopt train")


def _theta(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("theta/")}


def test_two_processes_match_one(tmp_path):
    from meta_train.config import get_config
    from meta_train.run import train

    port = _free_port()
    out = tmp_path / "dist"
    dist = ["--out", str(out), "--distributed", "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--dist-timeout", "60"]
    # Each process has one CPU device: a 2-device global mesh, 2 of the 4 particles each.
    procs = [_lopt([*SETS, *dist, "--process-id", str(i)]) for i in (0, 1)]
    results = [_finish(p, timeout=300) for p in procs]
    for i, (rc, o, e) in enumerate(results):
        assert rc == 0, f"process {i} failed:\n{o[-2000:]}\n{e[-3000:]}"
    assert "meta-trained 4 outer steps" in results[0][1] and "2 processes" in results[0][1]
    assert "meta-trained" not in results[1][1]   # process 1 prints no summary (gloo's own lines aside)

    # The same config in this (single) process.
    cfg = get_config("smoke").replace(outer_steps=4, eval_every=2)
    train(cfg, str(tmp_path / "one"), progress=False)
    got, ref = _theta(out / "optimizer.npz"), _theta(tmp_path / "one" / "optimizer.npz")
    assert got.keys() == ref.keys() and got
    # Same random numbers on any sharding; only the cross-process sums round differently:
    # float32 round-off, measured <= 3e-8 on theta entries up to ~1.
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)

    # One metrics log (process 0's) with every step once, and the evaluations.
    assert sorted(f for f in os.listdir(out) if not f.startswith("events.out.tfevents")) == [
        "config.json", "meta_training.png", "metrics.jsonl", "optimizer.npz", "train_state.npz",
        "train_state.prev.npz"]
    with open(out / "metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert [r["step"] for r in recs if "meta_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "eval_mean_loss" in r] == [0, 2, 4]
    with open(tmp_path / "one" / "metrics.jsonl") as f:
        ref_recs = [json.loads(line) for line in f]
    np.testing.assert_allclose([r.get("meta_loss", r.get("eval_mean_loss")) for r in recs],
                               [r.get("meta_loss", r.get("eval_mean_loss")) for r in ref_recs],
                               rtol=1e-5)


def test_lone_process_fails_fast_with_one_line(tmp_path):
    port = _free_port()
    t0 = time.time()
    proc = _lopt(["--out", str(tmp_path / "never"), "--distributed", "--coordinator", f"127.0.0.1:{port}",
                  "--num-processes", "2", "--process-id", "0", "--dist-timeout", "3"])
    rc, out, err = _finish(proc, timeout=60)
    elapsed = time.time() - t0
    assert rc == 2, (rc, out, err)
    assert err.strip() == (f"lopt: error: distributed: only processes [0] of 2 reached coordinator "
                           f"127.0.0.1:{port} within 3 s; start the others with --process-id 1 "
                           "or raise --dist-timeout")
    assert elapsed < 20, elapsed


@pytest.mark.parametrize("victim", [1, 0], ids=["peer_dies", "coordinator_dies"])
def test_a_peer_dying_mid_run_ends_the_others_with_one_line(tmp_path, victim):
    """Kill one of two processes (SIGKILL) after a checkpoint: the survivor ends within
    seconds (far inside --dist-timeout) with status 3 and one line naming the dead process,
    no traceback and no C++ abort; the last checkpoint loads; --resume continues from it."""
    import signal
    from meta_train.run import STATE_FILE
    from meta_train.state_io import _read
    port = _free_port()
    out = tmp_path / "run"
    dist = ["--set", "outer_steps=100000", "--set", "eval_every=0", "--out", str(out), "--distributed",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--dist-timeout", "120"]
    procs = [_lopt([*dist, "--process-id", str(i)]) for i in (0, 1)]
    deadline = time.time() + 240
    while not (out / STATE_FILE).exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.2)
    time.sleep(1.0)
    procs[victim].send_signal(signal.SIGKILL)
    t0 = time.time()
    rc, o, err = _finish(procs[1 - victim], timeout=60)
    elapsed = time.time() - t0
    procs[victim].communicate()
    assert rc == distributed.PEER_LOST_EXIT, (rc, err[-3000:])
    assert elapsed < 20, elapsed
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"lopt: error: distributed: process {victim} stopped mid-run"), err[-3000:]
    assert "--resume" in lines[-1]
    assert "Traceback" not in err
    if victim == 1:     # process 0's service outlives the peer: nothing from jax, only our line
        assert len(lines) == 1 and "Terminating process" not in err, err[-3000:]
    header, _ = _read(str(out / STATE_FILE))          # whole: its checksum holds
    assert header["format"] == "lopt-train-state"


def test_watchdogs_name_the_dead_process_among_three(monkeypatch):
    """Three processes: 2 dies. Process 0 (watching every peer) names it and tells the others
    before it stops; process 1, which sees only process 0 go, names process 2 too. A disarmed
    watchdog stays silent."""
    said = []

    def stop(what):
        said.append(what)
        threading.Event().wait()   # instead of ending the process: park this daemon thread

    def wait_for(n):
        deadline = time.time() + 5
        while len(said) < n and time.time() < deadline:
            time.sleep(0.01)
    monkeypatch.setattr(distributed, "_stop", stop)
    a0, a1 = socket.socketpair()          # process 0 <-> process 1
    b0, b2 = socket.socketpair()          # process 0 <-> process 2
    distributed._Watchdog({1: a0, 2: b0}, 0)
    distributed._Watchdog({0: a1}, 1)
    b2.close()                            # process 2 dies
    wait_for(1)
    assert said == ["process 2 stopped mid-run (its connection to process 0 closed); process 0 stops too"]
    time.sleep(0.2)
    a0.close()                            # process 0 exits
    wait_for(2)
    assert said[1] == "process 2 stopped mid-run (reported by process 0); process 1 stops too"
    c0, c1 = socket.socketpair()
    quiet = distributed._Watchdog({0: c1}, 1)
    quiet.disarm()
    c0.close()
    quiet.thread.join(5)
    assert not quiet.thread.is_alive() and len(said) == 2
    for s_ in (a1, b0, c1):
        s_.close()


def _run_threads(cfgs):
    """rendezvous() for each config in its own thread; returns the exception (or None) of each."""
    errors = [None] * len(cfgs)

    def one(i):
        try:
            distributed.rendezvous(cfgs[i])
        except DistributedError as e:
            errors[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cfgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_rendezvous_all_present_missing_and_duplicate():
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    assert _run_threads([DistConfig(addr, 3, i, 10) for i in (2, 0, 1)]) == [None] * 3

    # Process 2 of 3 never starts: both others fail, naming who is missing.
    t0 = time.time()
    errors = _run_threads([DistConfig(addr, 3, i, 1.5) for i in (0, 1)])
    assert time.time() - t0 < 10
    assert all(isinstance(e, DistributedError) for e in errors)
    assert "only processes [0, 1] of 3" in str(errors[0]) and "--process-id 2" in str(errors[0])
    assert str(errors[1]) == str(errors[0])

    errors = _run_threads([DistConfig(addr, 3, i, 5) for i in (0, 1, 1)])
    assert "two processes were started with --process-id 1" in str(errors[0])


def test_settings_from_flags_and_environment():
    env = {"LOPT_COORDINATOR": "h:100", "LOPT_NUM_PROCESSES": "4", "LOPT_PROCESS_ID": "3"}
    assert distributed.resolve(env=env) == DistConfig("h:100", 4, 3, distributed.DEFAULT_TIMEOUT)
    assert distributed.resolve("x:7", None, 1, 5, env=env) == DistConfig("x:7", 4, 1, 5.0)  # flags win
    with pytest.raises(DistributedError, match="--num-processes N"):
        distributed.resolve("h:1", None, 0, env={})
    with pytest.raises(DistributedError, match=r"--process-id must be in \[0, 1\]"):
        distributed.resolve("h:1", 2, 2, env={})
    with pytest.raises(DistributedError, match="HOST:PORT"):
        distributed.resolve("nohost", 2, 0, env={})
    with pytest.raises(DistributedError, match="LOPT_NUM_PROCESSES"):
        distributed.resolve(env={"LOPT_COORDINATOR": "h:1", "LOPT_NUM_PROCESSES": "two",
                                 "LOPT_PROCESS_ID": "0"})
