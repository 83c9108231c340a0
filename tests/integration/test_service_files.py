"""The systemd unit, the Dockerfile and the lock files pass the checks operators rely on.

systemd-analyze and hadolint are real tools (`.ci/run` installs them); each check is also
run once on a deliberately broken copy, so that it is known to be able to fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "flowd.service"
DOCKERFILE = ROOT / "Dockerfile"
MAX_EXPOSURE = 2.0
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|DATABASE_URL", re.IGNORECASE)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (.ci/run installs it)")
    return path


def _verify(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` in a root holding the unit, its binaries and systemd's units
    (so that it checks the unit, not whether flowd is installed on this machine)."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    flowd = root / "usr/local/bin/flowd"
    flowd.write_text("#!/bin/sh\n")
    flowd.chmod(0o755)
    shutil.copy2("/bin/kill", root / "bin/kill")
    (root / "etc/systemd/system/flowd.service").write_text(unit_text)
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", f"--root={root}", "flowd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (result.stdout + result.stderr).strip()


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    """The unit is valid for this systemd; a typo'd directive would be reported."""
    assert _verify(UNIT.read_text(), tmp_path / "good") == ""
    broken = UNIT.read_text().replace("[Service]\n", "[Service]\nRestartt=always\n")
    assert "Restartt" in _verify(broken, tmp_path / "broken")


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return float(found[1])


def test_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=yes` scores the sandbox 2.0 or lower (bare: 9.6)."""
    assert _exposure(UNIT) <= MAX_EXPOSURE
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/usr/local/bin/flowd run\n")
    assert _exposure(bare) > MAX_EXPOSURE


def test_unit_promises() -> None:
    """What README promises of the unit: notify + watchdog, restarts that stop on a bad
    config (exit 2), a stop timeout above the drain, reload by SIGHUP, secrets by credential."""
    text = UNIT.read_text()

    def values(key: str) -> list[str]:
        return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)

    assert values("Type") == ["notify"]
    assert values("Restart") == ["on-failure"]
    assert values("RestartPreventExitStatus") == ["2"]
    assert values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert values("StartLimitIntervalSec")
    assert values("StartLimitBurst")
    assert text.index("StartLimitBurst") < text.index("[Service]")
    assert int(values("TimeoutStopSec")[0].removesuffix("s")) > 25  # FLOWD_SHUTDOWN_TIMEOUT_S
    assert values("WatchdogSec")
    credentials = {v.split(":")[0] for v in values("LoadCredential")}
    assert {"DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"} <= credentials
    assert not any(_SECRET_NAME.search(v) for v in values("Environment"))
    assert values("CapabilityBoundingSet") == [""]
    assert values("DynamicUser") == ["yes"]
    assert values("SystemCallFilter")[0] == "@system-service"


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes_at_style_threshold(tmp_path: Path) -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:3.11-slim\nRUN cd /tmp && pip install flowd\n")
    assert _hadolint(sloppy).returncode != 0


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def dockerfile_problems(dockerfile: str) -> list[str]:
    """What hadolint does not enforce and this project requires."""
    steps = _instructions(dockerfile)
    problems = []
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    problems += [f"base not pinned by digest: {f}" for f in froms if "@sha256:" not in f]
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    last = dict(final)
    if not re.fullmatch(r"\d+(:\d+)?", last.get("USER", "")) or last["USER"].startswith("0"):
        problems.append("the final stage needs a numeric non-root USER")
    for keyword, expected in (("ENTRYPOINT", ["flowd"]), ("CMD", ["run"])):
        try:
            if json.loads(last.get(keyword, "")) != expected:
                problems.append(f"{keyword} must be {json.dumps(expected)}")
        except ValueError:
            problems.append(f"{keyword} must be in exec form")
    healthcheck = last.get("HEALTHCHECK", "")
    if "CMD [" not in healthcheck:
        problems.append("HEALTHCHECK missing or not in exec form")
    if last.get("STOPSIGNAL") != "SIGTERM":
        problems.append("STOPSIGNAL SIGTERM missing")
    if "PYTHONUNBUFFERED=1" not in " ".join(r for k, r in final if k == "ENV"):
        problems.append("PYTHONUNBUFFERED=1 missing")
    for keyword, rest in steps:
        if keyword in ("ARG", "ENV"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", rest)
            problems += [
                f"{keyword} {n} looks like a secret" for n in names if _SECRET_NAME.search(n)
            ]
    if "--require-hashes" not in dockerfile:
        problems.append("dependencies not installed with --require-hashes")
    return problems


def test_dockerfile_policy() -> None:
    """Numeric non-root USER, exec form, HEALTHCHECK, STOPSIGNAL, digests, no secrets in
    ARG/ENV, hashed dependencies; a Dockerfile breaking each rule is caught."""
    assert dockerfile_problems(DOCKERFILE.read_text()) == []
    bad = (
        "FROM python:3.11-slim\nARG SUPABASE_SERVICE_ROLE_KEY\nENV API_TOKEN=x\nUSER flowd\n"
        "RUN pip install .\nENTRYPOINT flowd\nCMD run\n"
    )
    problems = dockerfile_problems(bad)
    for expected in (
        "digest",
        "multi-stage",
        "numeric non-root USER",
        "ENTRYPOINT",
        "CMD",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "PYTHONUNBUFFERED",
        "ARG SUPABASE_SERVICE_ROLE_KEY",
        "ENV API_TOKEN",
        "--require-hashes",
    ):
        assert any(expected in problem for problem in problems), (expected, problems)


def test_dockerignore_keeps_history_and_env_files_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".git", ".env", ".env.production", ".venv"):
        assert any(fnmatch(path, pattern) for pattern in patterns), path


def test_lock_files_pin_every_requirement_with_hashes() -> None:
    """Every line of the locks pins one version with at least one sha256, and the runtime
    lock covers each dependency of pyproject.toml."""
    import tomllib

    for name in ("requirements.lock", "requirements-build.lock"):
        text = (ROOT / name).read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", re.sub(r"(?m)^\s*#.*\n?", "", text).strip())
        assert entries
        for entry in entries:
            assert re.match(r"[A-Za-z0-9._-]+==\S+ ", entry), entry
            assert "--hash=sha256:" in entry, entry
    locked = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[ ;]", requirement)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in locked, requirement
