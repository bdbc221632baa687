"""The deployment files, checked without Docker: Dockerfile.api, Dockerfile.worker,
docker-compose.yml, .env.example, .dockerignore and docs/deploy.md.

Nothing here builds or runs a container. Each ``check_*`` function returns a list of problems
(empty when all is well); the ``test_*`` functions run them on the real files, and
``test_every_check_can_fail`` runs each one on a deliberately broken copy, so that none of
them is a tautology.

The sources of truth are the project itself: the setting names are the ones
``Settings.from_env`` reads, the commands must parse with ``depthfleet.cli.build_parser()``,
the health URLs must be routes of ``depthfleet.api.create_app()``, and the torch pins and
package folders come from pyproject.toml.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from depthfleet.cli import build_parser
from depthfleet.shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SETTING_NAME = re.compile(r"DEPTHFLEET_[A-Z0-9_]+")
LOCAL_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost)(?::(\d+))?(/[^'\"\s)]*)")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cpp|make|cmake|rustc|cargo)\b")


# ---------------------------------------------------------------------------------- parsing
def read(name: str) -> str:
    return (REPO / name).read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    found, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue  # comments (also inside continuations, as Docker drops them) and blanks
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, rest = buffer.strip().partition(" ")
        found.append((keyword.upper(), rest.strip()))
        buffer = ""
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (each starts with its FROM)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def command_argv(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: exec form (JSON) or shell form."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def healthcheck_argv(args: str) -> list[str]:
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", args, re.S)
    assert match, f"HEALTHCHECK without CMD: {args!r}"
    return command_argv(match.group(1))


def compose_test_argv(test: Any) -> list[str]:
    """A compose healthcheck ``test`` as an argv (CMD-SHELL and strings go through a shell)."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    return list(test[1:]) if test[0] == "CMD" else list(test)


def python_code(argv: list[str]) -> list[str]:
    """The programs given to ``python -c`` in an argv (looking inside ``sh -c`` too)."""
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shell_words(argv[2])
    return [argv[i + 1] for i, word in enumerate(argv[:-1])
            if word == "-c" and i > 0 and Path(argv[i - 1]).name.startswith("python")]


def shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


SHELL_OPERATORS = {"&&", "||", "|", ";", "&", "(", ")", "then", "do", "else", "exec"}


def depthfleet_commands(text: str, anywhere: bool = False) -> Iterator[list[str]]:
    """The arguments of every ``depthfleet ...`` command in shell text.

    By default only in command position (start, or after ``&&``, ``;``, ``then``...), so that
    ``useradd ... depthfleet`` is not taken for one; ``anywhere`` also finds it as an argument
    (``docker compose run --rm worker depthfleet weights``), for prose and code spans.
    """
    snippets = re.findall(r"(?<![\w/.:-])depthfleet\s[^\n`]*", text) if anywhere else [text]
    for snippet in snippets:
        words = shell_words(snippet)
        for i, word in enumerate(words):
            if word != "depthfleet" or not (anywhere or i == 0 or words[i - 1] in SHELL_OPERATORS):
                continue
            rest: list[str] = []
            for arg in words[i + 1:]:
                if arg in SHELL_OPERATORS or arg in (">", ">>", "<", "2>"):
                    break
                rest.append(arg)
            yield rest
            if anywhere:
                break


def env_of(value: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or list of KEY=VALUE) as a dict of strings."""
    if isinstance(value, Mapping):
        return {k: "" if v is None else str(v) for k, v in value.items()}
    return dict(item.partition("=")[::2] for item in value or [])


def dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stages(text)[-1]:
        if keyword == "ENV":
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                if sep:
                    env[key] = value
    return env


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


class MissingVariable(KeyError):
    pass


INTERPOLATION = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_]\w*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (${X}, ${X:-d}, ${X-d}, ${X:?e}, ${X?e}, $$), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg, current = match.group("op"), match.group("arg"), env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def required_variables(value: Any) -> set[str]:
    text = json.dumps(value)
    return {m.group("braced") for m in INTERPOLATION.finditer(text)
            if m.group("op") in (":?", "?")}


def setting_names() -> set[str]:
    """The variable names ``Settings.from_env`` actually reads (recorded, not hard-coded)."""

    class Recorder(Mapping[str, str]):
        def __init__(self) -> None:
            self.seen: set[str] = set()

        def __getitem__(self, key: str) -> str:
            self.seen.add(key)
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    recorder = Recorder()
    Settings.from_env(recorder)
    return {name for name in recorder.seen if name.startswith("DEPTHFLEET_")}


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def service_dockerfile(service: Mapping[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    return "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore ``patterns`` leave ``path`` (or a parent folder) out of the context."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = to_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


# ----------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(read("docker-compose.yml"))


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, str]:
    return {name: read(name) for name in DOCKERFILES}


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(read("pyproject.toml"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(read(".env.example"))


def make_app() -> Any:
    """The real API app. The factory is lazy: nothing connects to this dummy Redis."""
    from depthfleet.api import create_app

    return create_app(Settings(redis_url="redis://127.0.0.1:9/0",
                               api_keys={"deploy-test-key": "deploy-test"}))


# ----------------------------------------------------------------------------------- checks
def check_setting_names(texts: Mapping[str, str], known: set[str]) -> list[str]:
    """Every DEPTHFLEET_* name in the files is a setting that Settings.from_env reads."""
    return [f"{name}: {var} is not a DepthFleet setting"
            for name, text in texts.items()
            for var in sorted(set(SETTING_NAME.findall(text)) - known)]


def check_cli_commands(texts: Mapping[str, str], compose: Mapping[str, Any]) -> list[str]:
    """Every `depthfleet ...` in the files, and every CMD / compose command, parses."""
    invocations: list[tuple[str, list[str]]] = []
    for name, text in texts.items():
        if name.startswith("Dockerfile"):
            for keyword, args in instructions(text):
                if keyword in ("CMD", "ENTRYPOINT") and args.startswith("["):
                    argv = command_argv(args)
                    if argv and argv[0] == "depthfleet":
                        invocations.append((f"{name} {keyword}", argv[1:]))
                    continue
                if keyword in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"):
                    invocations += [(f"{name} {keyword}", a) for a in depthfleet_commands(args)]
        else:
            invocations += [(name, a) for a in depthfleet_commands(text, anywhere=True)]
    for service_name, service in compose["services"].items():
        command = service.get("command")
        if command is None:
            continue
        argv = shell_words(command) if isinstance(command, str) else list(command)
        if argv and argv[0] == "depthfleet":
            invocations.append((f"compose service {service_name}", argv[1:]))
    problems = []
    parser = build_parser()
    for where, argv in invocations:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code != 0 or not {"-h", "--help"} & set(argv):
                problems.append(f"{where}: `depthfleet {' '.join(argv)}` does not parse")
    if not invocations:
        problems.append("no depthfleet command found at all")
    return problems


def check_images_run_the_right_command(dockerfiles: Mapping[str, str], compose: Mapping[str, Any]
                                       ) -> list[str]:
    """The API image serves on all interfaces on the port compose publishes; the worker works."""
    problems = []
    expected = {"Dockerfile.api": "api", "Dockerfile.worker": "worker"}
    for name, text in dockerfiles.items():
        cmds = [args for keyword, args in stages(text)[-1] if keyword == "CMD"]
        if not cmds or not cmds[-1].startswith("["):
            problems.append(f"{name}: the final stage needs an exec-form CMD (so SIGTERM reaches "
                            "the process)")
            continue
        argv = command_argv(cmds[-1])
        if argv[:2] != ["depthfleet", expected[name]]:
            problems.append(f"{name}: CMD is {argv}, expected `depthfleet {expected[name]} ...`")
            continue
        args = build_parser().parse_args(argv[1:])
        if expected[name] == "api":
            if args.host != "0.0.0.0":
                problems.append(f"{name}: the API listens on {args.host}, unreachable from outside")
            for svc_name, svc in compose["services"].items():
                if service_dockerfile(svc) == name:
                    targets = {str(p).rsplit(":", 1)[-1].split("/")[0]
                               for p in svc.get("ports", [])}
                    if str(args.port) not in targets:
                        problems.append(f"compose {svc_name}: ports {svc.get('ports')} do not "
                                        f"publish the container port {args.port}")
    return problems


def check_health_routes(dockerfiles: Mapping[str, str], compose: Mapping[str, Any], app: Any
                        ) -> list[str]:
    """API health checks ask for routes that exist, need no API key, on the port it serves."""
    checks: list[tuple[str, list[str]]] = []
    for name, text in dockerfiles.items():
        if name == "Dockerfile.api":
            checks += [(name, healthcheck_argv(args))
                       for keyword, args in stages(text)[-1] if keyword == "HEALTHCHECK"]
    for svc_name, svc in compose["services"].items():
        if service_dockerfile(svc) == "Dockerfile.api" and "healthcheck" in svc:
            checks.append((f"compose {svc_name}", compose_test_argv(svc["healthcheck"]["test"])))
    cmd = [args for keyword, args in stages(dockerfiles["Dockerfile.api"])[-1] if keyword == "CMD"]
    port = build_parser().parse_args(command_argv(cmd[-1])[1:]).port if cmd else None
    problems = [] if checks else ["no API health check found"]
    adapter = app.url_map.bind("localhost")
    for where, argv in checks:
        urls = LOCAL_URL.findall(" ".join(argv))
        if not urls:
            problems.append(f"{where}: no local URL in health check {argv}")
        for url_port, path in urls:
            if url_port and int(url_port) != port:
                problems.append(f"{where}: checks port {url_port} but the API serves {port}")
            try:
                adapter.match(path, method="GET")
            except Exception as exc:  # NotFound, MethodNotAllowed, RequestRedirect
                problems.append(f"{where}: GET {path} is not an API route ({type(exc).__name__})")
                continue
            with app.test_request_context(path):
                try:
                    app.preprocess_request()  # runs authentication, not the view
                except Exception as exc:
                    problems.append(f"{where}: GET {path} needs credentials ({exc})")
    return problems


def check_healthcheck_code(dockerfiles: Mapping[str, str], compose: Mapping[str, Any]) -> list[str]:
    """Every `python -c` program in a health check at least compiles."""
    programs = []
    for name, text in dockerfiles.items():
        programs += [(name, code) for keyword, args in instructions(text)
                     if keyword == "HEALTHCHECK" for code in python_code(healthcheck_argv(args))]
    for svc_name, svc in compose["services"].items():
        if "healthcheck" in svc:
            programs += [(f"compose {svc_name}", code)
                         for code in python_code(compose_test_argv(svc["healthcheck"]["test"]))]
    problems = []
    for where, code in programs:
        try:
            compile(code, where, "exec")
        except SyntaxError as exc:
            problems.append(f"{where}: health check program does not compile: {exc}")
    return problems


def check_worker_scalable(compose: Mapping[str, Any]) -> list[str]:
    """`docker compose up --scale worker=N` works: nothing in the worker is per-container fixed."""
    worker = compose["services"].get("worker")
    if worker is None:
        return ["no worker service"]
    problems = [f"worker: `{key}` prevents --scale (or collides between replicas)"
                for key in ("container_name", "ports", "hostname") if key in worker]
    if service_dockerfile(worker) != "Dockerfile.worker":
        problems.append("worker is not built from Dockerfile.worker")
    if seconds(worker.get("stop_grace_period", "10s")) < 60:
        problems.append("worker: stop_grace_period under 60 s cuts Celery's warm shutdown short")
    if "cpus" not in worker.get("deploy", {}).get("resources", {}).get("limits", {}):
        problems.append("worker: no deploy.resources.limits.cpus")
    return problems


def check_redis(compose: Mapping[str, Any]) -> list[str]:
    redis = compose["services"].get("redis")
    if redis is None:
        return ["no redis service"]
    command = redis.get("command") or []
    words = shell_words(command) if isinstance(command, str) else [str(w) for w in command]
    options = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    problems = [f"redis: needs {option} {value}" for option, value in (
        ("--appendonly", "yes"), ("--appendfsync", "everysec"),
        ("--maxmemory-policy", "noeviction")) if options.get(option) != value]
    if not any(str(v).endswith(":/data") for v in redis.get("volumes", [])):
        problems.append("redis: /data (the AOF) is not on a volume")
    if "healthcheck" not in redis:
        problems.append("redis: no healthcheck")
    return problems


def check_depends_on(compose: Mapping[str, Any], dockerfiles: Mapping[str, str]) -> list[str]:
    """Dependencies name real services, with conditions those services can meet."""
    services = compose["services"]
    problems = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            condition = (spec or {}).get("condition", "service_started")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
                continue
            target = services[dep]
            if condition == "service_healthy":
                image_check = any(k == "HEALTHCHECK" for k, _ in instructions(
                    dockerfiles.get(service_dockerfile(target) or "", "")))
                if "healthcheck" not in target and not image_check:
                    problems.append(f"{name}: waits for {dep} to be healthy, which has no check")
            elif condition == "service_completed_successfully":
                if str(target.get("restart", "no")) not in ("no", "on-failure"):
                    problems.append(f"{name}: waits for one-shot {dep}, which restarts forever")
            elif condition != "service_started":
                problems.append(f"{name}: unknown depends_on condition {condition!r}")
    return problems


def check_dockerfile(name: str, text: str) -> list[str]:
    """Multi-stage on python:3.11-slim, venv-only final stage, non-root, no compilers."""
    all_stages = stages(text)
    problems = []
    if len(all_stages) < 2:
        problems.append(f"{name}: not a multi-stage build")
    for stage in all_stages:
        image = stage[0][1].split()[0]
        if not image.startswith("python:3.11-slim"):
            problems.append(f"{name}: stage based on {image}, expected python:3.11-slim")
    final = all_stages[-1]
    users = [(i, args) for i, (keyword, args) in enumerate(final) if keyword == "USER"]
    if not users:
        problems.append(f"{name}: the final stage never leaves root (no USER)")
    else:
        user = users[-1][1]
        if user.split(":")[0] in ("root", "0"):
            problems.append(f"{name}: the final USER is {user}")
    copies = [args for keyword, args in final if keyword == "COPY"]
    if not any("--from=" in c and "/opt/venv" in c for c in copies):
        problems.append(f"{name}: the final stage does not copy the venv from the build stage")
    if any("--from=" not in c for c in copies):
        problems.append(f"{name}: the final stage copies from the build context, not the build "
                        "stage")
    for keyword, args in final:
        if keyword == "RUN" and re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", args) \
                and COMPILERS.search(args):
            problems.append(f"{name}: the final stage installs a compiler: {args[:80]}")
    for keyword in ("HEALTHCHECK", "CMD"):
        if not any(k == keyword for k, _ in final):
            problems.append(f"{name}: the final stage has no {keyword}")
    return problems


def check_torch_pins(dockerfiles: Mapping[str, str], pyproject: Mapping[str, Any]) -> list[str]:
    """torch is the `export` extra only; the worker image installs it as CPU torch from
    PyTorch's CPU index, same exact pins as pyproject.toml, first; the API image not at all."""
    pins = {}
    for requirement in pyproject["project"]["optional-dependencies"].get("export", []):
        match = re.fullmatch(r"(torch|torchvision)==([\w.]+)", requirement.replace(" ", ""))
        if match:
            pins[match.group(1)] = match.group(2)
    problems = [f"pyproject.toml: {p} is not pinned exactly in the export extra"
                for p in ("torch", "torchvision") if p not in pins]
    problems += [f"pyproject.toml: {r} is a dependency of every install, not of the export extra"
                 for r in pyproject["project"]["dependencies"]
                 if re.match(r"(torch|torchvision|timm)\b", r)]
    for package, version in pins.items():
        if not SpecifierSet(f"=={version}").contains(f"{version}+cpu"):
            problems.append(f"{package}=={version} would not accept the {version}+cpu build")
    for name, text in dockerfiles.items():
        runs = [args for keyword, args in instructions(text) if keyword == "RUN"]
        cpu = [i for i, args in enumerate(runs) if CPU_INDEX in args]
        if name == "Dockerfile.api":
            if cpu or any("torch==" in args for args in runs):
                problems.append(f"{name}: installs torch, which the API never uses")
            continue
        if not cpu:
            problems.append(f"{name}: torch is not installed from {CPU_INDEX}")
            continue
        words = shell_words(runs[cpu[0]])
        found = dict(w.split("==", 1) for w in words if w.startswith(("torch==", "torchvision==")))
        if found != pins:
            problems.append(f"{name}: CPU index installs {found}, pyproject.toml pins {pins}")
        later = [i for i, args in enumerate(runs)
                 if re.search(r"pip install\b.*(\s-r\s|\s\.(\s|$))", args) and i < cpu[0]]
        if later:
            problems.append(f"{name}: the project's dependencies are installed before CPU torch")
    return problems


def check_build_context(dockerfiles: Mapping[str, str], pyproject: Mapping[str, Any],
                        ignore: list[str]) -> list[str]:
    """The images copy every package folder, and .dockerignore keeps them (and only them) in."""
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    problems = []
    for name, text in dockerfiles.items():
        sources = set()
        for keyword, args in instructions(text):
            if keyword == "COPY" and "--from=" not in args:
                sources.update(w.rstrip("/") for w in shlex.split(args)[:-1]
                               if not w.startswith("--"))
        for folder in sorted(package_dirs - sources):
            problems.append(f"{name}: package folder {folder}/ is never copied into the image")
        for source in sorted(sources):
            if not any(REPO.glob(source)) and "*" not in source:
                problems.append(f"{name}: COPY {source}: no such file")
    needed = ["pyproject.toml"] + [
        str(path.relative_to(REPO)) for folder in package_dirs for path in (REPO / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts]
    problems += [f".dockerignore leaves out {path}, which the image needs"
                 for path in needed if dockerignore_excludes(ignore, path)]
    problems += [f".dockerignore must exclude {secret}" for secret in (".env", ".git", ".venv")
                 if not dockerignore_excludes(ignore, secret)]
    return problems


def check_cache_volume(compose: Mapping[str, Any], dockerfiles: Mapping[str, str]) -> list[str]:
    """Workers share one named volume, mounted where DEPTHFLEET_CACHE_DIR points, writable."""
    worker = compose["services"]["worker"]
    image_env = dockerfile_env(dockerfiles["Dockerfile.worker"])
    cache = env_of(worker.get("environment")).get("DEPTHFLEET_CACHE_DIR") \
        or image_env.get("DEPTHFLEET_CACHE_DIR")
    problems = []
    for name, text in dockerfiles.items():
        env = dockerfile_env(text)
        if "DEPTHFLEET_CACHE_DIR" not in env:
            problems.append(f"{name}: no ENV default for DEPTHFLEET_CACHE_DIR")
        elif not any(k == "RUN" and "chown" in a and env["DEPTHFLEET_CACHE_DIR"] in a
                     for k, a in stages(text)[-1]):
            problems.append(f"{name}: {env['DEPTHFLEET_CACHE_DIR']} is not created for the "
                            "non-root user (an empty named volume copies its ownership)")
    mounts = {}
    for volume in worker.get("volumes", []):
        if isinstance(volume, str):
            source, _, target = volume.partition(":")
            mounts[target.split(":")[0]] = source
        else:
            mounts[volume.get("target")] = volume.get("source")
    source = mounts.get(cache)
    if source is None:
        problems.append(f"worker: no volume mounted on the cache dir {cache}")
    elif source not in (compose.get("volumes") or {}):
        problems.append(f"worker: the cache mount {source} is not a named volume")
    return problems


def check_wiring(compose: Mapping[str, Any]) -> list[str]:
    """Redis and S3 URLs name compose services; the bucket the app uses is the one created."""
    services = compose["services"]
    problems = []
    for svc_name in ("api", "worker"):
        env = env_of(services[svc_name].get("environment"))
        for var in ("DEPTHFLEET_REDIS_URL", "DEPTHFLEET_S3_ENDPOINT", "DEPTHFLEET_STORAGE_URL"):
            if var not in env:
                problems.append(f"{svc_name}: {var} is not set")
        for var in ("DEPTHFLEET_REDIS_URL", "DEPTHFLEET_S3_ENDPOINT"):
            host = urlsplit(env.get(var, "")).hostname
            if host not in services:
                problems.append(f"{svc_name}: {var} points at {host!r}, not a compose service")
        bucket = urlsplit(env.get("DEPTHFLEET_STORAGE_URL", "")).netloc
        create = json.dumps(services.get("createbucket", {}).get("command", ""))
        if f"s3://{bucket}" not in create or env.get("DEPTHFLEET_S3_ENDPOINT", "?") not in create:
            problems.append(f"{svc_name}: createbucket does not create s3://{bucket} on "
                            f"{env.get('DEPTHFLEET_S3_ENDPOINT')}")
    return problems


def check_env_example(compose: Mapping[str, Any], example: Mapping[str, str]) -> list[str]:
    """`cp .env.example .env` gives a compose file that interpolates and settings that parse."""
    problems = [f".env.example does not set {var}, which docker-compose.yml requires"
                for var in sorted(required_variables(compose) - set(example))]
    if "DEPTHFLEET_API_KEYS" not in required_variables(compose["services"]["api"]):
        problems.append("api: DEPTHFLEET_API_KEYS is not marked required (${...:?...})")
    try:
        resolved = interpolate(compose, example)
    except MissingVariable as exc:
        return problems + [f"interpolation with .env.example fails: {exc}"]
    for svc_name in ("api", "worker"):
        env = env_of(resolved["services"][svc_name].get("environment"))
        try:
            settings = Settings.from_env(env)
        except Exception as exc:
            problems.append(f"{svc_name}: its environment does not parse: {exc}")
            continue
        if svc_name == "api" and not settings.api_keys:
            problems.append("api: no API keys, so only loopback clients would be served")
        if svc_name == "worker":
            cpus = resolved["services"]["worker"]["deploy"]["resources"]["limits"]["cpus"]
            if (settings.concurrency or 0) * (settings.threads or 0) != float(cpus):
                problems.append(f"worker: {settings.concurrency} processes x {settings.threads} "
                                f"threads do not match its {cpus} CPUs")
    return problems


# ------------------------------------------------------------------------------------ tests
def test_setting_names_are_real(dockerfiles: dict[str, str]) -> None:
    known = setting_names()
    assert {"DEPTHFLEET_REDIS_URL", "DEPTHFLEET_API_KEYS", "DEPTHFLEET_CACHE_DIR"} <= known
    texts = {**dockerfiles, **{n: read(n) for n in
                               ("docker-compose.yml", ".env.example", "docs/deploy.md")}}
    assert check_setting_names(texts, known) == []


def test_cli_commands_parse(dockerfiles: dict[str, str], compose: dict[str, Any]) -> None:
    texts = {**dockerfiles, "docs/deploy.md": read("docs/deploy.md")}
    assert check_cli_commands(texts, compose) == []


def test_images_run_the_right_command(dockerfiles: dict[str, str], compose: dict[str, Any]
                                      ) -> None:
    assert check_images_run_the_right_command(dockerfiles, compose) == []


def test_health_checks_hit_public_api_routes(dockerfiles: dict[str, str], compose: dict[str, Any]
                                             ) -> None:
    assert check_health_routes(dockerfiles, compose, make_app()) == []


def test_health_check_programs_compile(dockerfiles: dict[str, str], compose: dict[str, Any]
                                       ) -> None:
    assert check_healthcheck_code(dockerfiles, compose) == []


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    assert check_worker_scalable(compose) == []


def test_redis_is_durable(compose: dict[str, Any]) -> None:
    assert check_redis(compose) == []


def test_depends_on(compose: dict[str, Any], dockerfiles: dict[str, str]) -> None:
    assert check_depends_on(compose, dockerfiles) == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str, dockerfiles: dict[str, str]) -> None:
    assert check_dockerfile(name, dockerfiles[name]) == []


def test_torch_pins_match_pyproject(dockerfiles: dict[str, str], pyproject: dict[str, Any]
                                    ) -> None:
    assert check_torch_pins(dockerfiles, pyproject) == []


def test_build_context(dockerfiles: dict[str, str], pyproject: dict[str, Any]) -> None:
    assert check_build_context(dockerfiles, pyproject, read(".dockerignore").splitlines()) == []


def test_cache_volume(compose: dict[str, Any], dockerfiles: dict[str, str]) -> None:
    assert check_cache_volume(compose, dockerfiles) == []


def test_wiring(compose: dict[str, Any]) -> None:
    assert check_wiring(compose) == []


def test_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    assert check_env_example(compose, env_example) == []


def test_every_check_can_fail(compose: dict[str, Any], dockerfiles: dict[str, str],
                              pyproject: dict[str, Any], env_example: dict[str, str]) -> None:
    """Each check, given a broken copy of the real files, reports a problem."""
    worker, api = "Dockerfile.worker", "Dockerfile.api"

    def broken_compose(edit: Any) -> dict[str, Any]:
        data = copy.deepcopy(compose)
        edit(data)
        return data

    def broken_files(name: str, old: str, new: str) -> dict[str, str]:
        assert old in dockerfiles[name], old
        return {**dockerfiles, name: dockerfiles[name].replace(old, new)}

    ignore = read(".dockerignore").splitlines()
    known = setting_names()
    bad_cases = {
        "unknown setting": check_setting_names({"x": "DEPTHFLEET_NO_SUCH_THING=1"}, known),
        "unknown flag": check_cli_commands(
            {worker: 'CMD ["depthfleet", "worker", "--no-such-flag"]'}, compose),
        "unknown subcommand": check_cli_commands({"docs": "run `depthfleet serve --port 1`"},
                                                 compose),
        "api on loopback": check_images_run_the_right_command(
            broken_files(api, '"0.0.0.0"', '"127.0.0.1"'), compose),
        "port not published": check_images_run_the_right_command(dockerfiles, broken_compose(
            lambda d: d["services"]["api"].update(ports=["8000:9000"]))),
        "missing route": check_health_routes(dockerfiles, broken_compose(
            lambda d: d["services"]["api"]["healthcheck"].update(
                test=["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen("
                      "'http://127.0.0.1:8000/ready')"])), make_app()),
        "route needs a key": check_health_routes(dockerfiles, broken_compose(
            lambda d: d["services"]["api"]["healthcheck"].update(
                test=["CMD-SHELL", "python -c \"import urllib.request as u; "
                      "u.urlopen('http://127.0.0.1:8000/v1/jobs/abc')\""])), make_app()),
        "wrong health port": check_health_routes(
            broken_files(api, "127.0.0.1:8000/healthz", "127.0.0.1:8080/healthz"),
            compose, make_app()),
        "broken probe code": check_healthcheck_code(
            broken_files(worker, "sys.exit(0 if", "sys.exit(0 iff"), compose),
        "worker container_name": check_worker_scalable(broken_compose(
            lambda d: d["services"]["worker"].update(container_name="worker"))),
        "worker ports": check_worker_scalable(broken_compose(
            lambda d: d["services"]["worker"].update(ports=["9000:9000"]))),
        "short grace": check_worker_scalable(broken_compose(
            lambda d: d["services"]["worker"].update(stop_grace_period="10s"))),
        "redis evicts": check_redis(broken_compose(
            lambda d: d["services"]["redis"].update(command=[
                "redis-server", "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory-policy", "allkeys-lru"]))),
        "redis without AOF": check_redis(broken_compose(
            lambda d: d["services"]["redis"].update(command="redis-server"))),
        "unknown dependency": check_depends_on(broken_compose(
            lambda d: d["services"]["worker"].update(depends_on={"postgres": {
                "condition": "service_started"}})), dockerfiles),
        "unhealthy dependency": check_depends_on(broken_compose(
            lambda d: d["services"]["redis"].pop("healthcheck")), dockerfiles),
        "root user": check_dockerfile(worker, dockerfiles[worker].replace(
            "USER depthfleet", "USER root")),
        "single stage": check_dockerfile(worker, "FROM python:3.11-slim\nUSER app\n"
                                         "HEALTHCHECK CMD true\nCMD [\"depthfleet\"]\n"),
        "compiler": check_dockerfile(api, dockerfiles[api].replace(
            "USER depthfleet", "RUN apt-get install -y gcc\nUSER depthfleet")),
        "other base": check_dockerfile(api, dockerfiles[api].replace(
            "FROM python:3.11-slim\n", "FROM python:3.12\n")),
        "torch pin drift": check_torch_pins(
            broken_files(worker, "torch==2.14.1 ", "torch==2.14.0 "), pyproject),
        "torch after the rest": check_torch_pins(broken_files(
            worker, "RUN --mount=type=cache,target=/root/.cache/pip \\\n    if [",
            "RUN pip install -r /tmp/requirements.txt\nRUN --mount=type=cache,target=/root/"
            ".cache/pip \\\n    if ["), pyproject),
        "torch from PyPI": check_torch_pins(
            broken_files(worker, f"--index-url {CPU_INDEX} ", ""), pyproject),
        "torch in the API": check_torch_pins(broken_files(
            api, "RUN python -m venv /opt/venv\n",
            f"RUN python -m venv /opt/venv\nRUN pip install --index-url {CPU_INDEX} torch==2.14.1\n"),
            pyproject),
        "torch for every install": check_torch_pins(dockerfiles, {"project": {
            **pyproject["project"],
            "dependencies": [*pyproject["project"]["dependencies"], "torch==2.14.1"]}}),
        "package not copied": check_build_context(
            broken_files(worker, "COPY shared ./shared\n", ""), pyproject, ignore),
        "package ignored": check_build_context(dockerfiles, pyproject, ignore + ["shared"]),
        "secrets in context": check_build_context(
            dockerfiles, pyproject, [p for p in ignore if p.strip() != ".env"]),
        "cache not mounted": check_cache_volume(broken_compose(
            lambda d: d["services"]["worker"].update(volumes=[])), dockerfiles),
        "cache not writable": check_cache_volume(compose, broken_files(
            worker, "chown depthfleet:depthfleet /var/cache/depthfleet", "true")),
        "wrong redis host": check_wiring(broken_compose(
            lambda d: d["services"]["api"]["environment"].update(
                DEPTHFLEET_REDIS_URL="redis://cache:6379/0"))),
        "other bucket": check_wiring(broken_compose(
            lambda d: d["services"]["worker"]["environment"].update(
                DEPTHFLEET_STORAGE_URL="s3://elsewhere/"))),
        "required var missing": check_env_example(
            compose, {k: v for k, v in env_example.items() if k != "AWS_SECRET_ACCESS_KEY"}),
        "bad api keys": check_env_example(compose, {**env_example,
                                                    "DEPTHFLEET_API_KEYS": "no-colon"}),
        "cpu mismatch": check_env_example(compose, {**env_example, "DEPTHFLEET_THREADS": "4"}),
    }
    silent = [case for case, problems in bad_cases.items() if not problems]
    assert silent == [], f"these checks did not notice the breakage: {silent}"
