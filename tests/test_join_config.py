"""`join`'s configuration: flag > PARIS_* environment > HOME/config.toml > default, shown by --print-config;
bad files and values are one-line errors naming where they came from."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from node.cli import app
from protocol.errors import ParisError

PEER = "/ip4/10.0.0.2/tcp/31337/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def _config(home, env=None, *flags):
    result = CliRunner().invoke(app, ["join", "--home", str(home), "--print-config", "--log-format", "json",
                                      *flags], env=env or {}, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    (tmp_path / "config.toml").write_text(f'[join]\nport = 31337\nrole = "verifier"\ninitial-peers = ["{PEER}"]\n'
                                          "period = 5.0\nnat = true\n")
    got = _config(tmp_path, {"PARIS_PORT": "4000", "PARIS_RELAY": "yes", "PARIS_ALLOW_TRAINER": "QmA, QmB"},
                  "--period", "3")
    opts = got["options"]
    assert got["config_file"] == str(tmp_path / "config.toml")
    assert opts["port"] == {"value": 4000, "from": "env"}
    assert opts["role"] == {"value": "verifier", "from": "file"}
    assert opts["initial_peers"] == {"value": [PEER], "from": "file"}
    assert opts["period"] == {"value": 3.0, "from": "flag"}
    assert opts["nat"] == {"value": True, "from": "file"} and opts["relay"] == {"value": True, "from": "env"}
    assert opts["allow_trainer"] == {"value": ["QmA", "QmB"], "from": "env"}
    assert opts["cache_gb"] == {"value": 50.0, "from": "default"}


def test_the_home_of_the_config_can_come_from_the_environment(tmp_path):
    (tmp_path / "config.toml").write_text("port = 7000\n")  # no [join] table: the top level is join's
    result = CliRunner().invoke(app, ["join", "--print-config", "--log-format", "json"],
                                env={"PARIS_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["options"]["port"] == {"value": 7000, "from": "file"}


@pytest.mark.parametrize("toml, env, message", [
    ("bogus = 1\n", {}, "unknown option 'bogus'"),
    ("port = 99999\n", {}, "config.toml: port: Invalid value for '--port'"),
    ("port = [\n", {}, "not valid TOML"),
    ("", {"PARIS_PORT": "abc"}, "PARIS_PORT: Invalid value for '--port'"),
    ("", {"PARIS_NAT": "maybe"}, "PARIS_NAT='maybe': expected true or false"),
    ("print-config = true\n", {}, "unknown option 'print_config'"),
])
def test_bad_configuration_is_a_one_line_error(tmp_path, toml, env, message):
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ParisError, match=message.replace("[", r"\[").replace("'", "'")):
        _config(tmp_path, env)
