"""One error root, one-line errors at the command line, and the library never importing the application."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
from pipeline import cli
from pipeline.errors import ClipwatchError, redact, validation_problem

ROOT = Path(pipeline.__file__).resolve().parent
SIGNALS = {"pipeline.video.live_backends.EndOfStream"}
"""Control flow inside one module (a clean end of a live stream), never raised to a caller: not errors."""


def library_modules():
    for info in pkgutil.walk_packages([str(ROOT)], prefix="pipeline."):
        yield importlib.import_module(info.name)


def test_every_error_the_library_defines_derives_from_clipwatch_error():
    errors = {(module.__name__, name): cls for module in library_modules()
              for name, cls in vars(module).items()
              if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == module.__name__}
    assert len(errors) >= 20  # the walk found the packages' errors
    strays = [f"{module}.{name}" for (module, name), cls in errors.items()
              if not issubclass(cls, ClipwatchError) and f"{module}.{name}" not in SIGNALS]
    assert strays == []


def test_the_library_never_imports_the_workers():
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name == "workers" or name.startswith("workers.")]
    assert offenders == []


def test_the_cli_prints_a_clipwatch_error_as_one_line_and_lets_a_bug_show_its_traceback(monkeypatch, capsys):
    def failing(error):
        def run(args):
            raise error
        return run

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda command=None, listing=False: parser)
    action = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    synth = action.choices["synth"]
    synth.set_defaults(func=failing(ClipwatchError("cams/a.mp4: not a video\n(moov atom not found)")))
    assert cli.main(["synth", "out"]) == 2
    assert capsys.readouterr().err == "clipwatch synth: error: cams/a.mp4: not a video (moov atom not found)\n"
    synth.set_defaults(func=failing(FileNotFoundError(2, "No such file or directory", "cams/b.mp4")))
    assert cli.main(["synth", "out"]) == 2
    assert capsys.readouterr().err == "clipwatch synth: error: cams/b.mp4: No such file or directory\n"
    synth.set_defaults(func=failing(ValueError("a bug, not a user error")))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["synth", "out"])


def test_the_process_commands_come_from_the_workers_through_entry_points():
    action = next(a for a in cli.build_parser()._subparsers._group_actions if a.dest == "command")
    assert {"run", "worker", "demo"} <= set(action.choices)
    assert action.choices["worker"].get_default("func").__module__ == "workers.cli"


def test_helpers_redact_passwords_and_summarise_validation_errors():
    from pydantic import BaseModel, ConfigDict

    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"

    class Section(BaseModel):
        model_config = ConfigDict(extra="forbid")
        port: int
        host: str = "localhost"

    with pytest.raises(Exception) as caught:
        Section.model_validate({"prot": 1, "hots": "x"})
    text = validation_problem(caught.value, known_keys=lambda parent: ["port", "host"])
    assert text == "port: required key is missing (and 2 more problems)"
    with pytest.raises(Exception) as caught:
        Section.model_validate({"port": 1, "hots": "x"})
    assert validation_problem(caught.value, known_keys=lambda parent: ["port", "host"]) == \
        "hots: unknown key (did you mean 'host'?)"


def test_every_command_describes_itself_and_takes_verbose_after_its_name():
    parser = cli.build_parser()
    assert "``" not in parser.description
    action = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    assert all(command.description for command in action.choices.values())
    assert parser.parse_args(["synth", "out", "-v"]).verbose is True
    assert parser.parse_args(["-v", "synth", "out"]).verbose is True
    assert parser.parse_args(["synth", "out"]).verbose is False


def test_a_named_command_builds_only_its_own_parser_and_light_commands_skip_torch():
    action = next(a for a in cli.build_parser("alerts")._subparsers._group_actions if a.dest == "command")
    assert list(action.choices) == ["alerts"]
    action = next(a for a in cli.build_parser("worker")._subparsers._group_actions if a.dest == "command")
    assert list(action.choices) == ["worker"]
    action = next(a for a in cli.build_parser("fitt")._subparsers._group_actions if a.dest == "command")
    assert {"fit", "run", "synth"} <= set(action.choices)  # unknown: every command, for argparse's suggestion
    for argv in (["alerts", "--help"], ["--help"], ["fitt"]):  # the listing imports no command module
        probe = ("import sys, contextlib, io\nimport pipeline.cli as cli\nout = io.StringIO()\n"
                 "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), "
                 "contextlib.suppress(SystemExit):\n"
                 f"    cli.main({argv!r})\n"
                 "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules)\n"
                 "print(repr(heavy) + chr(10) + out.getvalue())")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        heavy, _, printed = out.stdout.partition("\n")
        assert heavy == "[]", (argv, heavy, out.stderr)
        if argv == ["--help"]:  # every command listed with its line
            for name in [*cli.COMMAND_MODULES, "run", "worker", "demo"]:
                assert f"    {name} " in printed, name
            assert cli.COMMAND_HELP["train"] in " ".join(printed.split())
        if argv == ["fitt"]:
            assert "invalid choice: 'fitt'" in printed


def test_a_named_command_whose_plugin_fails_to_load_falls_back_to_every_command(monkeypatch):
    class Broken:
        name, value = "run", "nowhere:register"

        def load(self):
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Broken()])
    action = next(a for a in cli.build_parser("run")._subparsers._group_actions if a.dest == "command")
    assert set(action.choices) == set(cli.COMMAND_MODULES)  # argparse then names the commands that do exist
