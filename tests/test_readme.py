"""The README's promises: its set-up commands are the ones CI runs, its links resolve in a
clone, the quick test selection it documents exists, and the gallery it shows is current."""

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "examples"))
import gallery  # noqa: E402


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)\n```", README, re.S)


def test_readme_has_the_install_and_demo_command():
    demo = _bash_blocks()[0]
    assert demo == ("(command -v dot || (apt-get update && apt-get install -y graphviz)) && "
                    "pip install -e . && graphc demo")


def test_readme_test_command_is_exactly_what_ci_runs():
    blocks = _bash_blocks()
    assert len(blocks) == 2
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci == [blocks[1]]
    assert blocks[1].endswith("&& python -m pytest -n auto --dist loadfile")  # everything


def test_readme_documents_the_quick_selection():
    assert '`python -m pytest -m "not slow"`' in README
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert 'addinivalue_line("markers", "slow:' in conftest


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob(
    "*.md"))])
def test_relative_links_resolve_in_a_clone(doc):
    path = ROOT / doc if doc == "README.md" else ROOT / "docs" / doc
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    missing = [link for link in links if not link.startswith(("http://", "https://"))
               and not (path.parent / link).resolve().exists()]
    assert not missing, missing
    assert all(ROOT in (path.parent / link).resolve().parents for link in links
               if not link.startswith(("http://", "https://")))  # nothing outside the clone


def test_api_reference_covers_the_public_names():
    """docs/api.md names every public name of graphc, and every ``gc.name`` it mentions
    exists, or is listed as not yet implemented."""
    import graphc as gc
    text = (ROOT / "docs" / "api.md").read_text()
    assert not [n for n in gc.__all__ if not re.search(rf"(?<![\w.]){n}\b|gc\.{n}\b", text)]
    missing = {n for n in re.findall(r"gc\.(\w+)", text) if not hasattr(gc, n)}
    not_yet = text[text.index("**not yet implemented**"):text.index("## Build a graph")]
    assert all(f"`gc.{n}`" in not_yet for n in missing), missing
    landed = [n for n in re.findall(r"`gc\.(\w+)`", not_yet) if hasattr(gc, n)]
    assert not landed, f"{landed} exist now: document them in docs/api.md"


def _texts(svg: str) -> list[str]:
    """What a picture says (its labels), not where Graphviz put it: layout varies with the
    Graphviz version."""
    return sorted(re.findall(r"<text[^>]*>([^<]*)</text>", svg))


def test_committed_gallery_is_current(tmp_path):
    """`python examples/gallery.py` rewrites docs/gallery; the committed pictures say what a
    fresh run says (a stale one showed `Piecewise((1, z > 0)…` for `h > 0`)."""
    written = gallery.main(tmp_path)
    assert sorted(pathlib.Path(p).name for p in written) == sorted(
        p.name for p in (ROOT / "docs" / "gallery").glob("*.svg"))
    for path in map(pathlib.Path, written):
        committed = (ROOT / "docs" / "gallery" / path.name).read_text()
        assert _texts(committed) == _texts(path.read_text()), (
            f"docs/gallery/{path.name} is stale: run python examples/gallery.py")
