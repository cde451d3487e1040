"""Every relative link in the README, the docs, the model cards and the benchmark reports that are
committed (``[text](path)`` and ``![alt](path)``) points at a file or folder that exists: a moved
report or plot must not leave a dead link behind."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted({os.path.join(ROOT, "README.md"),
                *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True),
                *glob.glob(os.path.join(ROOT, "checkpoints", "**", "*.md"), recursive=True),
                *glob.glob(os.path.join(ROOT, "benchmarks", "**", "*.md"), recursive=True)})
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text):
    """Link targets outside code (fenced blocks and inline spans), less anchors; web and mail
    addresses and in-page anchors left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


def test_relative_links_resolve():
    dead = []
    for page in PAGES:
        for target in relative_links(open(page).read()):
            if not os.path.exists(os.path.join(os.path.dirname(page), target)):
                dead.append(f"{os.path.relpath(page, ROOT)}: {target}")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_the_link_finder_finds_links():
    text = "see [a](x/y.md#s), ![p](p.png), [web](https://e.org), [in](#here), `[no](code.md)`"
    assert list(relative_links(text)) == ["x/y.md", "p.png"]


def test_a_leaderboard_keeps_only_the_plots_it_has(tmp_path):
    from meta_train.evaluation.bench import keep_existing_plots
    (tmp_path / "profiles.png").write_bytes(b"png")
    text = "![performance profiles](profiles.png)\n![nqm curves](suite_nqm.png) ![w](https://e.org/x.png)"
    out = keep_existing_plots(text, str(tmp_path))
    assert out.splitlines()[0] == "![performance profiles](profiles.png)"
    assert "](suite_nqm.png)" not in out and "suite_nqm.png" in out and "![w](https://e.org/x.png)" in out
    assert list(relative_links(out)) == ["profiles.png"]
