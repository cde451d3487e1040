"""Shared by the task tests: a compiled Adam training run of any task family."""
import jax
import optax

_RUNS = {}


def adam_run(family, steps=50, lr=1e-2):
    """A jitted run(cfg, key) -> (eval loss before, eval loss after, batch losses) of Adam on
    family.task(cfg); compiled once per (family, steps, lr) and shared by all its cfgs
    (vmap it to train a population)."""
    if (family, steps, lr) not in _RUNS:
        opt = optax.adam(lr)

        @jax.jit
        def run(cfg, key):
            task = family.task(cfg)
            k_init, k_run = jax.random.split(key)
            params = task.init(k_init)

            def step(carry, k):
                p, s = carry
                loss, g = jax.value_and_grad(task.loss)(p, k, task.sample_batch(k))
                u, s = opt.update(g, s, p)
                return (optax.apply_updates(p, u), s), loss

            (final, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                              jax.random.split(k_run, steps))
            return task.eval_loss(params), task.eval_loss(final), losses

        _RUNS[(family, steps, lr)] = run
    return _RUNS[(family, steps, lr)]
