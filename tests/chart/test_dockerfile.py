"""The container image's recipe: no container engine runs here, so the Dockerfile is read.

It must install the package the way the README does (`pip install .` of this project into a
venv, as `make install` does, here without the test and dev extras), keep build tools out of
the final stage, run as the non-root user the chart expects, and start `idp serve`.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.chart.conftest import chart_file
from tests.support import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VENV = "/opt/idp"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                values[key] = value
        return values


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with continuation lines joined."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = []
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages() -> list[Stage]:
    parsed = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    build_args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in parsed:
        if keyword == "ARG" and not result:
            name, _, default = args.partition("=")
            build_args[name] = default
        elif keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=base, name=name))
        else:
            result[-1].instructions.append((keyword, args))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def builder() -> Stage:
    return stages()[0]


@pytest.fixture(scope="module")
def final() -> Stage:
    return stages()[-1]


def test_multi_stage_on_slim_python(builder: Stage, final: Stage) -> None:
    assert len(stages()) == 2
    assert builder.name == "builder"
    # The venv holds absolute paths to its interpreter: it only runs on the same base image.
    assert builder.base == final.base
    match = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", final.base)
    assert match, final.base
    assert match.group(1) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` the stage runs."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                found.append(words)
    return found


def test_builder_installs_the_project_into_a_venv_like_the_readme(builder: Stage) -> None:
    runs = " && ".join(builder.all("RUN"))
    assert f"python -m venv {VENV}" in runs
    (install,) = pip_installs(builder)
    assert install[0] == f"{VENV}/bin/pip"
    # `pip install .`: the project itself, not editable, no extras (no test or dev tools).
    assert install[2:] == ["."]
    workdir = builder.all("WORKDIR")[-1]
    assert workdir == "/src"


def test_make_install_uses_the_same_project_install() -> None:
    """The Makefile (the README's `make install`) installs the same `.` into its venv."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"\$\(BIN\)/pip install (?:--quiet )?-e '\.\[([a-z,]+)\]'", makefile)
    assert match, "make install no longer runs `pip install -e '.[...]'`: update the Dockerfile"
    extras = set(match.group(1).split(","))
    # The image leaves out exactly the extras the developers add.
    assert extras == set(PYPROJECT["project"]["optional-dependencies"])


def copied_sources(stage: Stage) -> list[str]:
    sources = []
    for args in stage.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_builder_copies_everything_the_build_reads(builder: Stage) -> None:
    sources = copied_sources(builder)
    assert "pyproject.toml" in sources
    assert PYPROJECT["project"]["readme"] in sources
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in sources, f"the package {package}/ is not copied"


def test_every_copied_file_exists_in_the_repository(builder: Stage) -> None:
    for source in copied_sources(builder):
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    assert pip_installs(final) == []
    runs = " ".join(final.all("RUN"))
    for tool in ("apt-get", "apk", "gcc", "build-essential", "make ", "pip "):
        assert tool not in runs, tool
    copies = [shlex.split(args) for args in final.all("COPY")]
    assert copies == [["--from=builder", VENV, VENV]]
    assert final.env()["PATH"].startswith(f"{VENV}/bin:")
    assert not final.all("ADD")


def test_runs_as_the_non_root_user_the_chart_expects(final: Stage) -> None:
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    values = yaml.safe_load(chart_file("values.yaml").read_text(encoding="utf-8"))
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    runs = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in runs


def test_entry_point_is_idp_serve(final: Stage) -> None:
    from idp.cli import cli

    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert exec_form(entrypoint) == ["idp"]
    assert exec_form(cmd) == ["serve"]
    assert PYPROJECT["project"]["scripts"]["idp"] == "idp.cli:main"
    serve = cli.commands["serve"]
    envvars = {p.name: p.envvar for p in serve.params}
    env = final.env()
    # `idp serve` reads --host/--port from these; the image listens on every interface.
    assert env[str(envvars["host"])] == "0.0.0.0"
    port = env[str(envvars["port"])]
    assert final.all("EXPOSE") == [port] == ["8080"]


def test_image_defaults_match_the_chart(final: Stage) -> None:
    from tests.chart.conftest import render

    rendered = render({"replicaCount": 1, "redis": {"bundled": {"enabled": False}}})
    env = final.env()
    assert env["IDP_KEYS_DIR"] == rendered.config["IDP_KEYS_DIR"]
    port = rendered.container["ports"][0]["containerPort"]
    assert final.all("EXPOSE") == [str(port)]


# --- .dockerignore -----------------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """Docker's patterns: Go's filepath.Match, where `*` stays inside one folder, plus `**`."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or its parents."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    ("path", "in_context"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("idp/__init__.py", True),
        ("idp/cli/serve.py", True),
        ("idp/py.typed", True),
        ("idp/cli/__pycache__/serve.cpython-311.pyc", False),
        ("keys/current.json", False),
        (".venv/bin/python", False),
        (".git/config", False),
        ("tests/conftest.py", False),
        ("helm/values.yaml", False),
        ("Dockerfile", False),
    ],
)
def test_build_context_holds_only_what_the_image_needs(path: str, in_context: bool) -> None:
    assert ignored(path, dockerignore_patterns()) is not in_context


def test_everything_copied_is_in_the_build_context(builder: Stage) -> None:
    patterns = dockerignore_patterns()
    for source in copied_sources(builder):
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" in relative:
                continue
            assert not ignored(relative, patterns), f"{relative} is left out by .dockerignore"


def test_dockerignore_keeps_key_stores_out() -> None:
    # The first pattern excludes everything; a key store could only enter through an exception.
    patterns = dockerignore_patterns()
    assert patterns[0] == "*"
    assert all(not p.startswith("!keys") for p in patterns)
    assert Path(DOCKERIGNORE).read_text(encoding="utf-8").count("!") == 3
