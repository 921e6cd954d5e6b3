"""The CLI: every stage's commands listed, only the named stage imported, user errors as one line."""

import subprocess
import sys

import pytest

from wenzhen.cli import COMMAND_MODULES, build_parser, main, modules_for


def test_help_lists_every_registered_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for commands in COMMAND_MODULES.values():
        for command in commands:
            assert command in out


def test_each_module_registers_exactly_the_commands_listed_for_it():
    for module, commands in COMMAND_MODULES.items():
        parser = build_parser([commands[0]])
        registered = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
        assert registered == set(commands), module


def test_a_named_command_imports_only_its_stage():
    assert modules_for(["-v", "data", "prepare", "x"]) == ["wenzhen.data.commands"]
    assert modules_for(["--help"]) == list(COMMAND_MODULES)
    code = "import sys; from wenzhen.cli import build_parser; build_parser(['data']); print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["env", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
