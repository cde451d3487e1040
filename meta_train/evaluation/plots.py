"""PNG plots (matplotlib, Agg backend; nothing opens a window)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_meta_training(records: list[dict], path: str) -> None:
    """Meta-loss (PES particles' mean) and periodic evaluation against outer step."""
    train = [r for r in records if "meta_loss" in r]
    evals = [r for r in records if "eval_mean_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        s = np.array([r["step"] for r in train])
        v = np.array([r["meta_loss"] for r in train])
        axes[0].plot(s, v, alpha=0.35, label="per step")
        if len(v) >= 5:
            w = max(1, len(v) // 20)
            axes[0].plot(s[w - 1:], np.convolve(v, np.ones(w) / w, mode="valid"), label=f"mean of {w}")
        axes[0].legend()
    axes[0].set(title="PES meta-loss (particles' mean normalised loss)", xlabel="outer step")
    if evals:
        s = [r["step"] for r in evals]
        families = sorted(k[:-len("/eval_mean_loss")] for k in evals[0] if k.endswith("/eval_mean_loss"))
        axes[1].plot(s, [r["eval_mean_loss"] for r in evals], "o-",
                     label="mean over horizon" + (" (all families)" if families else ""), lw=2)
        axes[1].plot(s, [r["eval_final_loss"] for r in evals], "s--", label="final", lw=2)
        for fam in families:    # several families: each one's mean over the horizon, thin
            axes[1].plot(s, [r.get(f"{fam}/eval_mean_loss", np.nan) for r in evals], lw=0.8, alpha=0.8,
                         label=fam)
        axes[1].legend(fontsize=7 if families else None)
    else:
        axes[1].text(0.5, 0.5, "no evaluation in this run\n(eval_every 0)", ha="center", va="center",
                     transform=axes[1].transAxes, color="0.4")
    axes[1].set(title="held-out evaluation (normalised loss)", xlabel="outer step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, np.ndarray], path: str, title: str, ylabel: str = "training loss",
                log_y: bool = True) -> None:
    """One line per optimizer: curves maps a label to a (steps,) or (runs, steps) array
    (the mean is drawn, with a band between min and max over runs)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, c in curves.items():
        c = np.atleast_2d(np.asarray(c, dtype=float))
        x = np.arange(1, c.shape[1] + 1)
        ax.plot(x, c.mean(0), label=label)
        if c.shape[0] > 1:
            ax.fill_between(x, c.min(0), c.max(0), alpha=0.15)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _line_styles():
    """label -> matplotlib style: Adam tuned black, Adam lr=1e-3 grey, the baselines thin
    and dotted, each learned optimizer its own colour with its " +guard" version dashed and its
    " +traj-guard" version dash-dotted."""
    colours: dict[str, str] = {}
    # tab10 without its grey, which is Adam lr=1e-3's colour
    palette = iter(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                    "#bcbd22", "#17becf"] * 3)

    def style(label: str) -> dict:
        fixed = {"Adam tuned": dict(color="black", lw=2.0), "Adam lr=1e-3": dict(color="0.55")}
        if label in fixed:
            return fixed[label]
        base = label.removesuffix(" +guard").removesuffix(" +traj-guard")
        if base not in colours:
            colours[base] = next(palette)
        if label.endswith(" tuned"):
            return dict(color=colours[base], lw=0.9, ls=":")
        ls = "--" if label.endswith(" +guard") else "-." if label.endswith(" +traj-guard") else "-"
        return dict(color=colours[base], lw=1.6, ls=ls)
    return style


def plot_suite(curves: dict[str, np.ndarray], reference: np.ndarray, path: str, title: str,
               window: int = 1) -> None:
    """Median over tasks of each optimizer's smoothed training loss divided by ``reference``
    (per task, e.g. tuned Adam's final loss; 1 = as good as that). ``curves`` maps a label to a
    (tasks, steps) array; labels ending in " +guard" are drawn dashed in their base colour."""
    from meta_train.evaluation.curves import smooth
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    style = _line_styles()
    ref = np.asarray(reference, dtype=float)[:, None]
    for label, c in curves.items():
        c = smooth(np.asarray(c, dtype=float), window) / ref
        ax.plot(np.arange(1, c.shape[1] + 1), np.median(c, axis=0), label=label, **style(label))
    ax.axhline(1.0, color="black", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel="training loss / tuned Adam's final (median over tasks)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speedup(steps: np.ndarray, medians: dict[str, np.ndarray], path: str, title: str) -> None:
    """Median over tasks of each optimizer's speedup over tuned Adam against the step at
    which it is measured (1 = as fast as Adam tuned with hindsight at every step)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    style = _line_styles()
    for label, m in medians.items():
        ax.plot(steps, m, label=label, **style(label))
    ax.axhline(1.0, color="black", lw=0.6, ls=":")
    ax.set(title=title, xlabel="step t", ylabel="speedup over tuned Adam at t (median over tasks)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(taus: np.ndarray, profiles: dict[str, tuple[np.ndarray, np.ndarray]], path: str,
                  title: str) -> None:
    """Performance profiles: per label, the fraction of runs whose score is above tau (log x
    axis), with its (2, len(taus)) interval as a band."""
    fig, ax = plt.subplots(figsize=(7.6, 4.6))
    style = _line_styles()
    for label, (p, ci) in profiles.items():
        st = style(label)
        ax.plot(taus, p, label=label, **st)
        ax.fill_between(taus, ci[0], ci[1], color=st["color"], alpha=0.12, lw=0)
    ax.axvline(1.0, color="black", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set(title=title, xlabel="tau (speedup over tuned Adam)", ylabel="fraction of runs with speedup > tau",
           ylim=(0, 1.02))
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
