"""Property-based fuzzing (hypothesis, bounded and fast): whatever a user types or points the
tools at, the answer is a result or one clear LearnedOptError line, never a traceback.

- configs: any JSON object as a TrainConfig (known and unknown keys, every JSON type, NaN, inf,
  huge and negative numbers, nested families) builds a config that round-trips through JSON, or
  raises ConfigError;
- CLI arguments: ``lopt train`` / ``lopt apply`` with generated flags and ``--set`` pairs exit
  with status 0 or 2 and at most one ``lopt: error:`` line (the expensive work is replaced by a
  sentinel once the input has been accepted);
- task kwargs: every family with generated keyword arguments builds a family whose sampled task
  initialises (traced abstractly), or raises TaskError;
- checkpoint files: an optimizer file or a training state with truncations, flipped bytes or an
  edited header loads exactly the saved numbers or raises a CheckpointError / StateFileError.
"""
import contextlib
import io
import json
import os

import jax
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import learned_opt
import tasks
from learned_opt.errors import LearnedOptError
from meta_train import cli
from meta_train.config import NAMED_CONFIGS, ConfigError, TrainConfig
from tasks.registry import family_kwargs, list_families

FIELDS = sorted(f for f in TrainConfig.__dataclass_fields__)
# Bounded and reproducible in the suite; LOPT_FUZZ_EXAMPLES=500 (random seeds) for a longer hunt.
_EXAMPLES = int(os.environ.get("LOPT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize="LOPT_FUZZ_EXAMPLES" not in os.environ, print_blob=True)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10),
    st.text(max_size=12), st.sampled_from(["pes", "nres", "log", "mean", "final", "quadratic", "adam"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)
family_entries = st.one_of(st.sampled_from(list(list_families())), st.dictionaries(
    st.sampled_from(["family", "kwargs", "weight", "augment", "num_pairs", "label", "bogus"]),
    json_values, max_size=4))


def _one_line_error(e: BaseException) -> bool:
    return isinstance(e, LearnedOptError) and "\n" not in str(e).strip() and len(str(e)) < 2000


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)),
                       st.one_of(json_values, st.lists(family_entries, max_size=3)), max_size=6))
def test_fuzzed_configs_build_or_fail_in_one_line(d):
    base = json.loads(NAMED_CONFIGS["smoke"].to_json())
    try:
        cfg = TrainConfig.from_dict({**base, **d})
    except ConfigError as e:
        event("rejected")
        assert _one_line_error(e), e
        return
    event("accepted")
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


class _Accepted(Exception):
    """Raised in place of the work a command would start once its input is accepted."""


_set_keys = st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=8))
_set_values = st.one_of(st.sampled_from(["1e9", "nan", "NaN", "Infinity", "-1", "0", "true", "null", "[]",
                                         "{}", "1.5", "\"x\"", "pes", "", "=", "[1,2", "1e400"]),
                        json_values.map(json.dumps), st.text(max_size=8))
_train_argv = st.lists(st.one_of(
    st.tuples(st.just("--set"), st.tuples(_set_keys, _set_values).map(lambda kv: f"{kv[0]}={kv[1]}")),
    st.tuples(st.just("--config"), st.one_of(st.sampled_from(sorted(NAMED_CONFIGS)), st.text(max_size=6))),
    st.tuples(st.just("--estimator"), st.sampled_from(["pes", "nres", "tes", "es", ""])),
    st.tuples(st.just("--report-tasks"), st.sampled_from(["0", "-2", "3", "x", "1e3"])),
    st.tuples(st.sampled_from(["--resume", "--no-report", "--no-progress", "--bogus", "--process-id"])),
), max_size=5).map(lambda parts: ["train", "--out", "OUT"] + [a for p in parts for a in p])
_apply_argv = st.tuples(
    st.sampled_from(["mlp", "general", "nope", "x.npz", "/dev/null", ""]),
    st.sampled_from(["mnist1d_mlp_relu", "quadratic_10d", "no_such_task", ""]),
    st.lists(st.sampled_from(["--steps", "0", "-3", "10", "x", "--guard", "trajectory", "--check-every",
                              "5", "--seed", "--adam-lr", "nan", "1e-3"]), max_size=4),
).map(lambda t: ["apply", t[0], "--task", t[1], *t[2]])


@FUZZ
@given(st.one_of(_train_argv, _apply_argv))
def test_fuzzed_cli_arguments_exit_cleanly(tmp_path_factory, monkeypatch, argv):
    out = str(tmp_path_factory.mktemp("cli"))
    argv = [out if a == "OUT" else a for a in argv]

    def accepted(*args, **kwargs):
        raise _Accepted()
    import meta_train.evaluation.apply as apply_mod
    import meta_train.run as run_mod
    monkeypatch.setattr(run_mod, "train", accepted)
    monkeypatch.setattr(apply_mod, "apply_to_task", accepted)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:        # argparse: usage + one error line, status 2
            code = e.code
        except _Accepted:
            code = 0
    text = err.getvalue()
    event(f"{argv[0]}: " + ("accepted" if code == 0 else "usage error" if "usage:" in text else "lopt: error"))
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    assert sum(line.startswith("lopt: error:") for line in text.splitlines()) <= 1, text
    if code == 2 and "usage:" not in text:
        assert text.startswith("lopt: error:") and text.count("\n") == 1, text


FAMILIES = list(list_families())


def _kwarg_values(name):
    small = st.one_of(st.integers(-2, 40), st.floats(-3, 3), st.none(), st.booleans(), st.text(max_size=6),
                      st.floats(allow_nan=True))
    return st.one_of(small, st.lists(small, max_size=3), st.sampled_from(
        [[16], [8, 8], [], "relu", ["relu", "tanh"], "mnist1d", ["mnist1d"], [0], [-4], "gru", "lstm"]))


@FUZZ
@given(st.sampled_from(FAMILIES).flatmap(lambda n: st.tuples(st.just(n), st.dictionaries(
    # data_dir is left out: a valid path makes the family write its dataset cache there
    st.sampled_from([k for k in family_kwargs(n) if k != "data_dir"] + ["bogus"]), _kwarg_values(n),
    max_size=3))))
def test_fuzzed_task_kwargs_build_a_family_or_fail_in_one_line(args):
    name, kwargs = args
    try:
        family = tasks.get_family(name, **kwargs)
    except LearnedOptError as e:
        event("rejected")
        assert _one_line_error(e), e
        return
    event("built")
    key = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(lambda k: family.task(family.sample(k)).init(k), key)
    assert jax.tree.leaves(shapes)


_SAVED: dict = {}


def _saved(tmp_root: str):
    """One optimizer file and one training state, made once (kept out of hypothesis' reports)."""
    if not _SAVED:
        lopt = learned_opt.make("norm_mlp")
        theta = lopt.init(jax.random.PRNGKey(0))
        path = os.path.join(tmp_root, "opt.npz")
        learned_opt.save(path, lopt, theta, {"outer_steps": 3})
        from meta_train.config import get_config
        from meta_train.run import STATE_FILE, train
        run = os.path.join(tmp_root, "run")
        state, _, _ = train(get_config("smoke").replace(outer_steps=2, eval_every=0), run,
                            progress=False, tensorboard=False)
        _SAVED.update(opt=(path, theta), state=(os.path.join(run, STATE_FILE), state))
    return _SAVED


_mutations = st.lists(st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("header"), st.sampled_from(["format", "version", "architecture", "config", "sha256",
                                                   "leaves", "treedef", "metadata"]), json_values),
), min_size=1, max_size=3)


def _mutate(data: bytes, path: str, tmp: str, mutations) -> str:
    out = os.path.join(tmp, "m.npz")
    with open(out, "wb") as f:
        f.write(data)
    for m in mutations:
        data = open(out, "rb").read()
        if m[0] == "truncate":
            data = data[: int(m[1] * len(data))]
        elif m[0] == "flip" and data:
            i = min(int(m[1] * len(data)), len(data) - 1)
            data = data[:i] + bytes([data[i] ^ m[2]]) + data[i + 1:]
        elif m[0] == "header":
            try:
                with np.load(out) as z:
                    arrays = {k: z[k] for k in z.files}
                header = json.loads(str(arrays["__header__"]))
                header[m[1]] = m[2]
                arrays["__header__"] = np.array(json.dumps(header))
                np.savez(out, **arrays)
                continue
            except Exception:      # already unreadable: leave it as it is
                continue
        with open(out, "wb") as f:
            f.write(data)
    return out


@FUZZ
@given(_mutations)
def test_fuzzed_optimizer_files_load_exactly_or_fail_in_one_line(tmp_path_factory, mutations):
    path, theta = _saved(str(tmp_path_factory.getbasetemp()))["opt"]
    bad = _mutate(open(path, "rb").read(), path, str(tmp_path_factory.mktemp("m")), mutations)
    try:
        lopt, got, _ = learned_opt.load(bad)
    except LearnedOptError as e:
        event("rejected: " + str(e).split("(")[0].split(";")[0].replace(bad, "FILE")[:40])
        assert _one_line_error(e), e
        return
    event("loaded")
    assert jax.tree.structure(got) == jax.tree.structure(theta)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(theta)):   # loaded: the saved numbers
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@FUZZ
@given(_mutations)
def test_fuzzed_training_states_load_exactly_or_fail_in_one_line(tmp_path_factory, mutations):
    from meta_train.state_io import load_state
    path, state = _saved(str(tmp_path_factory.getbasetemp()))["state"]
    bad = _mutate(open(path, "rb").read(), path, str(tmp_path_factory.mktemp("s")), mutations)
    try:
        got = load_state(bad, state)
    except LearnedOptError as e:
        event("rejected")
        assert _one_line_error(e), e
        return
    event("loaded")
    assert jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
