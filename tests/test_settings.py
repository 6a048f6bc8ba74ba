"""Settings: precedence of flags, environment and file, and located errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmkeeper import settings as settings_module
from swarmkeeper.settings import (
    Settings,
    SettingsError,
    load_settings,
    split_listen_address,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SWARMKEEPER_* or DOCKER_HOST from the machine, no /etc config file."""
    for name in list(os.environ):
        if name.upper().startswith("SWARMKEEPER_") or name.upper() == "DOCKER_HOST":
            monkeypatch.delenv(name)
    monkeypatch.setattr(
        settings_module, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml"
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swarmkeeper.toml"
    path.write_text(text)
    return path


def test_defaults_bind_metrics_to_loopback() -> None:
    settings = load_settings({})

    assert settings.metrics_addr == "127.0.0.1:9488"
    assert settings.mode == "enforce"
    assert settings.resync_interval == 60.0
    assert settings.docker_host is None


def test_flag_beats_environment_beats_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        'state_dir = "/from/file"\nmode = "observe"\nresync_interval = 5\n',
    )
    monkeypatch.setenv("SWARMKEEPER_STATE_DIR", "/from/env")
    monkeypatch.setenv("SWARMKEEPER_MODE", "enforce")

    settings = load_settings({"state_dir": "/from/flag"}, config_file=config)

    assert settings.state_dir == Path("/from/flag")
    assert settings.mode == "enforce"
    assert settings.resync_interval == 5.0


def test_default_config_file_is_read_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_config(tmp_path, 'log_level = "debug"\n')
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_FILE", config)

    assert load_settings({}).log_level == "debug"


def test_config_file_named_in_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_config(tmp_path, 'metrics_addr = "127.0.0.1:9999"\n')
    monkeypatch.setenv("SWARMKEEPER_CONFIG", str(config))

    assert load_settings({}).metrics_addr == "127.0.0.1:9999"


def test_docker_host_is_honoured_and_our_own_variable_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert load_settings({}).docker_host == "tcp://10.0.0.1:2375"

    monkeypatch.setenv("SWARMKEEPER_DOCKER_HOST", "unix:///run/other.sock")
    assert load_settings({}).docker_host == "unix:///run/other.sock"

    assert load_settings({"docker_host": "unix:///flag.sock"}).docker_host == (
        "unix:///flag.sock"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("flag", "invalid setting --metrics-addr='nonsense': expected HOST:PORT"),
        (
            "env",
            "invalid setting SWARMKEEPER_METRICS_ADDR='nonsense': expected HOST:PORT",
        ),
        ("file", "invalid setting metrics_addr='nonsense' in config file"),
    ],
)
def test_invalid_setting_is_named_as_the_operator_wrote_it(
    source: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    flags = {}
    config = None
    if source == "flag":
        flags = {"metrics_addr": "nonsense"}
    elif source == "env":
        monkeypatch.setenv("SWARMKEEPER_METRICS_ADDR", "nonsense")
    else:
        config = write_config(tmp_path, 'metrics_addr = "nonsense"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings(flags, config_file=config)

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(expected)


def test_every_invalid_setting_is_reported(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, 'resync_interval = -1\nmode = "sometimes"\nmetrics_port = 1\n'
    )

    with pytest.raises(SettingsError) as caught:
        load_settings({}, config_file=config)

    problems = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3
    assert "resync_interval=-1" in problems
    assert "mode='sometimes'" in problems
    assert f"config file {config}: unknown setting 'metrics_port'" in problems


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir = \n", "config file {path}: Invalid value"),
        ("\xff", "config file {path}: cannot be read"),
    ],
)
def test_unreadable_config_file_is_named(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(text.encode("latin-1"))

    with pytest.raises(SettingsError) as caught:
        load_settings({}, config_file=path)

    assert caught.value.problems[0].startswith(message.format(path=path))


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings({}, config_file=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9488", ("127.0.0.1", 9488)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_address_split(address: str, expected: tuple[str, int]) -> None:
    assert split_listen_address(address) == expected


@pytest.mark.parametrize(
    "address",
    ["nonsense", ":9488", "host:", "host:0", "host:70000", "::1:80", "[x]:80"],
)
def test_listen_address_rejected(address: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is tested above
        split_listen_address(address)


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's own error type
        settings.mode = "observe"


# ------------------------------------------------------------------- git --


def test_git_settings_and_their_defaults(tmp_path: Path) -> None:
    settings = load_settings({"git_url": "https://example.org/state.git"})

    assert settings.git_branch == "main"
    assert settings.git_path == ""
    assert settings.git_interval == 30.0
    assert settings.git_timeout == 60.0
    assert settings.git_verify == "none"
    assert settings.webhook_addr is None
    assert settings.cache_dir == Path("/var/lib/swarmkeeper")
    # With git the state directory is the cache's stable path.
    assert settings.state_dir == Path("/var/lib/swarmkeeper/state")
    assert load_settings({}).git_url is None


def test_git_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SWARMKEEPER_GIT_URL", "file:///srv/state.git")
    monkeypatch.setenv("SWARMKEEPER_GIT_BRANCH", "production")
    monkeypatch.setenv("SWARMKEEPER_GIT_PATH", "./clusters//t8g1/")
    monkeypatch.setenv("SWARMKEEPER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SWARMKEEPER_GIT_WEBHOOK_SECRET", "hush-123")
    monkeypatch.setenv("SWARMKEEPER_WEBHOOK_ADDR", "0.0.0.0:9489")

    settings = load_settings({})

    assert settings.git_branch == "production"
    assert settings.git_path == "clusters/t8g1"
    assert settings.state_dir == tmp_path / "state"
    assert settings.git_webhook_secret is not None
    assert settings.git_webhook_secret.get_secret_value() == "hush-123"
    assert "hush-123" not in repr(settings)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/etc/state", "not an absolute path"),
        ("../elsewhere", "'..' is not allowed"),
        ("state/../../elsewhere", "'..' is not allowed"),
    ],
)
def test_a_git_path_out_of_the_repository_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("SWARMKEEPER_GIT_PATH", value)

    with pytest.raises(SettingsError) as raised:
        load_settings({"git_url": "file:///srv/state.git"})

    assert raised.value.problems[0].startswith("invalid setting SWARMKEEPER_GIT_PATH")
    assert message in raised.value.problems[0]


def test_the_webhook_needs_a_secret_and_verification_needs_keys(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"git_url": "file:///r", "webhook_addr": "0.0.0.0:9489"})
    assert raised.value.problems == [
        "invalid setting --webhook-addr: the webhook needs "
        "SWARMKEEPER_GIT_WEBHOOK_SECRET (a shared secret); it is never open"
    ]

    with pytest.raises(SettingsError) as raised:
        load_settings({"git_url": "file:///r", "git_verify": "SSH"})
    assert (
        "SWARMKEEPER_GIT_ALLOWED_SIGNERS must name the allowed keys"
        in (raised.value.problems[0])
    )

    with pytest.raises(SettingsError) as raised:
        load_settings(
            {"git_verify": "gpg", "git_allowed_signers": str(tmp_path / "absent")}
        )
    assert raised.value.problems[0].endswith("no such file")

    with pytest.raises(SettingsError):
        load_settings({"git_verify": "x509"})


def test_a_bad_webhook_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A secret cannot be invalid by its value, but a wrong type can be: the
    # message names the setting, not what it held.
    monkeypatch.setenv("SWARMKEEPER_GIT_WEBHOOK_SECRET", "hush-123")
    monkeypatch.setenv("SWARMKEEPER_WEBHOOK_ADDR", "not-an-address")

    with pytest.raises(SettingsError) as raised:
        load_settings({})

    assert "hush-123" not in str(raised.value)
    assert "SWARMKEEPER_WEBHOOK_ADDR" in str(raised.value)


def test_the_git_settings_exit_2_on_the_command_line(tmp_path: Path) -> None:
    from swarmkeeper.cli import main

    code = main(
        ["validate", "--config", str(write_config(tmp_path, 'git_path = "/x"'))]
    )

    assert code == 2


def test_the_daemon_refuses_a_state_dir_beside_git(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmkeeper.cli import main

    monkeypatch.setenv("SWARMKEEPER_GIT_URL", "file:///srv/state.git")
    monkeypatch.setenv("SWARMKEEPER_CACHE_DIR", str(tmp_path))

    code = main(["run", "--state-dir", str(tmp_path / "elsewhere")])

    assert code == 2
    assert "state_dir cannot be set together with git_url" in capsys.readouterr().err
