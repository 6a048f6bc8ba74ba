"""Loading the desired state: the directory format, conversion details, located errors.

The field-by-field equality with ``docker stack deploy`` is proved against
the real engine in ``test_compose_corpus.py``; these tests pin the rules that
need no engine: parsing, interpolation, names, files, policy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from swarmkeeper.desired import DesiredState
from swarmkeeper.loading.compose import content_addressed_name, load_stack
from swarmkeeper.loading.files import parse_yaml
from swarmkeeper.loading.interpolation import InterpolationError, substitute
from swarmkeeper.loading.problems import InvalidDesiredState, Problems
from swarmkeeper.loading.service import parse_port, parse_volume, split_command
from swarmkeeper.loading.statedir import load_desired_state
from swarmkeeper.loading.units import go_string, parse_bytes, parse_duration

REPO_STATE = Path(__file__).parent.parent / "desired-state"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def problems_of(root: Path, **options: Any) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired_state(root, environ=options.pop("environ", {}), **options)
    return [str(problem) for problem in caught.value.problems]


# ---------------------------------------------------- the repo's example --


def test_repo_desired_state_describes_the_seed_cluster() -> None:
    state = load_desired_state(REPO_STATE, environ={})

    assert set(state.stacks) == {"t8g1"}
    services = state.services()
    assert set(services) == {"t8g1_registry", "t8g1_proxy", "t8g1_hugo"}
    assert set(state.networks) == {
        "t8g1-registry-overlay",
        "t8g1-squid-overlay",
        "t8g1-ingress",
    }
    assert state.ingress_network == "t8g1-ingress"
    assert state.stacks["t8g1"].external_networks == {
        "t8g1-registry-overlay",
        "t8g1-squid-overlay",
    }

    # Every placement constraint is satisfiable by some node's labels.
    labels = [
        f"node.labels.{k}=={v}"
        for node in state.node_labels.values()
        for k, v in node.items()
    ]
    for service in services.values():
        for constraint in service.spec["TaskTemplate"]["Placement"]["Constraints"]:
            assert constraint in labels

    # The allow-list admits exactly the stack's images.
    images = {s.spec["Labels"]["com.docker.stack.image"] for s in services.values()}
    assert state.policy.allowed_images is not None
    assert set(state.policy.allowed_images) == images
    assert state.warnings == ()


def test_seed_service_spec_matches_what_the_cli_sends() -> None:
    spec = load_desired_state(REPO_STATE, environ={}).services()["t8g1_proxy"].spec

    assert spec["Labels"] == {
        "com.docker.stack.namespace": "t8g1",
        "com.docker.stack.image": "ubuntu/squid:latest",
    }
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Env"] == ["TZ=Europe/Copenhagen"]
    assert container["Mounts"][0] == {
        "Type": "bind",
        "Source": "/etc/squid/squid.conf",
        "Target": "/etc/squid/squid.conf",
    }
    assert spec["TaskTemplate"]["Networks"] == [
        {"Target": "t8g1-squid-overlay", "Aliases": ["proxy"]}
    ]
    assert spec["EndpointSpec"]["Ports"] == [
        {
            "Protocol": "tcp",
            "TargetPort": 3128,
            "PublishedPort": 8888,
            "PublishMode": "ingress",
        }
    ]


# ----------------------------------------------------- directory format --


def test_stack_file_and_stack_folder(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "stacks/web.yml": "services:\n  app:\n    image: nginx:1\n",
            "stacks/db/compose.yml": "services:\n  pg:\n    image: postgres:16\n    environment:\n      PGDATA: ${DATA}\n",
            "stacks/db/.env": "DATA=/var/lib/pg\n",
        },
    )

    state = load_desired_state(tmp_path, environ={})

    assert set(state.services()) == {"web_app", "db_pg"}
    env = state.services()["db_pg"].spec["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["PGDATA=/var/lib/pg"]


def test_process_environment_wins_over_dotenv_but_not_swarmkeeper_settings(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        {
            "stacks/db/compose.yml": (
                "services:\n  pg:\n    image: postgres:16\n    environment:\n"
                "      A: ${A}\n      LEAK: ${SWARMKEEPER_GIT_WEBHOOK_SECRET:-hidden}\n"
            ),
            "stacks/db/.env": "A=from-dotenv\nSWARMKEEPER_GIT_WEBHOOK_SECRET=also-hidden\n",
        },
    )

    state = load_desired_state(
        tmp_path,
        environ={"A": "from-process", "SWARMKEEPER_GIT_WEBHOOK_SECRET": "s3cret"},
    )

    env = state.services()["db_pg"].spec["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["A=from-process", "LEAK=hidden"]


def test_empty_directory_is_valid_but_reported(tmp_path: Path) -> None:
    state = load_desired_state(tmp_path, environ={})

    assert state.is_empty
    assert [w.message for w in state.warnings] == [
        "the state directory declares no stacks, networks or nodes"
    ]


def test_networks_nodes_and_policy_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "networks.yml": (
                "networks:\n  edge:\n    encrypted: true\n    attachable: true\n"
                "    labels: [tier=edge]\n    ipam:\n      config:\n        - subnet: 10.20.0.0/24\n"
                "  mesh:\n    ingress: true\n"
            ),
            "nodes.yml": "nodes:\n  '*':\n    labels:\n      zone: a\n  n1:\n    labels:\n      ssd: true\n      weight: 3\n",
            "policy.yml": "images:\n  allow: ['registry.local/*']\nprune: false\nprune_cap: 2\nsuspend: [web]\n",
            "stacks/web.yml": "services:\n  app:\n    image: registry.local/team/app:1\n",
        },
    )

    state = load_desired_state(tmp_path, environ={})

    edge = state.networks["edge"].create
    assert edge["Options"] == {"encrypted": ""}
    assert edge["Attachable"] is True
    assert edge["Labels"] == {"tier": "edge"}
    assert edge["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/24"}]
    assert state.ingress_network == "mesh"
    assert state.node_labels == {
        "*": {"zone": "a"},
        "n1": {"ssd": "true", "weight": "3"},
    }
    assert state.policy.prune is False
    assert state.policy.prune_cap == 2
    assert state.policy.suspend == ("web",)


def test_config_and_secret_names_are_content_addressed(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write(secrets, {"db_password": "hunter2"})
    write(
        tmp_path / "state",
        {
            "stacks/app/compose.yml": (
                "services:\n  api:\n    image: api:1\n    configs: [conf]\n    secrets: [pw]\n"
                "configs:\n  conf:\n    file: ./app.conf\n"
                f"secrets:\n  pw:\n    file: {secrets}/db_password\n"
            ),
            "stacks/app/app.conf": "listen 80\n",
        },
    )

    state = load_desired_state(tmp_path / "state", environ={}, secrets_dir=secrets)

    stack = state.stacks["app"]
    (config,) = stack.configs.values()
    (secret,) = stack.secrets.values()
    assert config.name == "app_conf-" + config.digest[:10]
    assert config.data == b"listen 80\n"
    assert "hunter2" not in repr(secret)
    container = stack.services["app_api"].spec["TaskTemplate"]["ContainerSpec"]
    assert container["Configs"][0]["ConfigName"] == config.name
    assert container["Secrets"][0]["SecretName"] == secret.name
    assert container["Secrets"][0]["File"] == {
        "Name": "pw",
        "UID": "0",
        "GID": "0",
        "Mode": 0o444,
    }
    assert state.warnings == ()


def test_secret_file_inside_the_state_directory_is_warned_about(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "stacks/app/compose.yml": "services:\n  api:\n    image: api:1\n    secrets: [pw]\nsecrets:\n  pw:\n    file: ./pw.txt\n",
            "stacks/app/pw.txt": "in-git",
        },
    )

    state = load_desired_state(tmp_path, environ={})

    (warning,) = state.warnings
    assert str(warning).startswith("stacks/app/compose.yml:7: secrets.pw.file:")
    assert "probably in git" in warning.message


def test_content_addressed_name_fits_the_engine_limit() -> None:
    name = content_addressed_name("s" * 80, "ab" * 32)

    assert len(name) == 64
    assert name.endswith("-" + "ab" * 5)


# -------------------------------------------------------------- bad input --

BAD_INPUT = [
    (
        "yaml syntax",
        {"stacks/a.yml": "services:\n  web: [\n"},
        "stacks/a.yml:3: YAML:",
    ),
    (
        "duplicate key",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    image: b\n"},
        "stacks/a.yml:4: YAML: duplicate key 'image' (first defined on line 3)",
    ),
    (
        "wrong type",
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n    deploy:\n      replicas: many\n"
        },
        "stacks/a.yml:5: services.web.deploy.replicas: must be an integer",
    ),
    (
        "negative replicas",
        {
            "stacks/t8g1.yml": "services:\n  proxy:\n    image: a\n    deploy:\n      replicas: -1\n"
        },
        "stacks/t8g1.yml:5: services.proxy.deploy.replicas: must be a non-negative integer",
    ),
    (
        "unknown field",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    replicas: 2\n"},
        "stacks/a.yml:4: services.web.replicas: unknown field 'replicas'",
    ),
    (
        "unknown network",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    networks: [front]\n"},
        "stacks/a.yml:4: services.web.networks[0]: undefined network 'front'",
    ),
    (
        "unknown config",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    configs: [conf]\n"},
        "stacks/a.yml:4: services.web.configs[0]: undefined config 'conf'",
    ),
    (
        "service name too long",
        {f"stacks/{'s' * 40}.yml": f"services:\n  {'w' * 30}:\n    image: a\n"},
        "is 71 characters; the engine allows 63",
    ),
    (
        "bad service name",
        {"stacks/a.yml": "services:\n  web-:\n    image: a\n"},
        "stacks/a.yml:2: services.web-: the service name 'a_web-' is not valid",
    ),
    (
        "two stacks, one name",
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n",
            "stacks/a/compose.yml": "services:\n  web:\n    image: a\n",
        },
        "stacks/a.yml: the stack name 'a' is also claimed by stacks/a/compose.yml",
    ),
    (
        "dot-dot out of the state directory",
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n    configs: [c]\nconfigs:\n  c:\n    file: ../../outside.conf\n",
        },
        "stacks/a.yml:7: configs.c.file: '../../outside.conf' is outside the state directory",
    ),
    (
        "not UTF-8",
        {"stacks/a.yml": b"services:\n  web:\n    image: \xff\n"},
        "stacks/a.yml:3: not UTF-8 text (byte 28)",
    ),
    (
        "oversized",
        {"stacks/a.yml": "#" * (8 * 1024 * 1024 + 1)},
        "stacks/a.yml: larger than 8 MiB",
    ),
    (
        "unset required variable",
        {"stacks/a.yml": "services:\n  web:\n    image: ${IMAGE:?set the image}\n"},
        "stacks/a.yml:3: services.web.image: required variable IMAGE is missing a value: set the image",
    ),
    (
        "invalid interpolation",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    command: echo $1\n"},
        "stacks/a.yml:4: services.web.command: invalid interpolation format",
    ),
    (
        "forbidden key",
        {"stacks/a.yml": "services:\n  web:\n    image: a\n    cpu_shares: 2\n"},
        "stacks/a.yml:4: services.web.cpu_shares: not supported by docker stack deploy",
    ),
    (
        "unsupported version",
        {"stacks/a.yml": "version: '2.4'\nservices:\n  web:\n    image: a\n"},
        "stacks/a.yml:1: version: unsupported compose file version '2.4'",
    ),
    (
        "field newer than the declared version",
        {
            "stacks/a.yml": "version: '3.6'\nservices:\n  web:\n    image: a\n    deploy:\n      rollback_config: {}\n"
        },
        "stacks/a.yml:6: services.web.deploy.rollback_config: unknown field 'rollback_config' in compose file version 3.6",
    ),
    (
        "image refused by policy",
        {
            "stacks/a.yml": "services:\n  web:\n    image: evil/miner:1\n",
            "policy.yml": "images:\n  allow: [nginx:*]\n",
        },
        "stacks/a.yml:3: services.web.image: 'evil/miner:1' is not allowed by policy.yml (images.allow)",
    ),
    (
        "two ingress networks",
        {
            "networks.yml": "networks:\n  a:\n    ingress: true\n  b:\n    ingress: true\n"
        },
        "networks.yml:5: networks.b.ingress: only one network can be the ingress network",
    ),
    (
        "network declared twice",
        {
            "networks.yml": "networks:\n  a_front: {}\n",
            "stacks/a.yml": "services:\n  web:\n    image: a\n    networks: [front]\nnetworks:\n  front: {}\n",
        },
        "network 'a_front' is also declared in networks.yml",
    ),
    (
        "node labels of the wrong shape",
        {"nodes.yml": "nodes:\n  n1:\n    labels: [a, b]\n"},
        "nodes.yml:3: nodes.n1.labels: must be a mapping",
    ),
    (
        "policy typo",
        {"policy.yml": "prune: true\nprune_limit: 3\n"},
        "policy.yml:2: prune_limit: unknown field 'prune_limit'",
    ),
    (
        "stack folder without compose file",
        {"stacks/a/readme.txt": "hello"},
        "stacks/a: a stack folder needs compose.yml",
    ),
]


@pytest.mark.parametrize(
    ("files", "expected"),
    [pytest.param(files, expected, id=name) for name, files, expected in BAD_INPUT],
)
def test_bad_input_is_reported_with_file_line_and_field(
    tmp_path: Path, files: dict[str, str | bytes], expected: str
) -> None:
    write(tmp_path, files)

    problems = problems_of(tmp_path)

    assert any(expected in problem for problem in problems), problems


def test_symlink_out_of_the_state_directory_is_refused(tmp_path: Path) -> None:
    outside = write(
        tmp_path / "outside", {"evil.yml": "services:\n  x:\n    image: a\n"}
    )
    state = tmp_path / "state"
    (state / "stacks").mkdir(parents=True)
    (state / "stacks" / "evil.yml").symlink_to(outside / "evil.yml")
    (state / "stacks" / "ok.yml").write_text("services:\n  web:\n    image: a\n")

    assert problems_of(state) == [
        "stacks/evil.yml: 'evil.yml' is outside the state directory"
    ]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n    deploy:\n      replicas: x\n  db:\n    image: b\n    networks: [nope]\n",
            "stacks/b.yml": "services: [\n",
            "nodes.yml": "nodes:\n  n1: 3\n",
        },
    )

    problems = problems_of(tmp_path)

    assert len(problems) == 4
    assert {p.split(":")[0] for p in problems} == {
        "stacks/a.yml",
        "stacks/b.yml",
        "nodes.yml",
    }


def test_a_key_that_is_not_a_string_is_a_located_problem(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "stacks/web.yml": "services:\n  web:\n    image: nginx\n    labels:\n      1: a\n"
        },
    )
    assert problems_of(root) == [
        "stacks/web.yml:4: services.web.labels: keys must be strings, found 1"
    ]


def test_a_key_that_is_not_a_string_is_found_through_a_merge(tmp_path: Path) -> None:
    compose = (
        "x-labels: &labels\n"
        "  tier: web\n"
        "services:\n"
        "  web:\n"
        "    image: nginx\n"
        "    labels:\n"
        "      <<: [*labels, {true: yes}]\n"
    )
    root = write(tmp_path, {"stacks/web.yml": compose})
    assert problems_of(root) == [
        "stacks/web.yml:6: services.web.labels: keys must be strings, found True"
    ]


# ---------------------------------------------------------------- pieces --


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("$A-$B", {"A": "1", "B": "2"}, "1-2"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A-x}", {}, "x"),
        ("$$A", {"A": "1"}, "$A"),
        ("${A:-${B}}", {}, "${B}"),  # defaults are literal, as in the CLI
        ("${A:?need A}", {"A": "ok"}, "ok"),
        ("plain", {}, "plain"),
    ],
)
def test_substitute(text: str, environ: dict[str, str], expected: str) -> None:
    assert substitute(text, environ, unset=lambda name: None) == expected


@pytest.mark.parametrize(
    "text", ["${A:?}", "${A?}", "$1", "${}", "${A", "${A:+x}", "$"]
)
def test_substitute_errors(text: str) -> None:
    with pytest.raises(InterpolationError):
        substitute(text, {}, unset=lambda name: None)


def test_interpolated_numbers_and_booleans_are_typed(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        {
            "stacks/a.yml": "services:\n  web:\n    image: a\n    tty: ${TTY}\n    deploy:\n      replicas: ${N}\n",
        },
    )
    stack, _ = load_stack(
        "a",
        compose / "stacks/a.yml",
        state_dir=tmp_path,
        environ={"N": "3", "TTY": "yes"},
    )

    spec = stack.services["a_web"].spec
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    assert spec["TaskTemplate"]["ContainerSpec"]["TTY"] is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", 10_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("300ms", 300_000_000),
        ("2us", 2_000),
        ("0", 0),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10", "1d", "s", "", "1s2"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for operators
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64M", 64 << 20),
        ("1g", 1 << 30),
        ("512mb", 512 << 20),
        ("1.5k", 1536),
        (100, 100),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "true"), (False, "false"), (1.0, "1"), (0.5, "0.5"), (3, "3"), (None, "")],
)
def test_go_string(value: object, expected: str) -> None:
    assert go_string(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("echo 'x\\y' \"p\\q\" r\\s", ["echo", "x\\y", "pq", "rs"]),
        ("echo a #b c", ["echo", "a"]),
        ("echo a#b", ["echo", "a#b"]),
        ("a;b|c", ["a;b|c"]),
        ("'' \"\"", ["", ""]),
    ],
)
def test_split_command_as_the_cli(text: str, expected: list[str]) -> None:
    assert split_command(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", [(80, None, "tcp")]),
        ("8080:80/udp", [(80, 8080, "udp")]),
        ("127.0.0.1:8080:80", [(80, 8080, "tcp")]),
        ("20010-20011:80-81", [(80, 20010, "tcp"), (81, 20011, "tcp")]),
    ],
)
def test_parse_port(text: str, expected: list[tuple[int, int | None, str]]) -> None:
    ports = parse_port(text)

    assert [
        (p["TargetPort"], p.get("PublishedPort"), p["Protocol"]) for p in ports
    ] == expected
    assert {p["PublishMode"] for p in ports} == {"ingress"}


@pytest.mark.parametrize("text", ["80/xyz", "70000", "a:80", "1-3:1-2"])
def test_parse_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data", {"type": "volume", "target": "/data"}),
        (
            "data:/data:ro",
            {"type": "volume", "source": "data", "target": "/data", "read_only": True},
        ),
        ("./x:/x", {"type": "bind", "source": "./x", "target": "/x"}),
        (
            "/h:/c:rslave",
            {
                "type": "bind",
                "source": "/h",
                "target": "/c",
                "bind": {"propagation": "rslave"},
            },
        ),
        (
            "v:/c:nocopy",
            {
                "type": "volume",
                "source": "v",
                "target": "/c",
                "volume": {"nocopy": True},
            },
        ),
    ],
)
def test_parse_volume(text: str, expected: dict[str, Any]) -> None:
    assert parse_volume(text) == expected


def test_octal_file_modes_are_read_as_the_cli_reads_them(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "stacks/a.yml": (
                "services:\n  web:\n    image: a\n    configs:\n"
                "      - {source: c, mode: 0440}\n      - {source: d, mode: 440}\n"
                "configs:\n  c:\n    file: ./c\n  d:\n    file: ./c\n"
            ),
            "stacks/c": "x",
        },
    )

    state: DesiredState = load_desired_state(tmp_path, environ={})

    configs = state.services()["a_web"].spec["TaskTemplate"]["ContainerSpec"]["Configs"]
    assert [c["File"]["Mode"] for c in configs] == [0o440, 440]


def test_relative_bind_source_uses_the_state_directory_spelling(tmp_path: Path) -> None:
    real = write(
        tmp_path / "revisions" / "abc123",
        {
            "stacks/a/compose.yml": "services:\n  web:\n    image: a\n    volumes: ['./data:/data']\n"
        },
    )
    link = tmp_path / "current"
    link.symlink_to(real)

    state = load_desired_state(link, environ={})

    mount = state.services()["a_web"].spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    assert mount["Source"] == os.path.join(link, "stacks", "a", "data")


def test_yaml_merge_keys_follow_the_yaml_rules() -> None:
    text = (
        "base: &base {a: 1, b: 2}\n"
        "more: &more {b: 3, c: 4}\n"
        "one:\n"
        "  <<: *base\n"
        "  a: own\n"
        "many:\n"
        "  <<: [*base, *more]\n"
        "quoted:\n"
        "  '<<': not a merge\n"
    )
    problems = Problems()
    document = parse_yaml(text, file="f.yml", problems=problems)

    assert not problems.errors
    assert document is not None
    data = document.data
    assert data["one"] == {"a": "own", "b": 2}  # keys written in place win
    assert data["many"] == {"a": 1, "b": 2, "c": 4}  # earlier sources win
    assert data["quoted"] == {"<<": "not a merge"}
    assert document.lines[("one", "a")] == 5
    assert document.string_keys


def test_yaml_values_resolve_as_yaml_1_2_whatever_the_tags() -> None:
    text = "a: yes\nb: 0440\nc: 0x1F\nd: ~\ne: '12'\nf: 1.5\ng: true\n"
    document = parse_yaml(text, file="f.yml", problems=Problems())

    assert document is not None
    assert document.data == {
        "a": "yes", "b": 288, "c": 31, "d": None, "e": "12", "f": 1.5, "g": True
    }  # fmt: skip
    assert document.string_keys


def test_parsing_notes_a_key_that_is_not_a_string() -> None:
    document = parse_yaml("a:\n  - {1: x}\n", file="f.yml", problems=Problems())

    assert document is not None
    assert document.data == {"a": [{1: "x"}]}
    assert not document.string_keys
