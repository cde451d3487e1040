"""PyTorch bridge: this project's learned optimizers as ``torch.optim.Optimizer`` s.

The optional ``[torch]`` extra (``pip install torch``); nothing else in ``learned_opt``
imports this package, and it imports torch.

    from learned_opt.torch_bridge import LearnedOptim
    opt = LearnedOptim.from_checkpoint("general", model.parameters(), num_steps=1000)
    loss.backward(); opt.step(loss=loss)

**What it computes.** For a checkpoint ``(lopt, theta)`` (``learned_opt.load``) one ``step``
is JAX's ``new_params = opt_update(theta, state, grads, params, loss)`` on torch tensors: the
same features (momenta, RMS, Adafactor row/column statistics, time features from the step
count and ``num_steps``, per-tensor normalisation, muP scaling by fan-in, Newton-Schulz, the
DMD features of the recent gradients when the config has ``dmd_window > 0``), the same
network with theta's weights and the same output scaling, in float32, written out once per
architecture (``norm_mlp``, ``mlp``, ``adafactor_mlp``, ``rnn_mlp``, ``lstm``: one module
each; ``dmd.py``, ``ops.py`` hold what they share). Measured against JAX
(tests/test_torch_bridge.py, benchmarks/torch_bridge.py): each step agrees to 1-2 float32 ulp
(to ~1e-5 with DMD features, whose eigen-decompositions are that sensitive in JAX too); after
100 steps of training the same model, each framework with its own gradients, the parameters
agree to 3e-7 .. 3e-6 where the training dynamics do not amplify rounding (they do for the
shipped lstm on that model, in JAX alone too).

**Layout** (``layout.py``): a torch tensor with ``ndim >= 2`` is stepped as the haiku tensor
``P.permute(2, ..., ndim - 1, 1, 0)`` (``nn.Linear`` ``(out, in)`` -> ``(in, out)``,
``nn.Conv2d`` ``(out, in, kh, kw)`` -> ``(kh, kw, in, out)``), so fan-in, Adafactor's
rows/columns and Newton-Schulz see what JAX sees on the corresponding haiku weight; a group
with ``layout="haiku"`` is stepped as stored (e.g. ``nn.Embedding`` tables).

**Randomness.** None: every bridged architecture ignores ``opt_update``'s ``key``.

**Loss.** Only ``rnn_mlp`` reads it: ``step(loss=loss)`` (or a closure); without it that
architecture raises ``LearnedOptError``; the others accept and ignore it.

**Not bridged**: architectures other than the five above (and subclasses of theirs, which
may change the step) raise :class:`UnsupportedOptimizerError` naming the supported ones.
"""
import torch  # noqa: F401  (the extra's dependency, imported first)

from learned_opt.torch_bridge.layout import from_haiku, haiku_shape, to_haiku
from learned_opt.torch_bridge.optimizer import LearnedOptim
from learned_opt.torch_bridge.registry import (RULES, UnsupportedOptimizerError, make_rule,
                                               supported_architectures)
from learned_opt.torch_bridge.rule import Rule, Slot

from_checkpoint = LearnedOptim.from_checkpoint

__all__ = ["LearnedOptim", "from_checkpoint", "UnsupportedOptimizerError", "supported_architectures",
           "make_rule", "RULES", "Rule", "Slot", "to_haiku", "from_haiku", "haiku_shape"]
