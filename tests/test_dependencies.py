"""The dependency direction of the layout (README "Layout"), enforced on every import statement
(module level and inside functions) of every module:

    cli, ship  ->  meta_train.evaluation  ->  learned_opt, tasks
    cli, ship  ->  meta_train core        ->  learned_opt, tasks
    tasks      ->  learned_opt.errors only (the shared error base class)

- learned_opt never imports tasks or meta_train;
- tasks never imports meta_train, and of learned_opt only learned_opt.errors;
- the meta-training core (meta_train/*.py but cli.py, ship.py, __main__.py) never imports the
  evaluation layer or the CLI;
- the evaluation layer never imports the meta-training core or the CLI;
- torch (the optional ``[torch]`` extra) is imported by learned_opt.torch_bridge alone, which is
  learned_opt-layered too, and nothing else imports the bridge: the core runs without torch;
- nothing imports TensorFlow (tensorflow_datasets' array_record readers need none), and importing
  the core does not load it.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("cli", "ship", "__main__")


def _modules():
    for pkg in ("learned_opt", "tasks", "meta_train"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield rel.removesuffix(".__init__"), path


def _imports(path: str, module: str) -> set[str]:
    """Absolute names of every module imported anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    pkg = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)   # `from pkg import module`
    return out


def _layer(module: str) -> str:
    if _within(module, "learned_opt.torch_bridge"):
        return "torch_bridge"
    top, _, rest = module.partition(".")
    if top != "meta_train":
        return top
    sub = rest.partition(".")[0]
    if sub == "evaluation":
        return "evaluation"
    return "cli" if sub in TOP else "core"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _forbidden(layer: str, name: str) -> bool:
    if _within(name, "tensorflow"):
        return True
    if layer == "torch_bridge":
        return _within(name, "tasks") or _within(name, "meta_train")
    if _within(name, "torch") or _within(name, "learned_opt.torch_bridge"):
        return True
    if layer == "learned_opt":
        return _within(name, "tasks") or _within(name, "meta_train")
    if layer == "tasks":
        return _within(name, "meta_train") or (_within(name, "learned_opt")
                                               and not _within(name, "learned_opt.errors"))
    if layer == "core":
        return (_within(name, "meta_train.evaluation")
                or any(_within(name, f"meta_train.{t}") for t in TOP))
    if layer == "evaluation":
        return _within(name, "meta_train") and not _within(name, "meta_train.evaluation")
    return False


MODULES = dict(_modules())


def test_every_package_is_scanned():
    layers = {_layer(m) for m in MODULES}
    assert layers == {"learned_opt", "torch_bridge", "tasks", "core", "evaluation", "cli"}
    assert "meta_train.trainer" in MODULES and "meta_train.evaluation.report" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layering(module):
    layer = _layer(module)
    bad = sorted(n for n in _imports(MODULES[module], module) if _forbidden(layer, n))
    assert not bad, f"{module} ({layer} layer) imports {bad}"


def test_the_checker_catches_violations():
    """The rules above are not vacuous: each forbidden direction is flagged."""
    assert _forbidden("learned_opt", "tasks.base")
    assert _forbidden("learned_opt", "meta_train.run")
    assert _forbidden("tasks", "meta_train.unroll")
    assert _forbidden("tasks", "learned_opt.mlp") and not _forbidden("tasks", "learned_opt.errors")
    assert _forbidden("core", "meta_train.evaluation.plots") and _forbidden("core", "meta_train.cli")
    assert _forbidden("evaluation", "meta_train.trainer") and _forbidden("evaluation", "meta_train.run")
    assert not _forbidden("evaluation", "meta_train.evaluation.curves")
    assert not _forbidden("cli", "meta_train.trainer") and not _forbidden("cli", "meta_train.evaluation")
    assert _forbidden("core", "tensorflow") and not _forbidden("tasks", "tensorflow_datasets")
    assert _forbidden("learned_opt", "torch.optim") and _forbidden("cli", "torch")
    assert _forbidden("learned_opt", "learned_opt.torch_bridge.norm_mlp")
    assert not _forbidden("torch_bridge", "torch") and not _forbidden("torch_bridge", "learned_opt.mlp")
    assert _forbidden("torch_bridge", "tasks") and not _forbidden("tasks", "torchvision_like")
    # relative imports resolve to absolute names
    src = "from . import curves\nfrom ..run import train\n"
    path = os.path.join(ROOT, "tests", "_rel_probe.py")
    try:
        with open(path, "w") as f:
            f.write(src)
        names = _imports(path, "meta_train.evaluation.probe")
    finally:
        os.unlink(path)
    assert {"meta_train.evaluation.curves", "meta_train.run.train"} <= names


def test_importing_the_core_and_evaluation_loads_no_tensorflow_and_no_torch():
    code = ("import sys, learned_opt, meta_train.trainer, meta_train.run, meta_train.evaluation.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
