"""Claims in the README's set-up section that a new user acts on."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_no_variable_is_given_before_sudo():
    """sudo drops the caller's environment: `VAR=1 sudo cmd` never reaches cmd; `sudo VAR=1 cmd` does."""
    assert re.findall(r"\b[A-Z_]+=\S*\s+sudo\b", README) == []


def test_the_hosts_named_are_the_one_the_image_build_supports():
    """The node image (bookworm) is built with the host's apt sources, and the controller needs
    Python 3.11: Debian 12, not Ubuntu (whose sources and Python do not fit)."""
    assert "Debian 12" in README and "Ubuntu" not in README
