"""deploy/build_images.py's pure parts, no engine needed: the Debian mirror read from
apt's sources (both formats), and image tags that follow their inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import build_images
from deploy.common import StackError


def test_the_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (tmp_path / "sources.list.d" / "other.list").write_text(
        "deb [signed-by=/x.gpg] https://packages.example/apt stable main\n"
    )
    assert build_images.debian_mirrors(tmp_path) == build_images.Mirrors(
        "http://mirror.example/debian", "http://mirror.example/debian-security"
    )


def test_the_mirror_is_read_from_a_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb http://one.example/debian bookworm main contrib\n"
    )
    assert build_images.debian_mirrors(tmp_path).debian == "http://one.example/debian"


def test_no_bookworm_mirror_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://x.example/ubuntu jammy main\n")
    with pytest.raises(StackError, match="YIBAO_BASE_IMAGE"):
        build_images.debian_mirrors(tmp_path)


def test_a_tag_follows_every_input_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("one")
    (tmp_path / "a" / "__pycache__").mkdir()
    first = build_images.tree_hash(tmp_path, ["base=1"])
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert build_images.tree_hash(tmp_path, ["base=1"]) == first
    assert build_images.tree_hash(tmp_path, ["base=2"]) != first
    (tmp_path / "a" / "x.py").write_text("two")
    assert build_images.tree_hash(tmp_path, ["base=1"]) != first


def test_the_postgres_tag_is_the_same_twice_and_names_its_base() -> None:
    ref = build_images.current_ref("postgres")
    assert ref.startswith("yibao/postgres:") and ref == build_images.current_ref("postgres")
    assert build_images.current_ref("base") == f"yibao/base:{build_images.base_tag()}"
