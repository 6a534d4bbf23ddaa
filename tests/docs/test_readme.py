"""The README's configuration examples are valid for the commands they document, and its links lead somewhere."""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET

import pytest

from kit.paths import ROOT
from zmqsec.cli import config
from zmqsec.cli.bridge import OUT
from zmqsec.cli.publish import PUBLISH
from zmqsec.cli.subscribe import SUBSCRIBE

README = (ROOT / "README.md").read_text()
SCHEMAS = {"publisher.ini": PUBLISH, "reader.ini": SUBSCRIBE, "bridge-out.ini": OUT}


def _blocks() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"```ini\n# /etc/zmqsec/(\S+)\n(.*?)```", README, re.S)}


def test_every_documented_config_is_in_the_readme():
    assert set(_blocks()) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_readme_config_loads(name, tmp_path):
    path = tmp_path / name
    path.write_text(_blocks()[name])
    parser = argparse.ArgumentParser()
    config.add_flags(parser, SCHEMAS[name])
    settings = config.load(SCHEMAS[name], parser.parse_args(["--config", str(path)]))
    for key, value in settings.items():
        assert not (isinstance(value, str) and "#" in value), f"{key} swallowed a comment: {value!r}"


PAGES = [ROOT / "README.md", ROOT / "docs" / "architecture.md", ROOT / "docs" / "deploy" / "README.md"]
# Being written alongside these pages; remove it from here once it is in the tree.
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
        if "://" in target:
            continue
        path = (page.parent / target).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_architecture_picture_is_well_formed_svg():
    root = ET.parse(ROOT / "docs" / "architecture.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_file_a_page_cites_exists(page):
    """A page that says 'tests/x.py checks this' points at a test that is there."""
    for cited in re.findall(r"tests/[\w/]+\.py", page.read_text()):
        assert (ROOT / cited).exists(), f"{page.relative_to(ROOT)} cites {cited}, which does not exist"


def test_the_layer_picture_is_well_formed_svg():
    root = ET.parse(ROOT / "docs" / "layers.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
