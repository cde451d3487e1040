"""Run a meta-training job in a directory: progress, JSON-lines metrics, a PNG of the
curves, atomic checkpoints of the full state, and resume after a kill.

Files in the run directory:
    config.json          the TrainConfig
    metrics.jsonl        one JSON object per logged outer step / evaluation
    train_state.npz      full training state (atomic, every checkpoint_every steps; state_io.py)
    train_state.prev.npz the checkpoint before it: resume falls back to it, with a one-line
                         warning, when the newest is missing, truncated or fails its checksum
    optimizer.npz        the learned optimizer (learned_opt.save format)
    meta_training.png    meta-training curves (drawn by ``lopt train``, from metrics.jsonl)
    events.out.tfevents.*  the same scalars for TensorBoard (``tensorboard --logdir DIR``; one file
                         per start, a resumed start purges the steps it repeats)

With several processes (``lopt train --distributed``, see distributed.py) every process
runs the same loop on its share of the population; the state is gathered (a collective)
before each checkpoint and process 0 alone writes these files. On resume every process
reads train_state.npz, so the run directory must be on a filesystem all hosts see.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zlib

import jax
import numpy as np
from tqdm import tqdm

import learned_opt
from learned_opt.files import atomic_write_text, read_jsonl, write_jsonl
from meta_train.config import ConfigError, TrainConfig
from meta_train.distributed import DistributedError
from meta_train.state_io import StateFileError, load_state, save_state
from meta_train.trainer import MetaTrainer

STATE_FILE = "train_state.npz"
PREV_STATE_FILE = "train_state.prev.npz"
OPTIMIZER_FILE = "optimizer.npz"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "meta_training.png"


def _to_py(metrics: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in jax.device_get(metrics).items()}


def _resolve_config(out_dir: str, config: TrainConfig, resume: bool) -> TrainConfig:
    cfg_path = os.path.join(out_dir, "config.json")
    if not resume and any(os.path.exists(os.path.join(out_dir, f))
                          for f in (STATE_FILE, PREV_STATE_FILE)):
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it "
                          "or choose another --out")
    if resume and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved = TrainConfig.from_dict(json.load(f))
        # Only the length of the run may change on resume (and the description, which is prose: a
        # named config's wording may change between the start and the resume).
        if saved.replace(outer_steps=config.outer_steps, description=config.description) != config:
            raise ConfigError(f"--resume: {out_dir} was started with another config "
                              f"(see {cfg_path}); only outer_steps (and the description) may change")
    return config


def _same_on_all_processes(value: int) -> list[int] | None:
    """None when every process passed the same ``value``, else the list of all values.
    A collective: with several processes all of them must call it."""
    if jax.process_count() == 1:
        return None
    from jax.experimental import multihost_utils
    every = np.asarray(multihost_utils.process_allgather(np.array([value], np.int64))).ravel()
    return None if (every == every[0]).all() else every.tolist()


def _check_processes_agree(config: TrainConfig, start: int | None = None) -> None:
    """With several processes: all must run the same config and resume from the same step
    (they would otherwise run different collective programs or step counts and hang)."""
    if start is None:
        if _same_on_all_processes(zlib.crc32(config.to_json().encode())) is not None:
            raise DistributedError("the processes were started with different configs; pass the "
                                   "same --config and --set options to every process")
    elif (steps := _same_on_all_processes(start)) is not None:
        raise DistributedError(
            f"processes would continue from different steps {steps}; the run directory must "
            "be on a filesystem all hosts see")


def save_checkpoint(out_dir: str, state, config_json: str, rotate: bool = True) -> None:
    """Write ``state`` as the newest checkpoint, keeping the one before it as the previous
    (``rotate=False`` overwrites the newest without moving it: used when the newest is bad).
    The new file is complete and synced before two renames (newest -> previous, new ->
    newest): a kill at any point leaves a good newest checkpoint, or, between the two renames,
    a good previous one."""
    newest = os.path.join(out_dir, STATE_FILE)

    def keep_previous():
        if rotate and os.path.exists(newest):
            os.replace(newest, os.path.join(out_dir, PREV_STATE_FILE))
    save_state(newest, state, config_json, before_replace=keep_previous)


def load_checkpoint(out_dir: str, template, warn=None):
    """The newest good checkpoint of a run directory as ``(state, fell_back)``: the newest file,
    or, when it is missing, truncated, corrupt or of another structure, the previous one, with
    a one-line warning through ``warn`` (default: stderr). None when the directory holds no
    checkpoint; StateFileError when neither is usable."""
    warn = warn or (lambda msg: print(f"lopt: warning: {msg}", file=sys.stderr))
    newest, prev = (os.path.join(out_dir, f) for f in (STATE_FILE, PREV_STATE_FILE))
    if not os.path.exists(newest) and not os.path.exists(prev):
        return None
    problem = f"{newest} is missing"
    if os.path.exists(newest):
        try:
            return load_state(newest, template), False
        except StateFileError as e:
            if not os.path.exists(prev):
                raise
            problem = str(e)
    try:
        state = load_state(prev, template)
    except StateFileError as e:
        raise StateFileError(f"no usable checkpoint in {out_dir}: {problem}; and {e}") from None
    warn(f"{problem}; resuming from the previous checkpoint {prev} (step {int(state.step)})")
    return state, True


def _tensorboard(out_dir: str, start: int):
    """A TensorBoard event writer in the run directory (tensorboardX: no TensorFlow). On a
    start resumed after step ``start`` writes from step ``start + 1`` on, so events of earlier
    starts at steps > ``start`` are purged from the view (a fresh start purges them all).
    tensorboardX names a file by the second it opened and the host, so a resume within the same
    second as the start before it would truncate that start's file: each start's file also
    carries its start step and process id."""
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir=out_dir, purge_step=start + 1 if start else 0, flush_secs=10,
                         filename_suffix=f".start{start}.pid{os.getpid()}")


def _scalars(rec: dict) -> dict:
    """The numbers of a metrics record (flags as 0/1), keyed as in metrics.jsonl."""
    return {k: float(v) for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}


def train(config: TrainConfig, out_dir: str, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, mesh=None, tensorboard: bool = True):
    """Meta-train into ``out_dir``. ``stop_after`` ends the loop after that many outer
    steps in total without a checkpoint there, as a kill would (used to test resume).
    ``mesh``: the device mesh to shard the population over (default: all devices).
    ``tensorboard``: also write every logged scalar as TensorBoard events in ``out_dir``.
    Returns (final state as numpy, metric records, summary)."""
    main = jax.process_index() == 0
    config = _resolve_config(out_dir, config, resume)
    _check_processes_agree(config)
    if main:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, "config.json"), config.to_json())
    trainer = MetaTrainer(config, mesh)
    metrics_path = os.path.join(out_dir, METRICS_FILE)

    def to_host(state):
        # A collective with several processes: every process calls it at the same steps.
        return jax.device_get(state) if jax.process_count() == 1 else trainer.gather(state)

    state = trainer.init()
    records: list[dict] = []
    rotate = True   # False after falling back: the bad newest file is overwritten, not kept
    loaded = load_checkpoint(out_dir, state, warn=None if main else (lambda msg: None)) if resume else None
    if loaded is not None:
        restored, fell_back = loaded
        rotate = not fell_back
        state = trainer.place(jax.device_get(restored))
        start = int(state.step)
        records = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= start]
    _check_processes_agree(config, start=int(state.step))
    if main:
        write_jsonl(metrics_path, records)

    end = config.outer_steps if stop_after is None else min(config.outer_steps, stop_after)
    start = int(state.step)
    t0 = time.time()
    labels = [e.label for e in trainer.entries]
    bar = tqdm(total=config.outer_steps, initial=start, disable=not (progress and main),
               desc=f"meta-train {'+'.join(labels)}", unit="step", dynamic_ncols=True)
    inner_steps_per_outer = trainer.estimator.inner_steps_per_estimate
    log = open(metrics_path, "a") if main else None
    tb = _tensorboard(out_dir, start) if (main and tensorboard) else None
    try:
        def write(rec):
            records.append(rec)
            if log is not None:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if tb is not None:
                for key, value in _scalars(rec).items():
                    tb.add_scalar(key, value, rec["step"])

        if start == 0 and config.eval_every:
            write({"step": 0, **_to_py(trainer.evaluate(state.theta))})
        for step in range(start + 1, end + 1):
            state, metrics = trainer.outer_step(state)
            if step % config.log_every == 0 or step == end:
                rec = {"step": step, "time_s": round(time.time() - t0, 3), **_to_py(metrics)}
                write(rec)
                per_family = ({} if len(labels) == 1 else
                              {lb: f"{rec[lb + '/meta_loss']:.3f}" for lb in labels})
                bar.set_postfix(meta_loss=f"{rec['meta_loss']:.3f}", **per_family)
            if config.eval_every and (step % config.eval_every == 0 or step == config.outer_steps):
                rec = {"step": step, **_to_py(trainer.evaluate(state.theta))}
                write(rec)
            if step % config.checkpoint_every == 0 or step == config.outer_steps:
                host = to_host(state)
                if main:
                    save_checkpoint(out_dir, host, config.to_json(), rotate)
                rotate = True
            bar.update(1)
    finally:
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
    bar.close()
    elapsed = time.time() - t0
    done_steps = end - start
    summary = {"outer_steps_run": done_steps, "wall_s": round(elapsed, 2),
               "inner_steps_per_s": round(done_steps * inner_steps_per_outer / max(elapsed, 1e-9), 1),
               "devices": trainer.mesh.size, "processes": jax.process_count()}
    host = to_host(state)
    if main:
        learned_opt.save(os.path.join(out_dir, OPTIMIZER_FILE), trainer.lopt, host.theta,
                         metadata={"outer_steps": int(host.step),
                                   "train_config": json.loads(config.to_json())})
    return host, records, summary


def final_eval(records: list[dict]) -> dict | None:
    evals = [r for r in records if "eval_mean_loss" in r]
    return evals[-1] if evals else None

