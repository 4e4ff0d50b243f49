"""The project's images, built here with no registry: ``make images``.

    python3 deploy/build_images.py [build] [--only base,kafka,postgres,app]
    python3 deploy/build_images.py tags     # the tags the current inputs give

* ``yibao/base``: Debian bookworm from ``debootstrap --variant=minbase``, from the
  Debian mirror this machine's apt already uses (read from /etc/apt/sources.list and
  sources.list.d), imported with ``docker import``. Where debootstrap cannot run (not
  root on Debian: a laptop with Docker Desktop), ``YIBAO_BASE_IMAGE`` names an image
  to start from instead (``debian:bookworm-slim`` from a registry).
* ``yibao/kafka``: Debian's Java 17 and the Kafka jars of the local stack
  (``deploy/local_kafka.fetch_kafka_jars``, the same version), configured by the same
  code (deploy/images/kafka_entrypoint.py).
* ``yibao/postgres``: Debian's PostgreSQL 15.
* ``yibao/app``: Debian's Python 3.11, a venv with the project's dependencies (wheels
  the host fetches from PyPI with its own pip), the CJK receipt font and the code.

Each image's tag is a hash of its inputs (its Dockerfile, its build context, its base's
tag), also set as the label ``org.yibao.inputs``; an image whose tag exists is not
built again. Each is also tagged ``:latest``. Builds use the host's network (the
engine started by deploy/docker_engine.py has no bridge).

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (docker, debootstrap, pip) by design.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable as `deploy`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.common import KAFKA_VERSION, REPO, StackError, layout
from deploy.docker_engine import ensure_engine
from deploy.local_kafka import fetch_kafka_jars, kafka_cache_dir

SUITE = "bookworm"
# What the base image is made of; a change here is a new base (and so new images).
BASE_RECIPE = f"debootstrap --variant=minbase {SUITE}; apt: no recommends; v1"
IMAGES = ("base", "kafka", "postgres", "app")
LABEL = "org.yibao.inputs"
DEPLOY = REPO / "deploy"
# deploy/ modules the Kafka image runs (standard library only).
KAFKA_MODULES = ("__init__.py", "common.py", "procs.py", "local_kafka.py")


def say(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, capture: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args],
        capture_output=capture,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if check and proc.returncode != 0:
        detail = (proc.stdout or "")[-3000:] + (proc.stderr or "")[-3000:] if capture else ""
        raise StackError(f"docker {' '.join(args[:3])} … failed (exit {proc.returncode}){detail}")
    return (proc.stdout or "").strip()


def image_exists(ref: str) -> bool:
    proc = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False)
    return proc.returncode == 0


def image_size(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref) or 0)


# ------------------------------------------------------------------ hashing inputs


def _files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def tree_hash(root: Path, extra: Iterable[str] = ()) -> str:
    """A hash of every file under ``root`` (path and content) and of ``extra``."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for path in _files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


# ------------------------------------------------------------------ base image


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str | None


def _apt_entries(apt: Path = Path("/etc/apt")) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every deb source of this machine's apt."""
    entries: list[tuple[str, list[str]]] = []
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            fields = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(fields) >= 3 and fields[0] == "deb":
                entries.append((fields[1], [fields[2]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            values: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                values[key.strip().lower()] = value.strip()
            if "deb" not in values.get("types", "").split():
                continue
            for uri in values.get("uris", "").split():
                entries.append((uri, values.get("suites", "").split()))
    return entries


def debian_mirrors(apt: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian mirror (and security mirror) this machine's apt uses for bookworm."""
    debian = security = None
    for uri, suites in _apt_entries(apt):
        if f"{SUITE}-security" in suites:
            security = security or uri
        elif SUITE in suites:
            debian = debian or uri
    if debian is None:
        raise StackError(
            f"no Debian {SUITE} mirror in /etc/apt/sources.list(.d): debootstrap needs one; "
            "or set YIBAO_BASE_IMAGE to a Debian bookworm image to start from"
        )
    return Mirrors(debian.rstrip("/"), security.rstrip("/") if security else None)


def build_base(tag: str) -> None:
    ref = f"yibao/base:{tag}"
    given = os.environ.get("YIBAO_BASE_IMAGE", "").strip()
    if given:
        say(f"base: {given} (YIBAO_BASE_IMAGE) tagged {ref}")
        if not image_exists(given):
            docker("pull", given, capture=False)
        docker("tag", given, ref)
        return
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise StackError(
            "the base image needs debootstrap as root on Debian (apt-get install debootstrap); "
            "elsewhere set YIBAO_BASE_IMAGE=debian:bookworm-slim (pulled from a registry)"
        )
    mirrors = debian_mirrors()
    root = Path(tempfile.mkdtemp(prefix="yibao-rootfs-", dir="/var/tmp"))
    try:
        say(f"base: debootstrap --variant=minbase {SUITE} from {mirrors.debian}")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root / "fs"), mirrors.debian],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"debootstrap failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        fs = root / "fs"
        sources = [
            f"deb {mirrors.debian} {SUITE} main",
            f"deb {mirrors.debian} {SUITE}-updates main",
        ]
        if mirrors.security:
            sources.append(f"deb {mirrors.security} {SUITE}-security main")
        (fs / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
        (fs / "etc/apt/apt.conf.d/90yibao").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
        # Documentation and man pages are not installed in the images.
        (fs / "etc/dpkg/dpkg.cfg.d/90yibao-nodoc").write_text(
            "path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\n"
            "path-exclude /usr/share/info/*\n"
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (fs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        say(f"base: docker import as {ref}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(fs), "-c", "."], stdout=subprocess.PIPE
        )
        imported = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                "ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                f"LABEL {LABEL}={tag}",
                "-",
                ref,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise StackError(f"docker import failed: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ contexts


def _kafka_context(ctx: Path, fetch: bool = True) -> None:
    cache = kafka_cache_dir()
    if not fetch and not (cache / ".complete").exists():
        raise StackError(f"the Kafka {KAFKA_VERSION} jars are not fetched yet")
    libs = fetch_kafka_jars(layout())
    shutil.copytree(libs, ctx / "libs")
    deploy = ctx / "yibao" / "deploy"
    (deploy / "images").mkdir(parents=True)
    for name in KAFKA_MODULES:
        shutil.copy2(DEPLOY / name, deploy / name)
    for name in ("kafka_entrypoint.py", "kafka-log4j2.xml"):
        shutil.copy2(DEPLOY / "images" / name, deploy / "images" / name)
    (ctx / "version").write_text(f"kafka {KAFKA_VERSION}\n")


def _postgres_context(ctx: Path, fetch: bool = True) -> None:
    shutil.copy2(DEPLOY / "images" / "postgres-entrypoint.sh", ctx / "postgres-entrypoint.sh")


def requirements() -> list[str]:
    """The project's runtime dependencies (pyproject.toml), pinned as they are there."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def engine_arch() -> str:
    """The engine's machine as manylinux names it (x86_64, aarch64)."""
    if shutil.which("docker"):
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.Architecture}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        arch = proc.stdout.strip()
        if proc.returncode == 0 and arch:
            return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    return "x86_64"


def wheels(reqs: list[str], fetch: bool = True) -> Path:
    """Wheels of ``reqs`` and their dependencies, fetched from PyPI with this host's pip
    once per requirement set and machine (~/.cache/yibao/wheels-<hash>): cp311,
    manylinux for the engine's machine (x86_64, or aarch64 on an ARM laptop),
    which Debian bookworm's Python 3.11 installs."""
    arch = engine_arch()
    key = hashlib.sha256("\n".join([*reqs, arch]).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yibao"
    out = base / f"wheels-{key}"
    if (out / ".complete").exists():
        return out
    if not fetch:
        raise StackError("the app image's wheels are not fetched yet")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "requirements.txt").write_text("\n".join(reqs) + "\n")
    say(f"fetching wheels for the app image from PyPI into {out} (once)")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "--platform", f"manylinux2014_{arch}", "--platform"]
    cmd += [f"manylinux_2_28_{arch}", "--python-version", "3.11", "--implementation", "cp"]
    cmd += ["-d", str(partial), "-r", str(partial / "requirements.txt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StackError(f"pip download failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    (out / ".complete").write_text("ok\n")
    return out


def _app_context(ctx: Path, fetch: bool = True) -> None:
    found = wheels(requirements(), fetch)
    shutil.copytree(found, ctx / "wheels", ignore=shutil.ignore_patterns(".complete"))
    app = ctx / "app"
    app.mkdir()
    for name in ("shared", "services"):
        _copy_tree(REPO / name, app / name)
    # deploy's Python (topic creation, principals); not the image tooling itself, so
    # that editing it rebuilds nothing.
    (app / "deploy").mkdir()
    for path in sorted(DEPLOY.glob("*.py")):
        if path.name not in ("build_images.py", "docker_engine.py"):
            shutil.copy2(path, app / "deploy" / path.name)
    shutil.copy2(REPO / "pyproject.toml", app / "pyproject.toml")


CONTEXTS: dict[str, tuple[str, Callable[[Path, bool], None]]] = {
    "kafka": ("Dockerfile.kafka", _kafka_context),
    "postgres": ("Dockerfile.postgres", _postgres_context),
    "app": ("Dockerfile", _app_context),
}


# ------------------------------------------------------------------ building


@dataclass
class Built:
    name: str
    ref: str
    seconds: float
    built: bool


def base_tag() -> str:
    given = os.environ.get("YIBAO_BASE_IMAGE", "").strip()
    return hashlib.sha256((given or BASE_RECIPE).encode()).hexdigest()[:12]


def _prepare_context(name: str, ctx: Path, base: str, fetch: bool = True) -> str:
    dockerfile, fill = CONTEXTS[name]
    fill(ctx, fetch)
    shutil.copy2(DEPLOY / dockerfile, ctx / "Dockerfile")
    return tree_hash(ctx, [f"base={base}"])


def current_ref(name: str) -> str:
    """The reference (``yibao/<name>:<hash>``) the image has for today's inputs, with
    nothing fetched (StackError when an input is not here yet: not built either)."""
    base = f"yibao/base:{base_tag()}"
    if name == "base":
        return base
    with tempfile.TemporaryDirectory(prefix=f"yibao-{name}-", dir="/var/tmp") as tmp:
        return f"yibao/{name}:{_prepare_context(name, Path(tmp), base, fetch=False)}"


def image_tags() -> dict[str, str]:
    """``current_ref`` of every image whose inputs are here."""
    tags = {}
    for name in IMAGES:
        try:
            tags[name] = current_ref(name)
        except StackError:
            continue
    return tags


def build(only: Iterable[str] = IMAGES) -> list[Built]:
    wanted = set(only)
    done: list[Built] = []
    base = f"yibao/base:{base_tag()}"
    t0 = time.monotonic()
    if image_exists(base):
        done.append(Built("base", base, 0.0, False))
    elif wanted & set(IMAGES):
        build_base(base_tag())
        done.append(Built("base", base, time.monotonic() - t0, True))
    docker("tag", base, "yibao/base:latest")
    for name in CONTEXTS:
        if name not in wanted:
            continue
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"yibao-{name}-", dir="/var/tmp") as tmp:
            ctx = Path(tmp)
            tag = _prepare_context(name, ctx, base)
            ref = f"yibao/{name}:{tag}"
            if image_exists(ref):
                say(f"{ref}: up to date")
                fresh = False
            else:
                say(f"{ref}: building")
                docker(
                    "build",
                    "--network",
                    "host",
                    "--build-arg",
                    f"BASE={base}",
                    "--label",
                    f"{LABEL}={tag}",
                    "-t",
                    ref,
                    str(ctx),
                    capture=not os.environ.get("YIBAO_BUILD_VERBOSE"),
                )
                fresh = True
        docker("tag", ref, f"yibao/{name}:latest")
        done.append(Built(name, ref, time.monotonic() - t0, fresh))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="build", choices=("build", "tags"))
    parser.add_argument("--only", default=",".join(IMAGES), help="comma-separated images")
    args = parser.parse_args(argv)
    try:
        ensure_engine(debootstrap=True)
        if args.command == "tags":
            for name, ref in image_tags().items():
                print(f"{name:9} {ref}")
            return 0
        started = time.monotonic()
        results = build([n.strip() for n in args.only.split(",") if n.strip()])
    except StackError as exc:
        say(str(exc))
        return 1
    for item in results:
        size = image_size(item.ref) / 1e6
        state = f"built in {item.seconds:.0f}s" if item.built else "present"
        say(f"{item.ref:32} {size:7.0f} MB  {state}")
    say(f"images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
