"""Settings: command-line flags over ``SWARMKEEPER_*`` environment over a TOML file.

Every setting has one name, used three ways: ``state_dir`` is the key in the
TOML file, ``SWARMKEEPER_STATE_DIR`` in the environment and ``--state-dir`` on
the command line. ``DOCKER_HOST`` is read as Docker users expect, and
``SWARMKEEPER_DOCKER_HOST`` wins over it when both are set.

Invalid settings raise :class:`SettingsError`, whose lines name each bad
setting the way the operator spelt it (flag, variable or file key), so the
command line can print them and exit 2 without a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "SWARMKEEPER_"
DEFAULT_CONFIG_FILE = Path("/etc/swarmkeeper/swarmkeeper.toml")


class SettingsError(Exception):
    """The settings could not be read or are invalid; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def split_listen_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its host and port.

    Raises ValueError with a sentence an operator can act on.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:9488")

    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 host in brackets, as [{host}]:{port_text}")

    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")

    return host, int(port_text)


def _check_listen_address(address: str) -> str:
    split_listen_address(address)
    return address


def _check_docker_host(url: str | None) -> str | None:
    # The schemes aiodocker can connect through; anything else would only fail
    # later, at the first engine call, with a less helpful message.
    if url is None or url == "":
        return None
    schemes = ("unix://", "tcp://", "http://", "https://", "ssh://")
    if not url.startswith(schemes):
        raise ValueError(f"expected a URL starting with one of {', '.join(schemes)}")
    return url


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)
]
LogFormat = Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)]
Mode = Annotated[Literal["enforce", "observe"], BeforeValidator(_lower)]
GitVerify = Annotated[Literal["none", "ssh", "gpg"], BeforeValidator(_lower)]


def _check_git_path(path: str) -> str:
    """A folder inside the repository: relative, and never out of it."""
    if path.startswith("/"):
        raise ValueError("must be a folder inside the repository, not an absolute path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("must stay inside the repository ('..' is not allowed)")
    return "/".join(parts)


def _optional_listen_address(address: str | None) -> str | None:
    if address is None or address == "":
        return None
    split_listen_address(address)
    return address


def _optional_text(value: str | None) -> str | None:
    return None if value is None or value == "" else value


GitPath = Annotated[str, AfterValidator(_check_git_path)]

# Values read from the TOML file for the Settings being built right now. The
# source order is fixed on the class, so the file's contents reach it through
# this variable rather than through a class attribute shared by all callers.
_file_values: ContextVar[dict[str, Any] | None] = ContextVar(
    "_file_values", default=None
)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Settings from the already-parsed TOML file, the lowest precedence."""

    def get_field_value(
        self, field: FieldInfo, field_name: str
    ) -> tuple[Any, str, bool]:
        # Unused: __call__ hands pydantic the whole mapping at once.
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Settings(BaseSettings):
    """Everything an operator can set. Defaults suit a manager node."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        populate_by_name=True,
    )

    state_dir: Path = Field(
        default=Path("/etc/swarmkeeper/desired-state"),
        description="The desired-state directory.",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="Folder outside the repository holding secret files.",
    )
    docker_host: Annotated[str | None, AfterValidator(_check_docker_host)] = Field(
        default=None,
        validation_alias=AliasChoices("SWARMKEEPER_DOCKER_HOST", "DOCKER_HOST"),
        description="Engine address; unset means DOCKER_HOST, then the local socket.",
    )
    metrics_addr: ListenAddress = Field(
        default="127.0.0.1:9488",
        description="Where /metrics, /healthz and /readyz listen (loopback).",
    )
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(
        default="auto",
        description="auto: console on a terminal, JSON lines otherwise.",
    )
    mode: Mode = Field(
        default="enforce",
        description="enforce corrects drift; observe only reports it.",
    )
    resync_interval: float = Field(
        default=60.0, gt=0, description="Seconds between full resyncs."
    )
    engine_timeout: float = Field(
        default=30.0, gt=0, description="Seconds before an engine call gives up."
    )
    # -- git as the source of the desired state (all off without git_url) --
    git_url: Annotated[str | None, AfterValidator(_optional_text)] = Field(
        default=None,
        description="Repository to follow (a path, file://, ssh or https URL).",
    )
    git_branch: str = Field(default="main", min_length=1)
    git_path: GitPath = Field(
        default="", description="Folder inside the repository; default its root."
    )
    git_interval: float = Field(
        default=30.0, gt=0, description="Seconds between fetches."
    )
    git_timeout: float = Field(
        default=60.0, gt=0, description="Seconds one git command may take."
    )
    git_webhook_secret: SecretStr | None = Field(
        default=None, description="Shared secret of POST /hooks/git."
    )
    webhook_addr: Annotated[str | None, AfterValidator(_optional_listen_address)] = (
        Field(default=None, description="HOST:PORT of the webhook; off by default.")
    )
    git_verify: GitVerify = Field(
        default="none", description="Verify the head commit's signature: ssh, gpg."
    )
    git_allowed_signers: Path | None = Field(
        default=None,
        description="ssh allowed_signers file, or an armored gpg public keyring.",
    )
    git_allow_rewrite: bool = Field(
        default=False,
        description="Deploy a head that does not descend from the deployed one.",
    )
    cache_dir: Path = Field(
        default=Path("/var/lib/swarmkeeper"),
        description="Where the daemon keeps its git cache and revision trees.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags arrive as init arguments; a .env file in the working directory
        # is deliberately not read: a daemon's settings should not depend on
        # where it was started.
        return init_settings, env_settings, _TomlFileSource(settings_cls)


def load_settings(
    flags: dict[str, Any], *, config_file: Path | None = None
) -> Settings:
    """Build the settings from flags, the environment and the config file.

    ``flags`` holds only the flags the operator actually gave. ``config_file``
    is the ``--config`` value (or ``SWARMKEEPER_CONFIG``): a named file must
    exist, while the default file is read only when present.
    """
    file_path, file_values = _read_config_file(config_file)

    token = _file_values.set(file_values)
    try:
        settings = Settings(**flags)
    except PydanticValidationError as error:
        raise SettingsError(
            [
                _describe(problem, flags=flags, file_path=file_path)
                for problem in error.errors()
            ]
        ) from None
    finally:
        _file_values.reset(token)

    problems = _check_combinations(
        settings, flags=flags, file_path=file_path, file_values=file_values
    )
    if problems:
        raise SettingsError(problems)
    if settings.git_url and "state_dir" not in settings.model_fields_set:
        # With git, the state directory is the stable path the daemon switches
        # from one revision's tree to the next (gitsource.py).
        settings = settings.model_copy(
            update={"state_dir": settings.cache_dir / "state"}
        )
    return settings


def _check_combinations(
    settings: Settings,
    *,
    flags: dict[str, Any],
    file_path: Path | None,
    file_values: dict[str, Any],
) -> list[str]:
    """Settings that are each valid but do not go together."""

    def name(field: str) -> str:
        if field in flags:
            return "--" + field.replace("_", "-")
        present = {key.upper() for key in os.environ}
        for variable in _environment_names(field):
            if variable in present:
                return variable
        if file_path is not None and field in file_values:
            return f"{field} (config file {file_path})"
        return ENV_PREFIX + field.upper()

    problems = []
    if settings.webhook_addr and settings.git_webhook_secret is None:
        problems.append(
            f"invalid setting {name('webhook_addr')}: the webhook needs "
            f"{name('git_webhook_secret')} (a shared secret); it is never open"
        )
    if settings.git_verify != "none":
        signers = settings.git_allowed_signers
        if signers is None:
            problems.append(
                f"invalid setting {name('git_verify')}={settings.git_verify!r}: "
                f"{name('git_allowed_signers')} must name the allowed keys"
            )
        elif not signers.is_file():
            problems.append(
                f"invalid setting {name('git_allowed_signers')}={str(signers)!r}: "
                "no such file"
            )
    return problems


def _read_config_file(config_file: Path | None) -> tuple[Path | None, dict[str, Any]]:
    from_environment = os.environ.get(ENV_PREFIX + "CONFIG")
    named = config_file or (Path(from_environment) if from_environment else None)
    path = named or DEFAULT_CONFIG_FILE
    if named is None and not path.exists():
        return None, {}

    try:
        with path.open("rb") as stream:
            return path, tomllib.load(stream)
    except FileNotFoundError:
        raise SettingsError([f"config file {path}: no such file"]) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError([f"config file {path}: {error}"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError([f"config file {path}: cannot be read: {error}"]) from None


def _describe(
    problem: Any,
    *,
    flags: dict[str, Any],
    file_path: Path | None,
) -> str:
    """One line naming the bad setting as the operator wrote it, and why."""
    field = str(problem["loc"][0]) if problem["loc"] else "?"
    reason = str(problem["msg"]).removeprefix("Value error, ")

    if problem["type"] == "extra_forbidden":
        where = f"config file {file_path}" if file_path else "settings"
        return f"{where}: unknown setting {field!r}"

    field = field.lower()
    if field in ("swarmkeeper_docker_host", "docker_host"):
        field = "docker_host"
    secret = _is_secret(field)
    shown = "" if secret else f"={problem.get('input')!r}"

    if field in flags:
        name = "--" + field.replace("_", "-")
        return f"invalid setting {name}{shown}: {reason}"

    present = {key.upper() for key in os.environ}
    for variable in _environment_names(field):
        if variable in present:
            return f"invalid setting {variable}{shown}: {reason}"

    if file_path is not None:
        return f"invalid setting {field}{shown} in config file {file_path}: {reason}"
    return f"invalid setting {field}{shown}: {reason}"


def _environment_names(field: str) -> list[str]:
    if field == "docker_host":
        return ["SWARMKEEPER_DOCKER_HOST", "DOCKER_HOST"]
    return [ENV_PREFIX + field.upper()]


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    if info is None:
        return False
    return info.annotation is SecretStr or SecretStr in get_args(info.annotation)
