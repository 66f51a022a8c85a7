"""The code blocks of README.md and of the documentation's pages (:data:`PAGES`), run
against the sandbox so that they can never drift.

The rules, all visible here:

- Fenced blocks tagged ``python`` run in the order of :data:`PAGES` (README first), in
  one namespace, with the sandbox's ``TERRASCOPE_*`` variables (credentials included)
  exported, as a reader who pasted them into one session would run them. The README's
  first block also runs alone, offline as written: no variable, no netrc, no login.
- Every line of a ``bash`` block is an ``xarray-terrascope ...`` command, run in an
  empty directory through :func:`xarray_terrascope.cli.main` (or, for the
  long-running ``sandbox``, as a subprocess that must print its ``export`` lines
  within a timeout and stop on Ctrl-C). A ``zonal`` line finds its ``--parcels`` file
  there: the sandbox's parcels in the sample field, as the README's python block writes.
- A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run; the set of
  skipped blocks is pinned in :data:`EXPECTED_SKIPS`, so it cannot grow silently.
- :data:`SUBSTITUTIONS` lists the only text replaced before running (values that
  cannot exist offline); each must occur exactly once in the pages.
- Every page of ``docs/`` with a code block is in :data:`PAGES` (pages of ``docs/guide/``
  are written and tested with their own features).
- A ``python`` block that defines ``test_*`` functions (the pytest example) has them
  called, with the sandbox for their ``terrascope_env`` argument.
- Untagged blocks (a netrc line) are data, not code; a ``mermaid`` block is a diagram
  (GitHub draws it), not run either: the modules it names must exist, and it must name
  every stage of the layer contract in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import queue
import re
import shlex
import subprocess
import textwrap
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import xarray_terrascope as xts
from xarray_terrascope import cli
from xarray_terrascope.engine import read
from xarray_terrascope.testing import SAMPLE_FIELD

from ..support.helpers import PYTHON_CHILD, interrupt, restore_sigint

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NOTEBOOK = ROOT / "notebooks" / "ndvi_time_series.ipynb"
#: The pages whose blocks run, in reading order (one namespace).
PAGES = [
    README,
    DOCS / "index.md",
    DOCS / "getting-started.md",
    DOCS / "user-guide" / "credentials.md",
    DOCS / "user-guide" / "opening.md",
    DOCS / "user-guide" / "products.md",
    DOCS / "user-guide" / "parcels.md",
    DOCS / "user-guide" / "composites.md",
    DOCS / "user-guide" / "clusters.md",
    DOCS / "user-guide" / "cli.md",
    DOCS / "user-guide" / "sandbox.md",
    DOCS / "how-it-works.md",
    DOCS / "development.md",
]
#: Where the options table is (generated from the options, checked below).
OPTIONS_PAGE = DOCS / "how-it-works.md"
#: Every page's blocks in one run (the sandbox renders each file on first use: a season
#: of NDVI, a fortnight of TOC reflectance): ~4 min on two busy cores, over the suite's 300 s.
DOCS_TIMEOUT = 600
#: The landing page stays short: the rest is in the documentation.
README_MAX_LINES = 150

#: First lines of the blocks marked ``readme-test: skip``, and nothing else.
EXPECTED_SKIPS = {
    "bash scripts/run.sh demo    # the main job on the embedded Terrascope sandbox",
    'pip install "xarray-terrascope[all]"     # or only what you use: [analysis], [plot], '
    "[distributed], [sandbox], [io]",
    "bash scripts/run.sh test -k engine      # arguments after `test` go to pytest",
}
#: README text -> what runs instead (a callable of the run's context).
SUBSTITUTIONS = {
    # no scheduler at that address offline: a LocalCluster on loopback stands in
    '"tcp://scheduler:8786"': lambda ctx: repr(ctx["scheduler_address"]),
    # a test's dashboard takes a free port, not distributed's default 8787
    "LocalCluster(n_workers=2, threads_per_worker=1)": lambda ctx: (
        'LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")'
    ),
    # "alice" is the sandbox's second account, whose password is made per session
    'xts.Credentials("alice", "alices-password")': lambda ctx: (
        f"xts.Credentials({ctx['second_user']!r}, {ctx['second_password']!r})"
    ),
}
#: ``xarray-terrascope`` commands that serve until Ctrl-C.
LONG_RUNNING = {"sandbox"}
SANDBOX_TIMEOUT = 60

#: An opening fence: a language (or none), or a MyST directive with its arguments.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?:(?P<lang>[\w-]*)|(?P<directive>\{[\w:-]+\}).*)[ \t]*$"
)
_SKIP = re.compile(r"^\s*<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # line of the first line of code in its page (1-based)
    skip: str | None  # the reason, when marked
    page: Path = README

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0] if self.code else ""


def readme_blocks(text: str, page: Path = README) -> list[Block]:
    """The fenced code blocks of a Markdown text, with their skip markers."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.match(before)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.name}:{i + 1}: unclosed code fence"
        code = textwrap.dedent("\n".join(lines[i + 1 : end]))
        lang = m["lang"] if m["lang"] is not None else m["directive"]
        blocks.append(Block(lang, code, i + 2, skip["reason"] if skip else None, page))
        i = end + 1
    return blocks


def page_blocks(page: Path) -> list[Block]:
    """The code blocks of a page, less MyST directives (```{toctree}, ```{include}...)."""
    blocks = readme_blocks(page.read_text(encoding="utf-8"), page)
    return [block for block in blocks if not block.lang.startswith("{")]


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def cli_lines() -> list[tuple[str, list[str]]]:
    """``(page:line, argv)`` of every ``xarray-terrascope`` command in run bash blocks."""
    commands = []
    for block in BLOCKS:
        if block.lang != "bash" or block.skip:
            continue
        for offset, line in enumerate(block.code.splitlines()):
            words = shlex.split(line, comments=True)
            if words:
                commands.append((f"{block.page.relative_to(ROOT)}:{block.line + offset}", words))
    return commands


def test_readme_blocks_are_all_run_or_skipped_on_purpose():
    assert {b.lang for b in BLOCKS} <= {"python", "bash", "mermaid", ""}
    assert {b.first_line for b in BLOCKS if b.skip} == EXPECTED_SKIPS
    assert all(b.lang == "bash" for b in BLOCKS if b.skip)
    assert len([b for b in BLOCKS if b.lang == "python"]) >= 5
    for where, words in cli_lines():
        assert words[0] == "xarray-terrascope", (
            f"{where}: a bash block runs {words[0]!r}; only xarray-terrascope "
            "commands are run, mark the block <!-- readme-test: skip (reason) --> otherwise"
        )
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    for old in SUBSTITUTIONS:
        assert text.count(old) == 1, f"substitution {old!r} must match the pages exactly once"
    python = "\n".join(b.code for b in BLOCKS if b.lang == "python")
    # no placeholder (start=..., "...") left that could only fail
    assert not re.search(r'=\s*\.\.\.|"\.\.\."|\(\.\.\.\)', python)


def test_readme_parser_sees_fences_markers_and_indented_blocks():
    text = (
        "intro\n\n<!-- readme-test: skip (why) -->\n```bash\npip install x\n```\n"
        "1. item\n\n   ```\n   machine h login u\n   ```\n```python\nx = 1\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.line, b.skip) for b in blocks] == [
        ("bash", "pip install x", 5, "why"),
        ("", "machine h login u", 10, None),
        ("python", "x = 1", 13, None),
    ]
    directive = readme_blocks(
        "```{toctree}\n:glob:\n\nguide/*\n```\n```{include} ../X.md\n```\n```python\ny = 2\n```\n"
    )
    assert [(b.lang, b.line) for b in directive] == [
        ("{toctree}", 2),
        ("{include}", 7),
        ("python", 9),
    ]


def _stages() -> set[str]:
    """The stages of the layer contract (``a | b`` and ``a : b`` are several), less its
    first layer (the CLI) and its last (the base modules: options, errors, caches...),
    which the diagram leaves out."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [
        c["layers"] for c in pyproject["tool"]["importlinter"]["contracts"] if c["id"] == "stages"
    ]
    return {name.strip() for layer in layers[1:-1] for name in re.split(r"[|:]", layer)}


def _resolve(dotted: str) -> object:
    """``xarray_terrascope.<dotted>``: a module, or an attribute of one; raises if neither."""
    head, *rest = dotted.split(".")
    obj = importlib.import_module(f"xarray_terrascope.{head}")
    for depth, name in enumerate(rest, start=2):
        if hasattr(obj, name):
            obj = getattr(obj, name)
        else:
            module = ".".join(dotted.split(".")[:depth])
            obj = importlib.import_module(f"xarray_terrascope.{module}")
    return obj


def test_readme_diagram_names_every_stage_and_only_real_modules():
    (diagram,) = [b.code for b in BLOCKS if b.lang == "mermaid"]
    stages = _stages()
    assert {"catalog", "plan", "cube", "engine", "auth"} <= stages  # the contract's names
    named = re.findall(rf"\b(?:{'|'.join(sorted(stages))})(?:\.\w+)*", diagram)
    assert {name.split(".")[0] for name in named} == stages
    for name in named:
        _resolve(name)  # ImportError or AttributeError: the diagram names what is not there


@pytest.fixture
def readme_session(terrascope_env, tmp_path, monkeypatch):
    """A reader's session: sandbox variables exported, an empty working directory."""
    monkeypatch.chdir(tmp_path)
    xts.logout()
    yield terrascope_env
    xts.logout()
    read.clear_reader_cache()


@pytest.fixture
def local_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


def _run_block(block: Block, ns: dict, ctx: dict, sandbox) -> None:
    code = block.code
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new(ctx))
    before = set(ns)
    # Padding keeps the page's line numbers in tracebacks.
    source = "\n" * (block.line - 1) + code
    try:
        exec(compile(source, str(block.page), "exec"), ns)
        for name in sorted(set(ns) - before):
            if name.startswith("test_") and callable(ns[name]):
                params = list(inspect.signature(ns[name]).parameters)
                assert params in ([], ["terrascope_env"]), f"{name} needs {params}"
                ns[name](*[sandbox for _ in params])
    except Exception as err:
        raise AssertionError(
            f"{block.where}: the python block starting {block.first_line!r} "
            f"failed: {type(err).__name__}: {err}"
        ) from err


@pytest.mark.slow
@pytest.mark.timeout(DOCS_TIMEOUT)
def test_readme_python_blocks_run_in_order(readme_session, local_cluster):
    sandbox = readme_session
    second = next(u for u in sandbox.users if u != sandbox.username)
    ctx = {
        "scheduler_address": local_cluster.scheduler_address,
        "second_user": second,
        "second_password": sandbox.users[second],
    }
    ns: dict = {"__name__": "__readme__"}
    try:
        for block in BLOCKS:
            if block.lang == "python":
                _run_block(block, ns, ctx, sandbox)
    finally:
        client = ns.get("client")
        if client is not None:
            client.close()
    # what the blocks promise, checked on what they left behind
    assert ns["ndvi"].dtype == "float32" and ns["ndvi"].dims == ("time", "y", "x")
    assert ns["items"] and all("_NDVI_10M_" in item.id for item in ns["items"])
    assert ctx["second_password"] not in repr(ns["alice"]) + str(ns["alice"])


def _readline_until(proc, marker: str, timeout: float) -> list[str]:
    """Lines of ``proc.stdout`` up to the one starting with ``marker``, within ``timeout``."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=timeout)
        assert line is not None, f"exited early: {''.join(seen)}{proc.stderr.read()}"
        seen.append(line)
        if line.startswith(marker):
            return seen


def _run_long_running(argv: list[str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
    proc = subprocess.Popen(
        [*PYTHON_CHILD, "-m", "xarray_terrascope.cli", *argv],
        preexec_fn=restore_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out = _readline_until(proc, "# Ctrl-C", SANDBOX_TIMEOUT)
    finally:
        interrupt(proc)
    assert proc.returncode == 0
    return out


#: The whole demo (two collections over a season, every file rendered by the sandbox on
#: first use) takes ~3 min on two idle cores: more than the suite's 300 s under load.
DEMO_TIMEOUT = 900


def _cli_params() -> list:
    return [
        pytest.param(
            line,
            argv,
            id=f"{Path(line.split(':')[0]).stem}-L{line.split(':')[1]}-{argv[1]}",
            marks=[pytest.mark.timeout(DEMO_TIMEOUT)] if argv[1] == "demo" else [],
        )
        for line, argv in cli_lines()
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("line", "argv"), _cli_params())
def test_readme_cli_lines_run(readme_session, capsys, line, argv):
    where = f"{line}: {shlex.join(argv)}"
    if argv[1] in LONG_RUNNING:
        out = _run_long_running(argv[1:])
        exports = dict(
            text[len("export ") :].strip().split("=", 1)
            for text in out
            if text.startswith("export ")
        )
        assert {"TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL"} <= set(exports), where
        return
    if argv[1] == "zonal":  # the parcels file the README's python block writes beforehand
        import shapely

        parcels = readme_session.parcels()
        parcels = parcels[parcels.within(shapely.box(*SAMPLE_FIELD))]
        parcels.to_file(argv[argv.index("--parcels") + 1])
    code = cli.main(argv[1:])
    captured = capsys.readouterr()
    assert code == 0, f"{where} exited {code}: {captured.err}"
    assert "Traceback" not in captured.err, where
    if argv[1] == "search":
        count = int(captured.out.splitlines()[-1].split()[0])
        assert count > 0, f"{where} found no items"
    elif argv[1] == "ndvi":
        out = Path(argv[argv.index("--out") + 1])
        assert out.exists() and f"wrote {out}" in captured.out, where
    elif argv[1] == "zonal":
        import pandas as pd

        table = pd.read_parquet(argv[argv.index("--out") + 1])
        assert len(table) == len(parcels) * table["date"].nunique() > 0, where
        assert table["mean"].notna().any(), where
    elif argv[1] == "demo":
        assert Path("demo-output/ndvi_by_crop.png").stat().st_size > 0, where
        assert Path("demo-output/ndvi_monthly_max.png").stat().st_size > 0, where
        assert Path("demo-output/ndvi_time_slider.html").stat().st_size > 0, where
        assert Path("demo-output/ndvi_by_crop_toc.png").stat().st_size > 0, where
        assert "error against the world's truth" in captured.out, where


def test_the_notebook_places_the_sample_field_in_dutch_limburg():
    """5.90-5.96 E, 51.24-51.27 N lies between Weert and Roermond, in the Netherlands."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "[5.90, 51.24, 5.96, 51.27]" in code  # the field the text describes
    assert "Belgian Limburg" not in text and "Belgium" not in text.replace("(VITO, Belgium)", "")
    assert "Dutch Limburg" in text and "Netherlands" in text


def test_the_configuration_table_is_the_options_table():
    """The documentation's table is generated from the options themselves (one source)."""
    from xarray_terrascope.options import options_table

    text = OPTIONS_PAGE.read_text(encoding="utf-8")
    start = text.index("<!-- options-table:")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end options-table -->")
    assert text[start:end].strip() == options_table(), (
        "regenerate the table: python -c 'from xarray_terrascope.options import "
        "options_table; print(options_table())'"
    )


def test_every_docs_page_with_code_is_run():
    """A page of ``docs/`` (outside ``docs/guide/``, whose pages come with their own
    features and tests) whose code blocks this module would not run is an error."""
    pages = {
        path
        for path in DOCS.rglob("*.md")
        if not {"_build", "generated", "guide"} & set(path.relative_to(DOCS).parts)
    }
    with_code = {p for p in pages if page_blocks(p)}
    assert with_code <= set(PAGES), sorted(str(p) for p in with_code - set(PAGES))
    assert all(page.exists() for page in PAGES)


def test_readme_is_a_landing_page_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < README_MAX_LINES
    quickstart = text[text.index("## Quickstart") :]
    (commands,) = [b for b in readme_blocks(quickstart) if b.lang == "bash"][:1]
    assert [line.split("#")[0].strip() for line in commands.code.splitlines()] == [
        "bash scripts/run.sh demo",
        "bash scripts/run.sh test",
    ]
    assert "[analysis]" in text  # zonal statistics need it
    assert "https://terrascope.be" in text  # where to get an account
    assert "notebooks/ndvi_time_series.ipynb" in text
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)", text):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """A reader's fresh session: no TERRASCOPE_* variable, no netrc, no login, an empty
    working directory."""
    for name in list(os.environ):
        if name.startswith("TERRASCOPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))
    monkeypatch.chdir(tmp_path)
    xts.logout()
    yield
    xts.logout()
    read.clear_reader_cache()


def test_readme_first_block_runs_offline_as_written(fresh_process, capsys):
    """The README's first block starts its own sandbox, reads a month over the sample
    field, and leaves the process's options and login as it found them."""
    from xarray_terrascope.auth import current_credentials

    first = next(b for b in BLOCKS if b.lang == "python")
    assert first.page == README and first.skip is None
    options = xts.get_options()
    ns: dict = {"__name__": "__readme__"}
    exec(compile("\n" * (first.line - 1) + first.code, str(README), "exec"), ns)
    ndvi = ns["ndvi"]
    assert ndvi.dims == ("time", "y", "x") and ndvi.dtype == "float32"
    assert ns["ds"].sizes["time"] > 5  # a month of acquisitions (every 2-3 days)
    printed = capsys.readouterr().out
    assert "2025-05-" in printed  # the per-date means, printed by the block
    assert xts.get_options() == options
    assert current_credentials() is None
    assert not ns["sandbox"].running
