"""Every shell example in the README and the docs either runs, as written, or says why not.

A fenced `sh`/`bash`/`console` block must follow a marker line:

- `<!-- doc-test: run [serve] [KEY=VALUE ...] -->`: the block runs here. `KEY=VALUE` are the
  settings the text around it states (for the block's shell and, with `serve`, for an
  `idp serve` started for it, whose address replaces the docs' `127.0.0.1:8080`). AWS calls go
  to the moto server. A `console` block's `$ ` lines are the commands; the lines after one are
  what it prints (each must appear, in order; `...` stands for any text).
- `<!-- doc-test: output -->` before the block right after a run block: the last command's
  stdout, compared exactly (as JSON for a `json` block).
- `<!-- doc-test: skip REASON -->`: needs what a test cannot have (a cluster, a real AWS
  account, a public https host); listed in the test report as skipped with its reason.

A block with no marker fails the test: nothing can drift unseen.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT, IssuerProcess

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "helm" / "README.md"]
SHELLS = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(run|skip|output)\b(.*?)-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    mode: str | None = None
    args: str = ""
    output: Block | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match.group(1):
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        block = Block(path, index + 1, match.group(1), "\n".join(lines[index + 1 : end]) + "\n")
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.search(previous)
        if marker:
            block.mode, block.args = marker.group(1), marker.group(2).strip()
        found.append(block)
        index = end + 1
    # An output block belongs to the run block before it.
    for before, after in zip(found, found[1:], strict=False):
        if after.mode == "output" and before.mode == "run":
            before.output = after
    return found


def every_block() -> Iterator[Block]:
    for path in DOCS:
        yield from blocks(path)


def shell_blocks() -> list[Block]:
    return [b for b in every_block() if b.lang in SHELLS]


def test_every_shell_block_is_marked() -> None:
    unmarked = [b.where for b in shell_blocks() if b.mode not in ("run", "skip")]
    assert not unmarked, (
        "shell blocks without a `<!-- doc-test: run|skip REASON -->` line before them: "
        + ", ".join(unmarked)
    )
    orphans = [b.where for b in every_block() if b.mode == "output" and not _has_owner(b)]
    assert not orphans, f"output blocks that follow no run block: {', '.join(orphans)}"


def _has_owner(block: Block) -> bool:
    return any(
        b.output is not None and (b.output.path, b.output.line) == (block.path, block.line)
        for b in every_block()
    )


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the lines it is shown to print) for a console block; one script for sh."""
    if block.lang != "console":
        return [(block.text, [])]
    result: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            if result:
                result[-1][1].append(line)
            index += 1
            continue
        command = line[2:]
        while command.endswith("\\") and index + 1 < len(lines):
            index += 1
            command = command + "\n" + lines[index]
        result.append((command, []))
        index += 1
    return result


def shows(expected: list[str], printed: str) -> str | None:
    """None when every expected line appears in `printed` in order; else the first missing."""
    actual = printed.splitlines()
    position = 0
    for wanted in (line for line in expected if line.strip()):
        pattern = fnmatch.translate(wanted.strip().replace("...", "*").replace("[", "[[]"))
        while position < len(actual) and not re.match(pattern, actual[position].strip()):
            position += 1
        if position == len(actual):
            return wanted
        position += 1
    return None


def run_params() -> list[object]:
    params: list[object] = []
    for block in shell_blocks():
        marks = []
        if block.mode == "skip":
            marks.append(pytest.mark.skip(reason=f"{block.where}: {block.args or 'not runnable'}"))
        elif block.mode != "run":
            continue
        params.append(pytest.param(block, id=block.where, marks=marks))
    return params


@pytest.mark.parametrize("block", run_params())
def test_the_example_runs_as_written(
    block: Block, tmp_path: Path, moto_server: str, aws_env_vars: dict[str, str]
) -> None:
    tokens = shlex.split(block.args)
    serve = "serve" in tokens
    settings = dict(t.split("=", 1) for t in tokens if "=" in t)
    # A file setting names a file of the repository (docs/examples/...), as the docs are read
    # from its root; the blocks run elsewhere.
    settings = {
        key: str(ROOT / value) if key.endswith("_FILE") and (ROOT / value).is_file() else value
        for key, value in settings.items()
    }
    env = {
        **os.environ,
        **aws_env_vars,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "IDP_KEYS_DIR": str(tmp_path / "keys"),
        "HOME": str(tmp_path),
        **settings,
    }
    text_of = block.text
    server: IssuerProcess | None = None
    try:
        if serve:
            server = IssuerProcess(
                {**settings, "IDP_KEYS_DIR": str(tmp_path / "server-keys")}
            ).start()
            env["IDP_ISSUER"] = server.issuer
            text_of = text_of.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        block = Block(block.path, block.line, block.lang, text_of, output=block.output)
        last = ""
        for command, expected in commands(block):
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            printed = done.stdout + done.stderr
            failing = any(line.startswith("idp: error:") for line in expected)
            assert (done.returncode != 0) == failing, (
                f"{block.where}: `{command}` exited {done.returncode}:\n{printed}"
            )
            missing = shows(expected, printed)
            assert missing is None, (
                f"{block.where}: `{command}` did not print {missing!r}:\n{printed}"
            )
            last = done.stdout
        if block.output is not None:
            if block.output.lang == "json":
                assert json.loads(last) == json.loads(block.output.text), block.where
            else:
                assert last == block.output.text, block.where
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def aws_env_vars(moto_server: str, tmp_path: Path) -> dict[str, str]:
    """Every AWS call of an example goes to the moto server, never to a real account."""
    return {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    }
