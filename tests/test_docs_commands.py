"""Every ``lopt train`` command shown in a code block of the README, the docs and the model cards
parses and builds a valid config (families included): a documented command that the launcher would
refuse is a defect."""
import glob
import os
import re
import shlex

import pytest

from meta_train.cli import build_parser, train_config
from meta_train.trainer import make_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted({os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True),
                *glob.glob(os.path.join(ROOT, "checkpoints", "*", "MODEL_CARD.md"))})


def documented_commands():
    """(page, command) for each ``lopt train`` line inside a fenced code block, continuation lines
    joined and trailing comments dropped."""
    out = []
    for page in PAGES:
        text = open(page).read()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip()
                if line.startswith("lopt train ") or line == "lopt train":
                    words = shlex.split(line, comments=True)
                    out.append((os.path.relpath(page, ROOT), words))
    return out


COMMANDS = documented_commands()


def test_the_docs_show_training_commands():
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.mark.parametrize("page,words", COMMANDS, ids=[f"{p}:{' '.join(w)[:60]}" for p, w in COMMANDS])
def test_documented_train_command_builds_a_valid_config(page, words):
    if "--distributed" in words or "..." in " ".join(words):
        pytest.skip("a template or multi-host command")
    cfg = train_config(build_parser().parse_args(words[1:]))
    from tasks.base import DatasetNotFoundError
    try:
        make_families(cfg.family_entries())    # every family entry parses and builds
    except DatasetNotFoundError as e:
        pytest.skip(f"needs a TFDS dataset that is not on this machine ({str(e)[:60]})")
