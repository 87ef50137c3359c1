"""The docs' examples run verbatim: every block marked runnable in README.md and docs/*.md.

A fenced ``bash``, ``python`` or ``yaml`` block is runnable when the line before its fence is
``<!-- runnable -->`` (or ``<!-- runnable: fragment -->`` for a YAML fragment). Each runs offline
in a temporary folder that holds a copy of ``configs/``, with fake API keys and the SDKs'
base-URL variables pointing at a loopback ``MockLLMServer`` (which answers "ok"):

- ``yaml``: a whole config, which ``cascade validate`` must accept. A fragment is merged into
  ``configs/example.yaml`` and the result must validate: a mapping key by key (anything but a
  mapping replaces), except that its ``evaluators:`` (a task setting shown on its own) and a
  list (evaluators shown on their own) become the evaluators of that file's task ``faq``.
- ``python``: executed as written.
- ``bash``: each command (``\\`` continuations joined, ``#`` comments dropped, ``&&`` splitting
  commands) is ``export NAME=VALUE ...`` or ``cascade ...``, run by the CLI's ``main`` in-process,
  and must exit 0. Anything else (``pip``, ``curl``, a server) keeps a block unmarked.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.cli import main
from cascade.testing import MockLLMServer, Reply
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, live_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- runnable(?P<fragment>: fragment)? -->$")
FENCE = re.compile(r"^```(?P<language>\w*)$")
LANGUAGES = ("bash", "python", "yaml")
FRAGMENT_BASE = ROOT / "configs" / "example.yaml"


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    runnable: bool
    fragment: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with whether a marker precedes it.

    Raises:
        AssertionError: a marker not directly above a bash, python or yaml fence, or a fragment
            marker above anything but yaml (a typo must not silently skip a block).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        marker = MARKER.match(lines[i])
        if marker:
            nxt = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            misplaced = f"{path.name}:{i + 1}: a runnable marker must sit right above a bash, " \
                        "python or yaml fence"
            assert nxt, misplaced
            assert nxt.group("language") in LANGUAGES, misplaced
            assert not marker.group("fragment") or nxt.group("language") == "yaml", \
                f"{path.name}:{i + 1}: only yaml blocks are fragments"
        if fence and fence.group("language"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
            above = MARKER.match(lines[i - 1]) if i else None
            found.append(Block(path, i + 1, fence.group("language"),
                               "\n".join(lines[i + 1:end]) + "\n", above is not None,
                               bool(above and above.group("fragment"))))
            i = end
        i += 1
    return found


ALL = [b for path in DOCS for b in blocks_of(path)]
RUNNABLE = [b for b in ALL if b.runnable]


def commands(script: str) -> Iterator[list[str]]:
    """The commands of a bash block, as argument lists."""
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            yield words[:cut]
            words = words[cut + 1:]


@pytest.fixture
def sandbox(server: MockLLMServer, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder with configs/, fake keys and the SDKs pointed at the mock."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_url)
    return tmp_path


def run_bash(block: Block, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    for words in commands(block.text):
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                monkeypatch.setenv(name, value)
            continue
        assert words[0] == "cascade", f"{block.where}: {words[0]!r} cannot run offline"
        try:
            code = main(words[1:])
        except SystemExit as exc:  # --version and --help end in argparse
            code = exc.code if isinstance(exc.code, int) else 1
        assert code == 0, f"{block.where}: {shlex.join(words)} exited {code}: " \
                          f"{capsys.readouterr().err}"


def run_python(block: Block) -> dict[str, Any]:
    """Execute the block; close the engines it leaves open (a script's exit would), so their
    sockets are not left for the garbage collector to report in some later test."""
    from cascade import Cascade

    namespace: dict[str, Any] = {"__name__": "__docs__"}
    try:
        exec(compile(block.text, block.where, "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, Cascade):
                value.close()
    return namespace


def config_of(block: Block) -> Any:
    data = yaml.safe_load(block.text)
    if not block.fragment:
        return data
    base = yaml.safe_load(FRAGMENT_BASE.read_text())
    if isinstance(data, dict) and "evaluators" in data:  # a task's setting, shown on its own
        data = {"tasks": {"faq": {"evaluators": data.pop("evaluators")}}, **data}
    elif isinstance(data, list):
        data = {"tasks": {"faq": {"evaluators": data}}}
    return merged(base, data)


def merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in over.items()}}
    return over


def run_yaml(block: Block, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sandbox / "configs" / "from-docs.yaml"
    path.write_text(yaml.safe_dump(config_of(block)))
    code = main(["validate", str(path)])
    assert code == 0, f"{block.where}: not a valid config: {capsys.readouterr().err}"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_runnable_block_runs(block: Block, sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """A block marked runnable runs as written, offline, against the loopback server."""
    if block.language == "python":
        run_python(block)
    elif block.language == "bash":
        run_bash(block, monkeypatch, capsys)
    else:
        run_yaml(block, sandbox, capsys)


def test_every_kind_of_block_is_marked_somewhere() -> None:
    """The marker is found: a typo in it cannot turn the test above into no test at all."""
    assert {b.language for b in RUNNABLE} == set(LANGUAGES)
    assert any(b.fragment for b in RUNNABLE)
    assert any(b.path.name == "README.md" and b.language == "bash" for b in RUNNABLE)


def test_a_misplaced_marker_is_an_error(tmp_path: Path) -> None:
    """A marker above a json fence, or a fragment marker above python, fails loudly."""
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- runnable -->\n```json\n{}\n```\n")
    with pytest.raises(AssertionError, match="right above a bash, python or yaml fence"):
        blocks_of(doc)
    doc.write_text("<!-- runnable: fragment -->\n```python\npass\n```\n")
    with pytest.raises(AssertionError, match="only yaml blocks are fragments"):
        blocks_of(doc)


def test_a_broken_command_fails_its_block(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Mutation check of the bash runner: a failing cascade command, or pip, fails the block."""
    bad = Block(ROOT / "README.md", 1, "bash", "cascade report --json\n", True, False)
    with pytest.raises(AssertionError, match=r"exited 2: error: cascade-ledger\.sqlite"):
        run_bash(bad, monkeypatch, capsys)
    pip = Block(ROOT / "README.md", 1, "bash", 'pip install -e ".[server]"\n', True, False)
    with pytest.raises(AssertionError, match="'pip' cannot run offline"):
        run_bash(pip, monkeypatch, capsys)


def test_a_fragment_is_checked_as_part_of_the_example(sandbox: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Mutation check of the YAML runner: a fragment with a typo fails validation."""
    typo = Block(ROOT / "README.md", 1, "yaml", "tasks:\n  faq: {ladder: [mini, sonet]}\n",
                 True, True)
    with pytest.raises(AssertionError, match="unknown model 'sonet'"):
        run_yaml(typo, sandbox, capsys)
    evaluators = Block(ROOT / "README.md", 1, "yaml", "- {type: length, min_word: 3}\n",
                       True, True)
    with pytest.raises(AssertionError, match="min_word"):
        run_yaml(evaluators, sandbox, capsys)


# -- the README's own example, beyond running -------------------------------------------------


def readme(language: str) -> list[Block]:
    return [b for b in ALL if b.path.name == "README.md" and b.language == language]


def test_readme_yaml_is_the_shipped_config() -> None:
    """The YAML shown is exactly configs/example.yaml, so it cannot drift."""
    assert readme("yaml")[0].text == (ROOT / "configs/example.yaml").read_text()


def test_readme_python_prints_what_it_says(server: MockLLMServer, sandbox: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The Python snippet's output: the answer, the rung, the cost, and each step."""
    server.script("gpt-4o-mini", ["Nine."])
    server.script("claude-sonnet-4-6", [Reply("We are open from nine to five.", input_tokens=12,
                                              output_tokens=8)])
    run_python(readme("python")[0])
    # structlog, unconfigured, prints its events to stdout too; keep the example's own lines.
    out = "".join(line for line in capsys.readouterr().out.splitlines(keepends=True)
                  if "cascade.step" not in line and "cascade.run" not in line)
    assert out.startswith("We are open from nine to five.\nsonnet True $")
    assert "1 mini escalate 1" in out
    assert (sandbox / "configs" / "cascade-ledger.sqlite").exists()  # beside the config


# -- commands that cannot run offline, checked as far as they can be ---------------------------


def test_curl_examples_send_the_gateway_key(server: MockLLMServer, tmp_path: Path) -> None:
    """Each curl to the gateway carries the bearer header: the gateway reads its body, not 401.

    The run id in the docs is a placeholder, so the answer is ``run_not_found``: auth passed
    and the JSON body was read.
    """
    import httpx2

    from cascade import Cascade
    from cascade.gateway.app import create_app

    curls = [(b, words) for b in ALL if b.language == "bash" for words in commands(b.text)
             if words[0] == "curl"]
    assert curls
    engine = Cascade.from_dict(live_config(server, ledger=str(tmp_path / "l.sqlite")))

    async def send(words: list[str]) -> httpx2.Response:
        method, headers, body, url = "GET", {}, None, ""
        args = iter(words[1:])
        for arg in args:
            if arg == "-X":
                method = next(args)
            elif arg == "-H":
                name, _, value = next(args).partition(":")
                headers[name.strip()] = value.strip()
            elif arg == "-d":
                body, method = next(args), "POST" if method == "GET" else method
            else:
                url = arg
        path = "/" + url.split("/", 1)[1]
        app = create_app(engine, api_keys=["key-for-app-a"])
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, headers=headers, content=body)

    with engine:
        for block, words in curls:
            reply = asyncio.run(send(words))
            assert reply.status_code != 401, f"{block.where}: {shlex.join(words)}"
            assert reply.json()["error"]["code"] == "run_not_found", reply.text


INSTALL = re.compile(r"pip install(?P<args>(?:\s+[^\s`]+)+)")


def test_install_commands_work_from_a_clone() -> None:
    """cascade-ladder is not on PyPI: no doc or message says ``pip install cascade-ladder[..]``;
    the extras named in ``pip install -e ".[X]"`` exist."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, flags=re.M))
    sources = [*DOCS, *sorted((ROOT / "cascade").rglob("*.py")),
               *sorted((ROOT / "evaluators").rglob("*.py"))]
    named: set[str] = set()
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in INSTALL.finditer(text):
            what = next(a for a in match.group("args").split() if not a.startswith("-"))
            what = what.strip("'\"")
            assert not what.startswith("cascade-ladder"), \
                f"{path.relative_to(ROOT)}: {match.group(0)}"
            extra = re.fullmatch(r"\.\[([a-z,]+)\]", what)
            if extra:
                named.update(extra.group(1).split(","))
        named.update(re.findall(r"install_hint\('(\w+)'\)", text))  # the commands' hints
    assert named - extras == set()
    assert {"server", "plot", "otel", "postgres", "aiohttp"} <= named
