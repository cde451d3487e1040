"""The diagnostic scripts the README cites as evidence still run against the current code, on the
cheapest suite (30-d quadratics): a script that only breaks when someone next needs it is a defect
(``rule_magnitudes.py`` did, when ``norm_mlp``'s per-tensor step gained an argument)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".py"))


def run(script: str, *args: str, timeout: int = 240) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_rule_magnitudes_reads_the_shipped_rule_per_tensor():
    text = run("rule_magnitudes.py", "general", "--suite", "quadratic_30d")
    assert "quadratic_30d (400 steps, task 0)" in text
    (row,) = [line for line in text.splitlines() if line.strip().startswith("['x']")]
    quarters = [float(v) for v in re.findall(r"[+-]\d\.\d\d", row)]
    assert len(quarters) == 4 and all(-1.0 <= q <= 1.0 for q in quarters), row


def test_lr_multiples_reports_a_ratio_per_multiple():
    text = run("lr_multiples.py", "general", "--suite", "quadratic_30d", "--tasks", "1",
               "--mults", "1", "3")
    (row,) = [line for line in text.splitlines() if "task 0" in line]
    ratios = [float(v) for v in re.findall(r"x(?:1|3): ([0-9.e+-]+)", row)]
    assert len(ratios) == 2 and all(0 < r < 1e3 for r in ratios), row


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_explains_itself(script):
    assert "usage:" in run(script, "--help", timeout=120)


def test_ablation_variants_switch_one_ingredient_at_equal_population():
    """Each ablation variant is config ``general`` with one ingredient switched, the same outer
    steps and seed, and the same number of particles (the same population); every
    variant's config is valid as a training config."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import ablation
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    from meta_train.config import TrainConfig
    import json
    full = ablation.variant_config("full", 30, 7)
    assert (full.outer_steps, full.seed) == (30, 7)

    def particles(cfg):
        return sum(e.num_pairs if e.num_pairs is not None else cfg.num_pairs for e in cfg.family_entries())

    base = json.loads(full.to_json())
    for name in ablation.VARIANTS:
        cfg = ablation.variant_config(name, 30, 7)
        TrainConfig.from_dict(json.loads(cfg.to_json()))   # round-trips and validates
        assert particles(cfg) == particles(full), name
        d = json.loads(cfg.to_json())
        changed = {k for k in base if d[k] != base[k]}
        if name == "full":
            assert not changed
        elif "lopt_config" in changed:
            assert changed == {"lopt_config"}, name
            inner = {k for k in base["lopt_config"].keys() | d["lopt_config"].keys()
                     if base["lopt_config"].get(k) != d["lopt_config"].get(k)}
            assert 1 <= len(inner) <= 2, (name, inner)   # dmd sets window and rank
        else:
            assert len(changed) == 1, (name, changed)
