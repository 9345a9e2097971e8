"""The docs cannot drift from the code: the generated reference pages are what docs/generate.py
writes, every setting is documented with the doc text ``appliance config --print-defaults``
prints, the constants the docs name exist, the README keeps the commands CI runs, and every
relative link leads somewhere (datasette's tests/test_docs.py is the model)."""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config
from appliance.exc import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
CONFIGURATION = DOCS / "configuration.md"
REGENERATE = "python docs/generate.py"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", ["configuration.md", "cli.md"])
def test_the_generated_docs_are_what_the_generator_writes(name):
    if name == "cli.md" and sys.version_info[:2] != (3, 11):
        pytest.skip("argparse lays --help out differently on other Pythons; docs/cli.md is from 3.11")
    generate = _generator()
    path = DOCS / name
    assert generate.render(path) == path.read_text(encoding="utf-8"), (
        f"docs/{name} differs from what the generator writes: run `{REGENERATE}`"
    )


def _print_defaults() -> dict[str, str]:
    """Each key of ``appliance config --print-defaults`` with its description (the comment lines
    before its ``Allowed:`` line, joined)."""
    result = subprocess.run([sys.executable, "-m", "appliance", "config", "--print-defaults"],
                            capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    documented = {}
    for block in filter(str.strip, result.stdout.split("\n\n")[1:]):
        *comments, setting = block.strip().splitlines()
        key = re.fullmatch(r"# ([a-z0-9_]+) = .*", setting).group(1)
        text = _words(" ".join(line.removeprefix("#") for line in comments))
        documented[key] = text.split(" Allowed: ")[0]
    return documented


def test_every_setting_is_in_the_configuration_docs_with_the_doc_print_defaults_gives():
    rows = {}
    for line in CONFIGURATION.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^\| `([a-z0-9_]+)` \|", line):
            cells = [cell.replace("\\|", "|") for cell in line[2:-2].split(" | ")]
            rows[match.group(1)] = cells
    documented = _print_defaults()
    assert documented.keys() == {f.name for f in config.settings()}
    for key, doc in documented.items():
        assert key in rows, f"{key} is not in docs/configuration.md: run `{REGENERATE}`"
        assert _words(rows[key][4]) == doc, f"{key}: its doc differs: run `{REGENERATE}`"
    for f in config.settings():
        allowed = getattr(f.metadata["check"], "allowed", "")
        assert rows[f.name][5] == allowed and rows[f.name][3] == f.metadata["reload"], f.name


def test_the_configuration_docs_show_the_message_for_a_small_stick():
    message = str(pytest.raises(ConfigError, config.check_against_filesystem, config.Config(), 512 * 10**6,
                                "the filesystem holding /mnt/usb/appliance").value)  # fmt: skip
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert f"appliance: config error: /etc/appliance/appliance.toml: {message}\n" in text


def test_every_constant_the_docs_name_exists():
    """`appliance.store.RESERVE_BYTES` in any doc, and a bare `MAX_STOP_FRACTION` in
    configuration.md (one of appliance.bounds), name a constant that exists."""
    for path in [README, *DOCS.glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for module, name in re.findall(r"`((?:appliance|hw|boot)(?:\.[a-z_]+)+)\.([A-Z][A-Z0-9_]+)`", text):
            assert hasattr(importlib.import_module(module), name), f"{path.name}: {module}.{name}"
    bounds = importlib.import_module("appliance.bounds")
    for name in re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", CONFIGURATION.read_text(encoding="utf-8")):
        assert name in ("PATH_MAX", "NAME_MAX") or hasattr(bounds, name), name


def test_the_readme_gives_the_commands_ci_runs():
    readme = README.read_text(encoding="utf-8")
    run = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/appliance run --simulate"
    test = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    assert f"```bash\n{run}\n```" in readme and f"```bash\n{test}\n```" in readme
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv .venv\n" in ci and "-e '.[test]'" in ci and ".venv/bin/python -m pytest" in ci


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of ``path``: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # not in code
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}


def test_every_relative_link_of_the_docs_leads_somewhere():
    pages = [README, REPO / "CHANGELOG.md", REPO / "systemd" / "README.md", *DOCS.glob("*.md")]
    indexed = set(re.findall(r"\(docs/([a-z-]+\.md)\)", README.read_text(encoding="utf-8")))
    assert {p.name for p in DOCS.glob("*.md")} <= indexed, "a page of docs/ missing from the README's index"
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            assert linked.exists(), f"{page.relative_to(REPO)}: {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{page.relative_to(REPO)}: {target}"
