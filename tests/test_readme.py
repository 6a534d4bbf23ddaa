"""The configuration examples in the README are valid for the commands they document."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bridges.cli import OUT
from zmqsec import config
from zmqsec.stream_cli import PUBLISH, SUBSCRIBE

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
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
