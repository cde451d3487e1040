"""Population sharding: the same config on 4 (fake CPU) devices gives the 1-device result,
with the population really split over the 4 devices."""
import os
import subprocess
import sys

import numpy as np
from jax.sharding import PartitionSpec as P

from meta_train import sharding
from procs import communicate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four PES outer steps of the smoke config (2 pairs = 4 particles), then the state gathered
# to numpy and placed back on the mesh (the resume path) and one more step from both.
SCRIPT = r"""
import sys, jax, numpy as np
from meta_train.config import get_config
from meta_train.trainer import MetaTrainer
tr = MetaTrainer(get_config("smoke"))
s = tr.init()
theta0 = [np.asarray(x) for x in jax.tree.leaves(s.theta)]
x = jax.tree.leaves(s.est_state.inner)[0]
norms = []
for _ in range(4):
    s, m = tr.outer_step(s)
    norms.append(float(m["grad_norm"]))
s2 = tr.place(tr.gather(s))
a, _ = tr.outer_step(s)
b, _ = tr.outer_step(s2)
y = jax.tree.leaves(s2.est_state.inner)[0]
resume_same = all(np.array_equal(np.asarray(u), np.asarray(v))
                  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
np.savez(sys.argv[1], *[np.asarray(t) for t in jax.tree.leaves(s.theta)],
         norms=np.array(norms), theta0=np.concatenate([t.ravel() for t in theta0]),
         shard_devices=len({sh.device for sh in x.addressable_shards}), leading=x.shape[0],
         shard_rows=x.addressable_shards[0].data.shape[0], devices=len(jax.devices()),
         placed_devices=len({sh.device for sh in y.addressable_shards}), resume_same=resume_same)
"""


def _launch(n_devices, out):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    rc, log, _ = communicate(proc, timeout, "sharding subprocess")
    assert rc == 0, log[-3000:]


def test_four_devices_match_one_device(tmp_path):
    one, four = tmp_path / "one.npz", tmp_path / "four.npz"
    procs = [_launch(1, one), _launch(4, four)]   # concurrently: most of the time is compiling
    for p in procs:
        _finish(p)
    r1, r4 = np.load(one), np.load(four)
    # The 4-device run really spread the 4 inner states: one row on each of 4 devices,
    # also after the host state was placed back on the mesh (resume).
    assert int(r4["devices"]) == 4 and int(r4["leading"]) == 4
    assert int(r4["shard_devices"]) == 4 and int(r4["shard_rows"]) == 1
    assert int(r4["placed_devices"]) == 4
    assert int(r1["shard_devices"]) == 1 and int(r1["shard_rows"]) == 4
    assert bool(r4["resume_same"]) and bool(r1["resume_same"])
    # Same random numbers whatever the sharding (partitionable threefry): the runs differ only
    # by float32 round-off in the cross-device sums; measured max |diff| of theta 3e-8
    # (theta entries up to ~1), so the tolerance is 1e-6 absolute / 1e-5 relative.
    np.testing.assert_allclose(r4["norms"], r1["norms"], rtol=1e-5)
    thetas = [k for k in r1.files if k.startswith("arr_")]
    assert thetas
    for k in thetas:
        np.testing.assert_allclose(r4[k], r1[k], rtol=1e-5, atol=1e-6)
    # ... and theta moved by far more than that tolerance, so agreement is not trivial.
    flat = np.concatenate([r1[k].ravel() for k in thetas])
    assert np.abs(flat - r1["theta0"]).max() > 1e-3
    assert np.all(r1["norms"] > 0)


class _Mesh:
    size = 4


def test_rule_shards_only_evenly_split_leading_axes():
    assert sharding.spec_for((8, 3), 4) == P("pop")
    assert sharding.spec_for((4,), 4) == P("pop")
    assert sharding.spec_for((2, 10), 4) == P()     # 2 particles cannot split over 4 devices
    assert sharding.spec_for((), 4) == P()          # scalars (step, counters) are replicated
    assert sharding.spec_for((6, 10), 1) == P("pop")


def test_uneven_population_warns_once():
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert sharding.warn_if_uneven(8, _Mesh()) is True
        assert sharding.warn_if_uneven(6, _Mesh()) is False
    assert len(w) == 1 and "6 particles is not divisible by 4 devices" in str(w[0].message)
