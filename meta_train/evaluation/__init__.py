"""The evaluation layer: everything that trains tasks to *measure* optimizers, never to meta-train.

    curves.py    run_task and vmapped sweeps over tasks, seeds and learning rates (every run is
                 tasks.training.train, the rollout meta-training's periodic evaluation uses too),
                 smoothing, final loss
    speedup.py   speedup over tuned Adam (the learned_optimization / VeLO metric)
    compare.py   every optimizer, tuned baselines and Adam's grid on a suite (tasks.suites)
    report.py    `lopt report`: Markdown + JSON + PNGs
    plots.py     the PNGs
    apply.py     `lopt apply`: a trained optimizer on a named task beside Adam

Dependency rule (tests/test_dependencies.py): this package imports learned_opt and tasks, never
the meta-training core (trainer, estimators, unroll, run, ...) or the CLI.
"""
