"""Training a torch model with the shipped ``general`` learned optimizer, next to Adam.

    PYTHONPATH=. .venv/bin/python examples/torch_mlp.py [--steps 300]

A 64-64-10 ReLU MLP (``torch.nn``) on scikit-learn's 8x8 digits (1437 train / 360 test images,
pixels scaled to [0, 1]), minibatches of 128, cross-entropy. The same initial network is
trained ``steps`` steps by

    LearnedOptim.from_checkpoint("general", model.parameters(), num_steps=steps)

(the JAX optimizer of ``checkpoints/general``, stepping the torch tensors through
``learned_opt.torch_bridge``; ``num_steps`` tells it the run's length) and by
``torch.optim.Adam(lr=1e-3)``, on the same batches; it prints the final training and test
losses of both.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from learned_opt.torch_bridge import LearnedOptim


def make_data(seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed)
    as_t = lambda a, dt: torch.tensor(np.asarray(a), dtype=dt)   # noqa: E731
    return (as_t(x_tr, torch.float32), as_t(y_tr, torch.long),
            as_t(x_te, torch.float32), as_t(y_te, torch.long))


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(model, opt, x, y, steps: int, batch: int = 128, seed: int = 0) -> float:
    """``steps`` minibatch steps; returns the final full-training-set loss."""
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        if isinstance(opt, LearnedOptim):
            opt.step(loss=loss)        # only rnn_mlp reads the loss; passing it is harmless
        else:
            opt.step()
    return evaluate(model, x, y)


@torch.no_grad()
def evaluate(model, x, y) -> float:
    return float(torch.nn.functional.cross_entropy(model(x), y))


def main(steps: int = 300, verbose: bool = True) -> dict[str, float]:
    """Train both ways; returns the initial and final training losses (and test losses)."""
    x_tr, y_tr, x_te, y_te = make_data()
    out = {"initial": evaluate(make_model(), x_tr, y_tr)}
    for name in ("learned", "adam"):
        model = make_model()
        opt = (LearnedOptim.from_checkpoint("general", model.parameters(), num_steps=steps)
               if name == "learned" else torch.optim.Adam(model.parameters(), lr=1e-3))
        out[name] = train(model, opt, x_tr, y_tr, steps)
        out[name + "_test"] = evaluate(model, x_te, y_te)
    if verbose:
        print(f"digits, 64-64-10 MLP, {steps} steps of batch 128; "
              f"initial train loss {out['initial']:.4f}")
        print(f"  learned 'general' (torch bridge): train {out['learned']:.4f}  test {out['learned_test']:.4f}")
        print(f"  Adam lr=1e-3:                     train {out['adam']:.4f}  test {out['adam_test']:.4f}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    main(ap.parse_args().steps)
