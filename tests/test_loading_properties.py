"""Property: any compose document is either converted or rejected with located problems.

Documents are generated from the real field names with values of every
shape, plausible and not, so the converter meets what people actually
mistype. Whatever comes in, loading must never crash, and every problem must
name the file and a line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmkeeper.desired import Stack
from swarmkeeper.loading.compose import load_stack
from swarmkeeper.loading.problems import InvalidDesiredState

SERVICE_FIELDS = [
    "image", "command", "entrypoint", "environment", "env_file", "ports", "volumes",
    "networks", "deploy", "healthcheck", "labels", "configs", "secrets", "hostname",
    "user", "working_dir", "stop_grace_period", "stop_signal", "tty", "read_only",
    "init", "extra_hosts", "dns", "dns_search", "cap_add", "cap_drop", "ulimits",
    "sysctls", "logging", "restart", "build", "privileged", "isolation", "x-note",
]  # fmt: skip
DEPLOY_FIELDS = [
    "mode", "replicas", "placement", "resources", "restart_policy", "update_config",
    "rollback_config", "endpoint_mode", "labels",
]  # fmt: skip

plausible_strings = st.sampled_from(
    [
        "nginx:1.25", "80:80", "8080:80/udp", "20000-20002:80-82", "10s", "1m30s",
        "64M", "0.5", "data:/data:ro", "./x:/x", "/tmp", "A=1", "KEY", "replicated",
        "global", "replicated-job", "vip", "dnsrr", "on-failure:3", "always",
        "node.role==manager", "${VAR}", "${VAR:-x}", "$$", "echo 'a b'", "CAP_NET_ADMIN",
        "ALL", "host:10.0.0.1", "true", "", "front", "default", "c", "s",
    ]
)  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-70000, max_value=70000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    plausible_strings,
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                plausible_strings, st.sampled_from([*DEPLOY_FIELDS, "target", "source"])
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


durations = st.sampled_from(["10s", "1m30s", "500ms", "0", "2h", "1.5s"])
port_numbers = st.integers(min_value=1, max_value=65535)
names = st.sampled_from(["front", "back", "data", "c", "s"])
key_values = st.one_of(
    st.dictionaries(st.sampled_from(["A", "B", "TZ", "x.y"]), scalars, max_size=3),
    st.lists(st.sampled_from(["A=1", "B", "C=x=y", "TZ=UTC"]), max_size=3),
)

# For each field, values of the shapes the compose schema allows.
VALID_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "image": st.sampled_from(
        ["nginx:1.25", "registry:2", "a/b", "docker.io/library/x", "${VAR}"]
    ),
    "command": st.one_of(plausible_strings, st.lists(plausible_strings, max_size=3)),
    "entrypoint": st.one_of(plausible_strings, st.lists(plausible_strings, max_size=3)),
    "environment": key_values,
    "labels": key_values,
    "ports": st.lists(
        st.one_of(
            st.sampled_from(["80", "8080:80", "20000-20001:80-81", "53:53/udp"]),
            port_numbers,
            st.fixed_dictionaries(
                {"target": port_numbers},
                optional={
                    "published": port_numbers,
                    "mode": st.sampled_from(["host", "ingress"]),
                    "protocol": st.sampled_from(["tcp", "udp"]),
                },
            ),
        ),
        max_size=3,
        unique_by=str,
    ),
    "volumes": st.lists(
        st.one_of(
            st.sampled_from(["/anon", "data:/data", "./x:/x:ro", "/h:/c:rslave"]),
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["bind", "volume", "tmpfs"]),
                    "target": st.just("/t"),
                },
                optional={
                    "source": st.sampled_from(["data", "/src", "./rel"]),
                    "read_only": st.booleans(),
                },
            ),
        ),
        max_size=3,
    ),
    "networks": st.one_of(
        st.lists(names, max_size=2, unique=True),
        st.dictionaries(
            names,
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"aliases": st.lists(plausible_strings, max_size=2)}
                ),
            ),
            max_size=2,
        ),
    ),
    "configs": st.lists(
        st.one_of(
            st.just("c"),
            st.fixed_dictionaries(
                {"source": st.just("c")},
                optional={"target": st.just("/etc/c"), "mode": st.integers(0, 0o777)},
            ),
        ),
        max_size=2,
    ),
    "secrets": st.lists(st.sampled_from(["s", "c"]), max_size=2),
    "healthcheck": st.fixed_dictionaries(
        {},
        optional={
            "test": st.one_of(
                plausible_strings, st.lists(plausible_strings, max_size=3)
            ),
            "interval": durations,
            "retries": st.integers(0, 5),
            "disable": st.booleans(),
        },
    ),
    "stop_grace_period": durations,
    "tty": st.booleans(),
    "read_only": st.booleans(),
    "init": st.booleans(),
    "extra_hosts": st.one_of(
        st.lists(st.sampled_from(["h:10.0.0.1", "x=::1", "bad"]), max_size=2),
        st.dictionaries(
            st.sampled_from(["h", "g"]), st.sampled_from(["10.0.0.1"]), max_size=2
        ),
    ),
    "cap_add": st.lists(
        st.sampled_from(["NET_ADMIN", "chown", "ALL", "CAP_SYS_TIME"]),
        max_size=3,
        unique=True,
    ),
    "cap_drop": st.lists(
        st.sampled_from(["NET_RAW", "ALL", "chown"]), max_size=3, unique=True
    ),
    "ulimits": st.dictionaries(
        st.sampled_from(["nofile", "nproc"]),
        st.one_of(
            st.integers(0, 99999),
            st.fixed_dictionaries(
                {"soft": st.integers(0, 9), "hard": st.integers(0, 9)}
            ),
        ),
        max_size=2,
    ),
    "sysctls": key_values,
    "logging": st.fixed_dictionaries(
        {},
        optional={
            "driver": st.just("json-file"),
            "options": st.dictionaries(st.just("max-size"), st.just("1m")),
        },
    ),
    "hostname": plausible_strings,
    "user": st.sampled_from(["1000", "nobody", "1000:1000"]),
    "working_dir": st.sampled_from(["/app", "/"]),
    "stop_signal": st.sampled_from(["SIGTERM", "SIGQUIT"]),
    "isolation": st.sampled_from(["default", "process"]),
    "dns": st.one_of(st.just("8.8.8.8"), st.lists(st.just("1.1.1.1"), max_size=2)),
    "dns_search": st.one_of(
        st.just("example.com"), st.lists(st.just("a.b"), max_size=2)
    ),
    "env_file": st.one_of(st.just("./e.env"), st.lists(st.just("./e.env"), max_size=1)),
    "privileged": st.booleans(),
    "build": st.just("."),
    "x-note": values,
    "restart": st.sampled_from(
        ["no", "always", "on-failure", "on-failure:3", "unless-stopped", "sometimes"]
    ),
}
VALID_DEPLOY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "mode": st.sampled_from(
        ["replicated", "global", "replicated-job", "global-job", "other"]
    ),
    "replicas": st.integers(-2, 5),
    "placement": st.fixed_dictionaries(
        {},
        optional={
            "constraints": st.lists(plausible_strings, max_size=2),
            "max_replicas_per_node": st.integers(0, 3),
        },
    ),
    "resources": st.fixed_dictionaries(
        {},
        optional={
            "limits": st.fixed_dictionaries(
                {},
                optional={
                    "cpus": st.sampled_from(["0.5", "2", "x"]),
                    "memory": st.sampled_from(["64M", "1g", "lots"]),
                },
            )
        },
    ),
    "restart_policy": st.fixed_dictionaries(
        {},
        optional={
            "condition": st.sampled_from(["any", "on-failure", "none"]),
            "delay": durations,
            "max_attempts": st.integers(0, 5),
        },
    ),
    "update_config": st.fixed_dictionaries(
        {},
        optional={
            "parallelism": st.integers(0, 3),
            "delay": durations,
            "order": st.sampled_from(["start-first", "stop-first"]),
        },
    ),
    "endpoint_mode": st.sampled_from(["vip", "dnsrr"]),
    "labels": key_values,
    "rollback_config": st.fixed_dictionaries(
        {}, optional={"parallelism": st.integers(0, 3), "monitor": durations}
    ),
}


@st.composite
def compose_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-shaped documents, with random values mixed in now and then."""

    # Half the documents are well-shaped throughout; the others get a random
    # value in about one field of ten.
    noisy = draw(st.booleans())

    def field_value(table: dict[str, st.SearchStrategy[Any]], field: str) -> Any:
        if field in table and not (noisy and draw(st.integers(0, 9)) == 0):
            return draw(table[field])
        return draw(values)

    services = {}
    service_names = st.sampled_from(["web", "db", "api", "w-1", "x_" if noisy else "x"])
    for name in draw(st.lists(service_names, max_size=3, unique=True)):
        fields = draw(
            st.lists(st.sampled_from(SERVICE_FIELDS), max_size=8, unique=True)
        )
        service = {"image": field_value(VALID_FIELD_VALUES, "image")}
        service.update(
            {field: field_value(VALID_FIELD_VALUES, field) for field in fields}
        )
        if draw(st.booleans()):
            deploy_fields = draw(
                st.lists(st.sampled_from(DEPLOY_FIELDS), max_size=4, unique=True)
            )
            service["deploy"] = {
                f: field_value(VALID_DEPLOY_VALUES, f) for f in deploy_fields
            }
        services[name] = service

    document: dict[str, Any] = {"services": services}
    if draw(st.integers(0, 3)) > 0:
        document["networks"] = {"front": {"driver": "overlay"}, "back": None}
        document["volumes"] = {"data": None}
        document["configs"] = {"c": {"file": "./c"}}
        document["secrets"] = {"s": {"external": True}}
    for section in ("networks", "volumes", "configs", "secrets"):
        if noisy and draw(st.integers(0, 4)) == 0:
            document[section] = draw(st.dictionaries(names, values, max_size=2))
    if draw(st.booleans()):
        versions = ["3", "3.8", "3.13", ""] + (["3.0", "2", 3.9] if noisy else [])
        document["version"] = draw(st.sampled_from(versions))
    return document


def _dump(document: dict[str, Any], path: Path) -> None:
    with path.open("w", encoding="utf-8") as stream:
        yaml.safe_dump(document, stream, allow_unicode=True)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(document=compose_documents())
def test_loading_never_crashes_and_every_problem_is_located(
    document: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "stacks").mkdir()
        compose = root / "stacks" / "gen.yml"
        _dump(document, compose)
        (root / "stacks" / "c").write_text("config data")
        (root / "stacks" / "e.env").write_text("A=1\n# comment\nB\n")

        outcome: Stack | InvalidDesiredState
        try:
            outcome, warnings = load_stack(
                "gen", compose, state_dir=root, environ={"VAR": "v"}, read_dotenv=False
            )
        except InvalidDesiredState as invalid:
            outcome, warnings = invalid, []

    if isinstance(outcome, InvalidDesiredState):
        assert outcome.problems
        for problem in outcome.problems:
            assert problem.location.file == "stacks/gen.yml"
            assert problem.location.line is not None
            assert problem.location.line >= 1
            assert problem.message
        return

    stack = outcome
    for service in stack.services.values():
        assert service.spec["Name"] == service.name
        assert service.spec["TaskTemplate"]["ContainerSpec"]["Image"]
    for warning in warnings:
        assert warning.location.line is not None
