"""One `--dtype` for every command: same names, long torch spellings accepted, `source` only where weights are written."""

import pytest

from wenzhen.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["chat", "m", "--dtype", "bfloat16"], "bf16"),
        (["eval", "gen", "m", "--data", "d", "--out", "o", "--dtype", "float32"], "fp32"),
        (["web", "m", "--dtype", "fp16"], "fp16"),
        (["api", "m"], "auto"),
        (["convert", "a", "b"], "source"),
        (["merge", "a", "--out-dir", "b", "--dtype", "half"], "fp16"),
    ],
)
def test_every_command_reads_dtype_the_same_way(argv, expected):
    assert build_parser(argv).parse_args(argv).dtype == expected


def test_source_is_only_for_commands_that_write_weights(capsys):
    with pytest.raises(SystemExit):
        build_parser(["chat"]).parse_args(["chat", "m", "--dtype", "source"])
    assert "unknown dtype 'source'" in capsys.readouterr().err
