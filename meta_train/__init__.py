"""Meta-training learned optimizers, and measuring them.

The meta-training core (imports learned_opt and tasks, never the evaluation layer or the CLI):

    unroll.py       Unroll: any truncatable inner computation; learned_optimizer_unroll trains a
                    learned optimizer on a task family with tasks.training.train_step
    estimators.py   PES, truncated ES, full-episode ES, truncated BPTT; the ESTIMATORS registry
    config.py       TrainConfig (frozen, JSON round trip) and the named configs
    trainer.py      MetaTrainer: one jitted outer step, NaN-safe meta-updates, periodic evaluation
    sharding.py     the population sharded over a device mesh
    distributed.py  several hosts through jax.distributed
    state_io.py     training-state files (the archive format of learned_opt.files)
    run.py          a run directory: progress, metrics.jsonl, atomic checkpoints, --resume

``meta_train.evaluation`` (imports learned_opt and tasks, never the core): rollouts of any optax
transformation, speedup over tuned Adam, tuned baselines, reports, plots, ``lopt apply``.

On top of both: ``cli.py`` (the ``lopt`` command) and ``ship.py`` (model cards for checkpoints/).
tests/test_dependencies.py enforces these directions.
"""
