"""Kubernetes JSON schemas for kubeconform, made here from the Kubernetes OpenAPI spec.

kubeconform fetches its schemas from GitHub by default, which this project's machines
cannot reach. The same schemas come from the Kubernetes source: the ``k8s.io/kubernetes``
Go module, as the Go module proxy serves it, holds ``api/openapi-spec/swagger.json``
(every built-in kind of that release). ``go mod download`` fetches the module's zip
(~18 MB) into Go's module cache; this script reads swagger.json out of it and writes
one standalone schema per kind in kubeconform's layout::

    <out>/v<version>-standalone-strict/<kind>-<group>-<version>.json   (-strict)
    <out>/v<version>-standalone/<kind>-<group>-<version>.json

as ``openapi2jsonschema`` does for kubeconform's own schema repository: each file holds
its kind and the definitions it references (``#/definitions/...``: no network, and no
endless inlining of recursive types); ``IntOrString`` is a string or an integer,
``Quantity`` a string or a number; ``apiVersion`` and ``kind`` are fixed to the kind's
own; the strict set refuses a property no schema names (``additionalProperties:
false``), so a misspelt field fails, as ``kubeconform -strict`` means.

    python3 deploy/k8s/schemas.py --kubernetes-version 1.34.2 --out ~/.cache/yibao/k8s-schemas

Standard library only (and the ``go`` command); the Makefile's k8s-check runs it once
per version (a ``.complete`` file marks a finished set).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODULE = "k8s.io/kubernetes"
SPEC_PATH = "api/openapi-spec/swagger.json"
REF_PREFIX = "#/definitions/"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
COMPLETE = ".complete"

Schema = dict[str, Any]


def module_zip(version: str) -> Path:
    """The module zip of ``k8s.io/kubernetes@v<version>`` in Go's module cache, fetched
    through the Go module proxy (GOPROXY) when it is not there yet."""
    with tempfile.TemporaryDirectory() as empty:  # outside any go.mod
        out = subprocess.run(  # noqa: S603 - fixed arguments
            ["go", "mod", "download", "-json", f"{MODULE}@v{version}"],  # noqa: S607
            cwd=empty,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GO111MODULE": "on"},
        )
    info = json.loads(out.stdout) if out.stdout.strip() else {}
    if out.returncode != 0 or "Zip" not in info:
        reason = info.get("Error") or out.stderr.strip() or f"exit {out.returncode}"
        raise SystemExit(f"go mod download {MODULE}@v{version} failed: {reason}")
    return Path(info["Zip"])


def read_spec(zip_path: Path, version: str) -> Schema:
    with zipfile.ZipFile(zip_path) as archive:
        data: Schema = json.loads(archive.read(f"{MODULE}@v{version}/{SPEC_PATH}"))
    return data


def kind_file(kind: str, group: str, version: str) -> str:
    """kubeconform's file name for a kind: ``<kind>[-<first part of group>]-<version>``
    (kubeconform's registry.schemaPath: ``apps/v1`` → ``-apps-v1``, ``v1`` → ``-v1``,
    ``networking.k8s.io/v1`` → ``-networking-v1``)."""
    suffix = f"-{group.split('.')[0].lower()}" if group else ""
    return f"{kind.lower()}{suffix}-{version.lower()}.json"


def _fix(node: Any, *, strict: bool) -> Any:
    """One schema node made fit for YAML manifests (a new value; recursive)."""
    if isinstance(node, list):
        return [_fix(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    fixed = {key: _fix(value, strict=strict) for key, value in node.items()}
    if fixed.get("format") == "int-or-string":
        return _one_of(fixed, ("string", "integer"))
    if strict and "properties" in fixed and "additionalProperties" not in fixed:
        fixed["additionalProperties"] = False
    return fixed


def _one_of(node: Schema, types: tuple[str, ...]) -> Schema:
    kept = {k: v for k, v in node.items() if k not in ("type", "format")}
    return {**kept, "oneOf": [{"type": t} for t in types]}


def fixed_definitions(spec: Schema, *, strict: bool) -> dict[str, Schema]:
    definitions: dict[str, Schema] = {
        name: _fix(schema, strict=strict) for name, schema in spec["definitions"].items()
    }
    if QUANTITY in definitions:
        definitions[QUANTITY] = _one_of(definitions[QUANTITY], ("string", "number"))
    return definitions


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref.removeprefix(REF_PREFIX)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def closure(name: str, definitions: dict[str, Schema]) -> dict[str, Schema]:
    """``name``'s definition and every definition it reaches through ``$ref``."""
    seen: dict[str, Schema] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = definitions[current]
        todo.extend(ref for ref in _refs(definitions[current]) if ref not in seen)
    return seen


def kind_schema(name: str, gvk: dict[str, str], definitions: dict[str, Schema]) -> Schema:
    """The standalone schema of one kind: its definition at the top, fixed ``apiVersion``
    and ``kind``, and the definitions it references beside it."""
    schema = copy.deepcopy(definitions[name])
    group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
    api_version = f"{group}/{version}" if group else version
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {**properties.get("apiVersion", {}), "enum": [api_version]}
    properties["kind"] = {**properties.get("kind", {}), "enum": [kind]}
    required = schema.setdefault("required", [])
    for field in ("apiVersion", "kind"):
        if field not in required:
            required.append(field)
    schema["definitions"] = closure(name, definitions)
    return schema


def write_schemas(spec: Schema, out: Path, version: str) -> int:
    """Both sets (strict and not) under ``out``; the number of kinds written."""
    count = 0
    for strict in (True, False):
        folder = out / f"v{version}-standalone{'-strict' if strict else ''}"
        folder.mkdir(parents=True, exist_ok=True)
        definitions = fixed_definitions(spec, strict=strict)
        count = 0
        for name, schema in spec["definitions"].items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                if name.startswith("io.k8s.apimachinery."):
                    continue  # DeleteOptions, WatchEvent, Status: not manifests
                path = folder / kind_file(gvk["kind"], gvk.get("group", ""), gvk["version"])
                path.write_text(json.dumps(kind_schema(name, gvk, definitions)))
                count += 1
        (folder / COMPLETE).write_text(f"{MODULE}@v{version} {SPEC_PATH}\n")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.34.2")
    parser.add_argument("--out", required=True, type=Path, help="kubeconform's schema folder")
    parser.add_argument("--spec", type=Path, help="a swagger.json to use instead of the module's")
    args = parser.parse_args(argv)
    version = args.kubernetes_version.removeprefix("v")
    if args.spec is not None:
        spec: Schema = json.loads(args.spec.read_text())
    else:
        spec = read_spec(module_zip(version), version)
    count = write_schemas(spec, args.out.expanduser(), version)
    print(f"{count} Kubernetes {version} kinds written under {args.out} (strict and not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
