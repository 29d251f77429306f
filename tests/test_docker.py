"""docker/: the compose file parses, and every command in it (and the image's default commands) is a valid
`paris-node` invocation of the real command line. No Docker engine is needed: commands are parsed by the
click command built from the typer app (`make_context`), which checks names, options and values without
running anything."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from node.cli import app

try:  # typer >= 0.20 builds its commands on a copy of click that it vendors
    from typer._click.exceptions import UsageError
except ImportError:  # older typer: click itself
    from click.exceptions import UsageError

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
IGNORE = DOCKER / "Dockerfile.dockerignore"

NODES_PER_PROFILE = {"gpu": ["worker-1", "worker-2", "worker-3"],
                     "cpu": ["cpu-worker-1", "cpu-worker-2", "cpu-worker-3"]}
VARIANTS = {"cuda": "0", "cpu": "cpu"}  # Dockerfile VARIANT → the `--gpu` its default command uses
CHOICES = {"--role": {"auto", "expert", "router", "verifier", "seeder"}, "--log-format": {"text", "json"},
           "--preset": {"tiny", "small", "base", "large"}}


# ---- the validator -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli():
    return typer.main.get_command(app)


def parse(root, args: list[str]):
    """Parse `paris-node ARGS` down to the leaf command without invoking it and return its context; raises
    UsageError (no such command, no such option, a bad value, a missing required option)."""
    args = list(args)
    command, name, ctx = root, "paris-node", None
    while hasattr(command, "resolve_command"):  # a group
        # only the subcommand's name at the group level: our groups take no options of their own
        ctx = command.make_context(name, args[:1], parent=ctx, resilient_parsing=False)
        name, command, args = command.resolve_command(ctx, args)
        assert command is not None
    return command.make_context(name, args, parent=ctx, resilient_parsing=False)


def options(args: list[str], name: str) -> list[str]:
    """Every value given to option NAME (typer list options repeat the flag)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def option(args: list[str], name: str) -> str | None:
    values = options(args, name)
    assert len(values) <= 1, f"{name} given {len(values)} times in {args}"
    return values[0] if values else None


def test_validator_accepts_a_valid_invocation(cli):
    ctx = parse(cli, ["data", "synth", "--out", "/tmp/x", "--clips", "5"])
    assert ctx.command.name == "synth" and ctx.params["clips"] == 5


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["join", "--gpu", "cpu", "--no-such-option", "1"],
    ["data", "synth", "--out", "/tmp/x", "--clips", "many"],   # not an int
    ["data", "synth", "--out", "/tmp/x", "--bogus"],           # unknown option on a command that exists
    ["train-local", "--steps", "3"],                           # required options missing
    ["data"],                                                  # a group with no subcommand
], ids=["command", "join-option", "value", "option", "missing", "group"])
def test_validator_rejects_invalid_invocations(cli, args):
    with pytest.raises(UsageError):
        parse(cli, args)


# ---- compose.yaml --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target → (source, read_only) for the short volume syntax."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, "ro" in mode)
    return out


def test_services(services):
    expected = {"bootstrap", "dashboard", *(w for ws in NODES_PER_PROFILE.values() for w in ws)}
    assert set(services) == expected
    for profile, workers in NODES_PER_PROFILE.items():
        assert [s for s in services if profile in services[s].get("profiles", [])] == workers
    assert "profiles" not in services["bootstrap"] and "profiles" not in services["dashboard"]


def test_every_command_is_a_valid_invocation(cli, services):
    for name, service in services.items():
        command = service["command"]
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), \
            f"{name}: command must be a list of strings (quote numbers)"
        assert "entrypoint" not in service, f"{name} must keep the image's paris-node entrypoint"
        try:
            parse(cli, command)
        except UsageError as e:
            pytest.fail(f"{name}: `paris-node {shlex.join(command)}` is not valid: {e.format_message()}")
        # values the command checks only when it runs
        for opt, allowed in CHOICES.items():
            assert set(options(command, opt)) <= allowed, f"{name}: {opt} {options(command, opt)}"


def test_bootstrap_starts_the_swarm(services):
    boot = services["bootstrap"]
    args = boot["command"]
    assert args[0] == "join"
    assert option(args, "--initial-peers") is None and option(args, "--initial-peers-file") is None
    assert option(args, "--home") == "/data" and option(args, "--host") == "0.0.0.0"
    assert option(args, "--gpu") == "cpu"
    assert mounts(boot)["/data"] == ("boot-home", False)
    test = boot["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"} and "/data/node.json" in " ".join(test)
    port = option(args, "--port")
    assert any(p.split(":")[-1] == port for p in boot["ports"])
    assert all(p.startswith("127.0.0.1:") for p in boot["ports"]), "publish on the host's loopback only"


def test_peers_read_the_bootstrap_address_file(services):
    boot_volume = mounts(services["bootstrap"])["/data"][0]
    for name, service in services.items():
        if name == "bootstrap":
            continue
        args = service["command"]
        peers_file = option(args, "--initial-peers-file")
        assert peers_file is not None, name
        target = str(Path(peers_file).parent)
        assert mounts(service).get(target) == (boot_volume, True), \
            f"{name}: {peers_file} must be the bootstrap's home, mounted read-only"
        assert Path(peers_file).name == "node.json"
        assert service["depends_on"]["bootstrap"]["condition"] == "service_healthy", name


def test_workers(services):
    homes = {mounts(services["bootstrap"])["/data"][0]}
    for profile, workers in NODES_PER_PROFILE.items():
        for name in workers:
            w = services[name]
            args = w["command"]
            assert args[0] == "join" and option(args, "--home") == "/data", name
            assert option(args, "--host") == "0.0.0.0", f"{name} must be reachable by the other nodes"
            home = mounts(w)["/data"]
            assert not home[1] and home[0] not in homes, f"{name} needs a home volume of its own"
            homes.add(home[0])
            variant = w["build"]["args"]["VARIANT"]
            assert w["image"].endswith(f":{variant}")
            devices = w.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            if profile == "gpu":
                assert variant == "cuda" and option(args, "--gpu") == "0"
                assert [d["driver"] for d in devices] == ["nvidia"] and "gpu" in devices[0]["capabilities"]
            else:
                assert variant == "cpu" and option(args, "--gpu") == "cpu" and not devices


def test_dashboard(services):
    dash = services["dashboard"]
    assert dash["command"][0] == "status" and dash["tty"] is True
    assert "/data" not in mounts(dash), "the dashboard is a client and holds no data"


def test_nodes_stop_gracefully(services):
    # the daemon needs up to 30 s after SIGTERM for its final checkpoint; Docker's default is 10 s
    for name, service in services.items():
        if service["command"][0] == "join":
            m = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
            assert m and int(m.group(1)) > 30, name


# ---- Dockerfile ----------------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):  # comments and parser directives, also inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> dict:
    """Global ARG defaults and stages: name → (parent, [instructions])."""
    args, stages, current = {}, {}, None
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "ARG" and current is None:
            key, _, default = rest.partition("=")
            args[key] = default
        elif word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"<final {len(stages)}>"
            current = name
            stages[name] = (parts[0], [])
        else:
            assert current is not None, f"{word} before FROM"
            stages[current][1].append((word, rest))
    return {"args": args, "stages": stages, "final": current}


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def chain(df: dict, variant: str) -> list[tuple[str, str]]:
    """The instructions that make the final image for VARIANT, base stage first."""
    args = {**df["args"], "VARIANT": variant}
    stage, parts = df["final"], []
    while stage in df["stages"]:
        parent, body = df["stages"][stage]
        parts.insert(0, body)
        stage = expand(parent, args)
    parts.insert(0, [("FROM", stage)])
    return [i for body in parts for i in body]


def test_dockerfile_variants(dockerfile):
    assert dockerfile["args"]["VARIANT"] in VARIANTS
    for variant in VARIANTS:
        base = chain(dockerfile, variant)[0][1]
        assert ":" in base, f"{variant}: base image {base} has no tag"


def test_dockerfile_images_are_pinned(dockerfile):
    args = dockerfile["args"]
    for name, (parent, _) in dockerfile["stages"].items():
        image = expand(parent, {**args, "VARIANT": "cuda"})
        if image in dockerfile["stages"]:
            continue
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"stage {name}: pin {image} to a version"


def test_cuda_base_matches_the_torch_wheel(dockerfile):
    """The CUDA image's base carries the CUDA of the torch wheel it installs (the one pyproject pins, installed
    here): its NVIDIA_REQUIRE_CUDA is what the container toolkit checks against the host's driver."""
    import torch

    base = dockerfile["args"]["CUDA_BASE"]
    found = re.search(r":(\d+)\.(\d+)", base)
    assert found, f"CUDA_BASE {base} names no CUDA version"
    if torch.version.cuda is None:
        pytest.skip("this torch is a CPU build: it names no CUDA")
    assert ".".join(found.groups()) == ".".join(torch.version.cuda.split(".")[:2]), (base, torch.version.cuda)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dockerfile_final_image(cli, dockerfile, variant):
    steps = chain(dockerfile, variant)
    last = {}
    for word, rest in steps:
        last[word] = rest
    assert json.loads(last["ENTRYPOINT"]) == ["paris-node"]
    user = last["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert json.loads(last["VOLUME"]) == ["/data"]
    cmd = json.loads(last["CMD"])
    # ENTRYPOINT after CMD in the same chain would reset it; the CMD must come last
    assert [w for w, _ in steps if w in {"CMD", "ENTRYPOINT"}][-1] == "CMD"
    parse(cli, cmd)
    assert cmd[0] == "join" and option(cmd, "--gpu") == VARIANTS[variant] and option(cmd, "--home") == "/data"
    exposed = last["EXPOSE"].split("/")[0]
    assert option(cmd, "--port") == exposed


def test_compose_builds_with_the_dockerfile(services):
    for name, service in services.items():
        build = service["build"]
        assert build["context"] == ".." and build["dockerfile"] == "docker/Dockerfile", name
        assert build["args"]["VARIANT"] in VARIANTS


def test_build_context_is_small():
    # the context is the repository root: everything but what `pip install .` needs stays out
    lines = [ln.strip() for ln in IGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    for needed in ["pyproject.toml", "README.md", "protocol/", "swarm/", "expert/", "node/"]:
        assert f"!{needed}" in lines
