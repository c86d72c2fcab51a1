"""Render the Helm chart with Helm's own engine (the Go SDK through helm-python-sdk), offline.

No `helm` binary and no cluster: `lookup` answers nothing, as in `helm template`, so secrets
the chart would keep across upgrades are generated anew on every render.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support import ROOT

CHART_DIR = ROOT / "helm"
HA_VALUES = CHART_DIR / "ci" / "ha-values.yaml"
RELEASE = "idp"
NAMESPACE = "ci"

Manifest = dict[str, Any]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, the way `helm -f base.yaml -f override.yaml` combines them."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def ha_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(HA_VALUES.read_text(encoding="utf-8"))
    return values


@dataclass
class Rendered:
    """The manifests of one render, parsed, plus NOTES.txt."""

    manifests: list[Manifest]
    notes: str
    sources: dict[str, str] = field(repr=False)

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> Manifest | None:
        found = [m for m in self.all(kind) if m["metadata"]["name"] == name]
        return found[0] if found else None

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}

    @property
    def issuer(self) -> Manifest:
        return self.one("Deployment", RELEASE)

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.issuer["spec"]["template"]["spec"]["containers"]
        return container

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", RELEASE)["data"]
        return data

    def secret_data(self, name: str) -> dict[str, str]:
        """A rendered Secret's data, decoded."""
        secret = self.one("Secret", name)
        return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
    """Render the chart as `helm template` would; raises HelmRenderError / HelmValuesError."""
    with helm.Chart.load(CHART_DIR) as chart:
        sources = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    notes = ""
    for path, text in sorted(sources.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(manifests=manifests, notes=notes, sources=sources)


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def ha_render() -> Rendered:
    return render(ha_values())


@pytest.fixture(params=["default", "ha"])
def each_render(request: pytest.FixtureRequest, default_render: Rendered, ha_render: Rendered):  # type: ignore[no-untyped-def]
    """The default install and the HA values file, one after the other."""
    return default_render if request.param == "default" else ha_render


def containers(rendered: Rendered) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for workload in rendered.all("Deployment"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def chart_file(*parts: str) -> Path:
    return CHART_DIR.joinpath(*parts)
