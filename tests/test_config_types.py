"""Every config field is checked against its declared type before any range check: a value of
the wrong type is one ConfigError naming the key, the expected type and the value; NaN and
infinities are rejected (no field means anything by them); an integral number written as a
float (``outer_steps=1e4``) is the integer."""
import dataclasses
import typing

import numpy as np
import pytest

from meta_train.config import ConfigError, FamilyEntry, TrainConfig, get_config


@pytest.mark.parametrize("override, message", [
    ("outer_steps=1.5", "outer_steps must be an integer, got 1.5"),
    ("outer_steps=\"10\"", "outer_steps must be an integer, got '10'"),
    ("sigma=nan", "sigma must be a number, got 'nan'"),          # not JSON: kept as a string
    ("sigma=NaN", "sigma must be a finite number, got nan"),
    ("meta_lr=-Infinity", "meta_lr must be a finite number"),
    ("antithetic=1", "antithetic must be true or false, got 1"),
    ("num_pairs=true", "num_pairs must be an integer, got True"),
    ("loss_clip=\"big\"", "loss_clip must be a number or null, got 'big'"),
    ("family=3", "family must be a string, got 3"),
    ("family_kwargs=[1]", "family_kwargs must be a JSON object, got \\[1\\]"),
    ("families={\"family\": \"quadratic\"}", "families must be a list"),
    ("families=[{\"family\": \"quadratic\", \"weight\": \"x\"}]",
     "families entry weight must be a number, got 'x'"),
    ("families=[{\"family\": \"quadratic\", \"num_pairs\": 2.5}]",
     "families entry num_pairs must be an integer or null, got 2.5"),
    ("seed=-1", "seed must be in"),
    ("seed=99999999999999", "seed must be in"),
    ("seed=" + "9" * 400, "seed must be in"),
    ("sigma=" + "9" * 400, "sigma must be a finite number, got a 400-digit integer"),
])
def test_wrong_types_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        get_config("smoke", [override])


def test_integral_floats_become_integers_and_valid_values_pass():
    cfg = get_config("smoke", ["outer_steps=1e4", "meta_lr_final=null", "sigma=0.02", "seed=4294967295"])
    assert cfg.outer_steps == 10000 and isinstance(cfg.outer_steps, int)
    assert cfg.meta_lr_final is None and cfg.sigma == 0.02
    assert FamilyEntry.from_dict({"family": "quadratic", "weight": 2}).weight == 2
    # a float field holds a float: processes given sigma=1 and sigma=1.0 run the same config
    assert get_config("smoke", ["sigma=1"]).to_json() == get_config("smoke", ["sigma=1.0"]).to_json()


def test_optional_written_either_way_is_a_union():
    from learned_opt.checks import check_type
    assert check_type("k", None, typing.Optional[float]) is None
    assert check_type("k", 3, typing.Optional[float]) == 3.0
    with pytest.raises(ConfigError, match="k must be a finite number"):
        check_type("k", float("nan"), typing.Optional[float], ConfigError)
    with pytest.raises(ConfigError, match="k must be a number or null"):
        check_type("k", "x", float | None, ConfigError)


def test_every_field_has_a_checked_type():
    """Each field's annotation is one the checker knows, so no field goes unchecked."""
    for cls in (TrainConfig, FamilyEntry):
        for name, kind in typing.get_type_hints(cls).items():
            options = [o for o in (typing.get_args(kind) or (kind,)) if o is not type(None)]
            assert len(options) == 1 and options[0] in (int, float, bool, str, dict, tuple), (cls, name)
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= {"outer_steps", "sigma", "families"}


def test_general_fast_is_the_general_recipe_on_short_episodes():
    """The laptop-budget config changes only the episode range, the budget and the optimizer's horizon
    that follows the range (the ablation's `short_episodes` variant, docs/ablation.md); everything else
    follows `general`."""
    general, fast = get_config("general"), get_config("general_fast")
    changed = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(general, f.name) != getattr(fast, f.name)}
    assert changed == {"max_episode_length", "outer_steps", "eval_every", "description", "lopt_config"}
    assert (fast.min_episode_length, fast.max_episode_length, fast.outer_steps) == (100, 400, 1200)
    # the optimizer's own horizon is its longest episode (only runs longer than that see it)
    assert fast.lopt_config == {**general.lopt_config, "trained_horizon": fast.max_episode_length}


def changed_fields(a: TrainConfig, b: TrainConfig) -> set[str]:
    """The names of the fields where two configs differ."""
    return {f.name for f in dataclasses.fields(TrainConfig) if getattr(a, f.name) != getattr(b, f.name)}


def test_general_broad_fine_tunes_v7_on_the_mixture_plus_two_families():
    """The shipped general's recipe (v8): general_fast's rule and episodes, its eight families first and
    unchanged, then two more (wider 1-D convs, a transformer on source code), started from the archived
    v7 file, which must load as the same architecture with the same meta-parameter shapes."""
    import jax
    import learned_opt
    fast, broad = get_config("general_fast"), get_config("general_broad")
    changed = changed_fields(fast, broad)
    assert changed == {"families", "init_from", "meta_lr", "outer_steps", "eval_every",
                       "checkpoint_every", "description"}
    assert broad.families[:len(fast.families)] == fast.families
    added = [(e["family"], e.get("kwargs", {}).get("corpus")) for e in broad.families[len(fast.families):]]
    assert added == [("mnist1d_conv", None), ("text_transformer", "stdlib_code")]
    assert broad.meta_lr < fast.meta_lr and broad.meta_lr_final == fast.meta_lr_final
    v7, theta, _ = learned_opt.load(broad.init_from)
    lopt, theta8, _ = learned_opt.load("general")
    assert v7.architecture == lopt.architecture == broad.architecture
    assert jax.tree.map(np.shape, theta) == jax.tree.map(np.shape, theta8)


def test_general_broad_attn_is_v8s_recipe_with_only_the_transformer_family_weighted_up():
    """The shipped general's recipe (v9) differs from v8's in one family's weight: the character
    transformer's, 1 -> 4; every other family, and every other setting, is v8's."""
    broad, attn = get_config("general_broad"), get_config("general_broad_attn")
    assert changed_fields(broad, attn) == {"families", "description"}
    differ = [(a, b) for a, b in zip(broad.families, attn.families) if a != b]
    assert len(attn.families) == len(broad.families) and len(differ) == 1
    (a, b), = differ
    assert a["label"] == "attn_code" and a.get("weight", 1.0) == 1.0 and b == {**a, "weight": 4.0}


def test_general_broad_scale_is_v8s_recipe_with_the_scale_input_started_from_v7():
    """The scale-input ablation of v8's recipe: only the rule's ``scale_input`` differs (and the
    description); v7 loads into it through a zero first-layer row for sigma (``adapt_theta``), so
    meta-training starts from exactly v7's steps."""
    import learned_opt
    from meta_train.trainer import initial_theta
    broad, scaled = get_config("general_broad"), get_config("general_broad_scale")
    changed = changed_fields(broad, scaled)
    assert changed == {"lopt_config", "description"}
    assert scaled.lopt_config == {**broad.lopt_config, "scale_input": True}
    lopt = learned_opt.make(scaled.architecture, scaled.lopt_config)
    theta = initial_theta(scaled, lopt)
    _, theta7, _ = learned_opt.load(scaled.init_from)
    w, w7 = np.asarray(theta["mlp"]["linear_0"]["w"]), np.asarray(theta7["mlp"]["linear_0"]["w"])
    sigma = lopt.constant_channels()[1] - 1
    assert w.shape[0] == w7.shape[0] + 1 and not w[sigma].any()
    np.testing.assert_array_equal(np.delete(w, sigma, axis=0), w7)
