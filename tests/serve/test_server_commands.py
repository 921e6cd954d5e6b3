"""`wenzhen web` / `wenzhen api` argument handling (the servers themselves are tested in test_api / test_web)."""

from pathlib import Path

import pytest

from wenzhen import cli


@pytest.mark.parametrize(("command", "port"), [("web", 7860), ("api", 8000)])
def test_servers_bind_loopback_by_default(command: str, port: int) -> None:
    args = cli.build_parser().parse_args([command, "some-model"])
    assert (args.host, args.port) == ("127.0.0.1", port)


@pytest.mark.parametrize("command", ["web", "api"])
def test_help_explains_the_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    shown = capsys.readouterr().out
    assert "--host" in shown and "127.0.0.1" in shown and "--adapter" in shown and "--config" in shown


@pytest.mark.parametrize(
    ("command", "yaml_text", "message"),
    [
        ("api", "limits:\n  max_concurent: 2\n", "did you mean 'max_concurrent'"),
        ("web", "safety:\n  categories: [cardiak]\n", "unknown categories"),
    ],
)
def test_bad_config_is_refused_before_loading_the_model(
    command: str, yaml_text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    assert cli.main([command, str(tmp_path / "no-model"), "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
