"""The documentation runs: every command in README.md and docs/ parses with its script's own parser, every
script's --help starts with what it does and an example, a missing --output_dir is a one-line error, and
the README's Python snippets run.

Commands are the `run_*.py` and `python -m hf_xladjust...` lines of the ```bash blocks (continuation lines
joined, `&&`/`;`/`|` separated) and of inline code spans. Doc placeholders are read as a reader would:
`[--flag X]` is an optional part and is checked like the rest, `a|b` is a choice (the first is taken),
`(--x A | --y B)` is a choice of flag groups (the first is taken), `<...>` is one value, `$VAR` is a value;
a command with an ellipsis (`...`, `…`) is partial, so only its required arguments are not enforced. Unknown
flags, abbreviations, missing required arguments and bad values fail.

README convention for ```python snippets: they run as written in a scratch folder, except that a string
literal naming a model (a Hub id `org/name`, or a folder under `outputs/`) is replaced by a tiny model
(tests/conftest.py `build_tiny_model`) and one ending in `aligned_pairs.jsonl` by a small pairs file.
"""
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SCRIPTS = ["run_adjust", "run_glue_xl", "run_ner_xl", "run_qa_xl", "run_xsr"]
MODULES = ["hf_xladjust.evaluation.transforms", "hf_xladjust.evaluation.distances", "hf_xladjust.report",
           "hf_xladjust.experiments.align", "hf_xladjust.offline_model", "hf_xladjust.experiments"]
ENTRY = re.compile(r"^(?:run_\w+\.py|-m)$")
SEPARATORS = {"&&", "||", ";", "|"}
ELLIPSIS = "\0..."


# --- extracting commands -----------------------------------------------------------------------------------

def fenced_blocks(text, languages):
    return [m.group(2) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M)
            if m.group(1) in languages]


def doc_commands(text):
    """Every run_*.py / `python -m hf_xladjust` command of a Markdown text, as one string each."""
    found = []
    for block in fenced_blocks(text, {"bash", "sh", "shell", "console", ""}):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(line)
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)):
        span = span.replace("\n", " ").replace("\\|", "|")  # `\|` is a table's escaped choice bar
        if not re.fullmatch(r"\s*python3?\s+(?:run_\w+\.py|-m\s+[\w.]+)\s*", span):  # not a bare name in prose
            found.append(span)
    return [c for c in found if re.search(r"\bpython3?\s+(?:run_\w+\.py|-m\s+hf_xladjust)", c)]


def unplaceholder(command):
    """A doc command as a shell would see a filled-in copy of it (see the module docstring)."""
    command = re.sub(r"<[^<>]+>", "PLACEHOLDER", command)
    command = re.sub(r"\((\s*--[^()|]*?)\s\|\s[^()]*\)", r"\1", command)  # (--a X | --b Y) -> --a X
    return command


def split_segments(command):
    tokens = shlex.split(unplaceholder(command), comments=True)
    segment = []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)


def invocation(tokens):
    """(`run_x.py` or `-m module`, its arguments, partial?) of a command segment, or None."""
    for i, token in enumerate(tokens):
        if token.startswith("run_") and token.endswith(".py"):
            target, args = token[:-3], tokens[i + 1:]
            break
        if token == "-m" and i + 1 < len(tokens) and re.fullmatch(r"hf_xladjust(\.\w+)*", tokens[i + 1]):
            target, args = tokens[i + 1], tokens[i + 2:]
            break
    else:
        return None
    partial, cleaned = False, []
    for arg in args:
        arg = arg.replace("[", "").replace("]", "")
        if not arg or arg.startswith((">", "2>")):
            continue
        if "..." in arg or "…" in arg:
            partial = True  # more arguments than shown
            if arg in ("...", "…"):
                cleaned.append(ELLIPSIS)  # an elided value, more of the same, or more flags
                continue
        if "|" in arg:
            arg = arg.split("|")[0]
        cleaned.append(arg)
    return target, cleaned, partial


# --- parsing with the script's own parser ------------------------------------------------------------------

class ParseFailure(Exception):
    pass


_PARSERS = {}


def parser_of(target):
    if target not in _PARSERS:
        module = importlib.import_module(target)
        if not hasattr(module, "build_parser"):  # `python -m package`: its __main__
            module = importlib.import_module(target + ".__main__")
        _PARSERS[target] = module.build_parser()
    return _PARSERS[target]


def elide(parser, args):
    """An ellipsis right after a flag that needs a value stands for that value; anywhere else for more of the
    same (`--languages es ru ...`) or more flags: dropped."""
    options = {opt: action for action in parser._actions for opt in action.option_strings}
    out = []
    for arg in args:
        if arg == ELLIPSIS:
            action = options.get(out[-1]) if out else None
            if action is not None and action.nargs not in (0, "?", "*"):
                out.append("PLACEHOLDER")
            continue
        out.append(arg)
    return out


def parse_doc_args(target, args, partial=False):
    """Parse like the command line would, failing on anything argparse would refuse or ignore."""
    parser = parser_of(target)

    def error(message):
        raise ParseFailure(message)

    saved = parser.error, parser.allow_abbrev, [(a, a.required) for a in parser._actions]
    parser.error, parser.allow_abbrev = error, False
    if partial:
        for action in parser._actions:
            action.required = False
    try:
        if "--help" in args or "-h" in args:
            return
        args = elide(parser, args)
        namespace, unknown = parser.parse_known_args(args)
        if unknown:
            raise ParseFailure(f"unknown arguments {unknown}")
        return namespace
    finally:
        parser.error, parser.allow_abbrev = saved[0], saved[1]
        for action, required in saved[2]:
            action.required = required


def all_doc_invocations():
    for path in DOCS:
        for command in doc_commands(path.read_text(encoding="utf-8")):
            for segment in split_segments(command):
                found = invocation(segment)
                if found:
                    yield path.relative_to(ROOT).as_posix(), command, found


INVOCATIONS = list(all_doc_invocations())


def test_the_docs_have_commands_of_every_script():
    """The extraction finds what the docs show (so that the parse test below cannot pass on nothing)."""
    by_file = {}
    for path, _, (target, _, _) in INVOCATIONS:
        by_file.setdefault(path, set()).add(target)
    assert by_file["README.md"] >= {"run_adjust", "run_xsr", "hf_xladjust.offline_model",
                                    "hf_xladjust.evaluation.distances", "hf_xladjust.experiments",
                                    "hf_xladjust.report"}
    every = set().union(*by_file.values())
    assert every >= set(SCRIPTS) | {"hf_xladjust.evaluation.transforms"}
    assert len(INVOCATIONS) >= 40


@pytest.mark.parametrize("path, command, found", INVOCATIONS,
                         ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(INVOCATIONS)])
def test_doc_command_parses_with_its_scripts_parser(path, command, found):
    target, args, partial = found
    try:
        parse_doc_args(target, args, partial)
    except ParseFailure as err:
        pytest.fail(f"{path}: `{command.strip()}`: {err}")


@pytest.mark.parametrize("command, message", [
    ("python run_adjust.py --model_name_or_path m --train_file p.txt --num_trian_epochs 3 --output_dir o",
     "unknown arguments"),
    ("python run_adjust.py --model_name_or_path m --train_file p.txt --max_sentence 5 --output_dir o",
     "unknown arguments"),  # an abbreviation of --max_sentences
    ("python run_xsr.py --model_name_or_path m --tatoeba_dir t", "required: --output_dir"),
    ("python run_adjust.py --model_name_or_path m [--pooling mean|first] --max_steps ten --output_dir o",
     "invalid int value"),
    ("python -m hf_xladjust.report results [--ner_metric token|entity] [--tasks nli] [--languages es …]"
     " --no_such_flag", "unknown arguments"),
])
def test_the_doc_parser_rejects_what_the_script_would(command, message):
    (segment,) = list(split_segments(command))
    target, args, partial = invocation(segment)
    with pytest.raises(ParseFailure, match=re.escape(message)):
        parse_doc_args(target, args, partial)


def test_placeholders_are_read_as_a_reader_would():
    command = ("OMP_NUM_THREADS=1 python -m hf_xladjust.evaluation.distances --model original=M0 \\\n"
               "    (--pairs p.jsonl | --train_file pairs.txt) [--max_sentences 1000] --seed $SEED "
               "--output_dir <folder of yours> && python run_xsr.py --help")
    segments = list(split_segments(doc_commands(f"```bash\n{command}\n```")[0]))
    assert [invocation(s) for s in segments] == [
        ("hf_xladjust.evaluation.distances", ["--model", "original=M0", "--pairs", "p.jsonl", "--max_sentences",
                                              "1000", "--seed", "$SEED", "--output_dir", "PLACEHOLDER"], False),
        ("run_xsr", ["--help"], False)]


# --- --help and --output_dir ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help_starts_with_a_description_and_an_example(target):
    text = parser_of(target).format_help()
    head = re.split(r"^(?:options|positional arguments):", text, flags=re.M)[0]
    usage, _, description = head.partition("\n\n")
    assert usage.startswith("usage:") and len(usage.splitlines()) <= 6
    first = description.strip().splitlines()[0]
    assert len(first) > 30 and not first.startswith("-"), first
    assert "Example" in description
    lines = description.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("python "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    (segment,) = list(split_segments(" ".join(line.rstrip("\\") for line in lines[start:end + 1])))
    found = invocation(segment)
    assert found and found[0] == target
    parse_doc_args(*found)  # the example itself parses


def test_run_script_help_opens_with_its_docstring():
    import run_adjust

    lines = parser_of("run_adjust").format_help().splitlines()
    assert lines[0].startswith("usage:") and len(lines[0]) < 60
    assert lines[2] == run_adjust.__doc__.strip().splitlines()[0]


MINIMAL = {"run_adjust": ["--train_file", "p.txt"], "run_glue_xl": ["--do_train"], "run_ner_xl": ["--do_train"],
           "run_qa_xl": ["--do_train"], "run_xsr": ["--tatoeba_dir", "t"]}


@pytest.mark.parametrize("target", SCRIPTS)
def test_a_missing_output_dir_is_a_one_line_error(target, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser_of(target).parse_args_into_dataclasses(["--model_name_or_path", "m", *MINIMAL[target]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required: --output_dir" in err, err


def test_a_missing_output_dir_stops_the_real_script_before_anything_is_written(tmp_path):
    """As the HF examples: no ./trainer_output appears (transformers 5.x's default)."""
    proc = subprocess.run([sys.executable, str(ROOT / "run_adjust.py"), "--model_name_or_path", "m",
                           "--train_file", "p.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "run_adjust.py: error: the following arguments are required: --output_dir/--output-dir "
        "(--help lists the arguments)"]
    assert list(tmp_path.iterdir()) == []


# --- the README's Python snippets ---------------------------------------------------------------------------

MODEL_LITERAL = re.compile(r"""(["'])((?:outputs/[^"'\s]+)|(?:[\w.-]+/[\w.-]+))\1""")


def substitute(snippet, model_dir, pairs_file):
    def repl(match):
        value = match.group(2)
        if value.endswith("aligned_pairs.jsonl"):
            return repr(str(pairs_file))
        if "." in value.rsplit("/", 1)[-1] and not value.startswith(("google-bert/", "FacebookAI/", "intfloat/")):
            return match.group(0)  # a file, not a model
        return repr(str(model_dir))
    return MODEL_LITERAL.sub(repl, snippet)


README_SNIPPETS = fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"), {"python"})


def test_readme_has_python_snippets():
    assert README_SNIPPETS


@pytest.mark.parametrize("index", range(len(README_SNIPPETS)))
def test_readme_python_snippet_runs_on_a_tiny_model(index, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs

    pairs_file = tmp_path / "aligned_pairs.jsonl"
    write_aligned_pairs(str(pairs_file), [AlignedPair("the cat sleeps".split(), "el gato duerme".split(),
                                                      [(0, 0), (1, 1), (2, 2)])] * 8)
    snippet = README_SNIPPETS[index]
    code = substitute(snippet, tiny_model_dir, pairs_file)
    assert code != snippet, "a README snippet names no model: the convention (module docstring) is not followed"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python snippet {index}", "exec"), {"__name__": "__readme__"})


def test_substitution_keeps_files_and_replaces_models(tmp_path):
    code = ('a = "outputs/quickstart/adjusted-es"; b = "google-bert/bert-base-multilingual-cased"; '
            'c = "outputs/quickstart/adjusted-es/aligned_pairs.jsonl"; d = "demo_data/en-es.txt"')
    out = substitute(code, "TINY", "PAIRS")
    assert out == "a = 'TINY'; b = 'TINY'; c = 'PAIRS'; d = \"demo_data/en-es.txt\""


def test_parse_doc_args_gives_the_parser_back_as_it_was():
    """The parser is borrowed (with its error hook, abbreviations and required flags changed) and restored."""
    parser = parser_of("run_xsr")
    (output_dir,) = [a for a in parser._actions if a.dest == "output_dir"]
    parse_doc_args("run_xsr", ["--model_name_or_path", "m"], partial=True)
    assert output_dir.required and parser.allow_abbrev
    with pytest.raises(SystemExit):
        parser.parse_known_args(["--no_such_flag"])
