"""What step size does a ``norm_mlp`` rule choose, per tensor, over a run?

``norm_mlp`` scales each tensor's normalised step by ``exp(L * tanh(mean(m)))``, its learned
per-tensor magnitude (``learned_opt.norm_mlp``). This prints ``tanh(mean(m))`` averaged over
each quarter of the run for every tensor of each suite's first task: +1 is the top of the
range (``e^L``, the largest step the rule can take), 0 the middle (step = ``lr * s_mup``), -1 the
bottom. Together with ``lr_multiples.py`` (is the final loss better at another multiple of the
step?) it tells a rule capped by its range (values near +1 and a better loss at larger steps)
from one that chooses small steps it should not (values well inside the range).

    python benchmarks/rule_magnitudes.py general --suite text_rnn --suite mnist1d_mlp

The rule is the loaded one with a ``jax.debug.callback`` on each tensor's ``m``; the steps it
takes are unchanged.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SUITES = ("mnist1d_mlp", "quadratic_30d", "nqm", "text_rnn", "text_transformer")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="general", help="a norm_mlp file or shipped name")
    p.add_argument("--suite", action="append", help="suites (default: %s)" % ", ".join(DEFAULT_SUITES))
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import learned_opt
    from learned_opt.norm_mlp import NormMLP
    from tasks.suites import get_suite
    from tasks.training import train

    loaded = learned_opt.load(args.checkpoint)
    if not isinstance(loaded.lopt, NormMLP):
        p.error(f"{args.checkpoint} is a {loaded.lopt.architecture} optimizer; this reads norm_mlp's magnitude")
    seen: dict = collections.defaultdict(list)    # trace-order index -> values, one per step
    traced = [0]

    class Probed(NormMLP):
        def tensor_step(self, theta, x, *args, **kwargs):
            # traced once per tensor, in leaf order: the trace-order index names the tensor
            index, traced[0] = traced[0], traced[0] + 1
            _, m = self.network(theta, x)
            jax.debug.callback(lambda v: seen[index].append(float(v)), jnp.tanh(jnp.mean(m)))
            return super().tensor_step(theta, x, *args, **kwargs)   # whatever else it takes

    probed = loaded._replace(lopt=Probed(loaded.lopt.config))
    print(f"{args.checkpoint}: tanh(mean(m)) per tensor, mean over each quarter of the run "
          f"(+1 = e^{loaded.lopt.config.max_log_scale:g} x the step, the top of its range)")
    for name in args.suite or DEFAULT_SUITES:
        suite = get_suite(name)
        cfgs, keys = suite.tasks(1)
        task = suite.task_family.task(jax.tree.map(lambda x: x[0], cfgs))
        params = jax.eval_shape(task.init, keys[0])
        paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        seen.clear()
        traced[0] = 0
        jax.block_until_ready(train(task, probed.as_optax(suite.num_steps), keys[0], suite.num_steps).final_loss)
        print(f"  {name} ({suite.num_steps} steps, task 0)")
        for j, (path, leaf) in enumerate(zip(paths, jax.tree.leaves(params))):
            v = np.concatenate([np.array(seen[i]) for i in seen if i % len(paths) == j])
            q = max(len(v) // 4, 1)
            quarters = " ".join(f"{v[i * q:(i + 1) * q].mean():+.2f}" for i in range(4))
            print(f"    {path:<26} {str(leaf.shape):<11} {quarters}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
