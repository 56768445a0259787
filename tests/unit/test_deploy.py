"""deploy/: the systemd unit passes systemd's own checks and keeps its promises (notify, reload, drain
time, hardening); the example config lists every setting at its default and loads."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wsd.server.control.config import SETTINGS, TABLES, Config, build_config, load_toml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "wsd.service"
EXAMPLE = DEPLOY / "wsd.toml"
PLANNED_MARKER = "# ==== Planned settings"
LAME_DUCK_DEFAULT_S = 5.0  # issue 11's default; not a Config field yet
SUPERVISOR_KILL_GRACE_S = 5.0  # Supervisor.drain: stop_deadline = window + stop_timeout + 5


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_unit_is_a_notify_service_that_reloads_with_sighup_and_drains_on_sigterm():
    unit = unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the supervisor only: it drains the workers
    assert unit["ExecStart"][0].split()[1:] == ["serve", "--config", "/etc/wsd/wsd.toml"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    assert unit["User"] == ["wsd"]


def test_stop_timeout_covers_a_whole_drain_with_the_default_settings():
    config = Config()
    needed = LAME_DUCK_DEFAULT_S + config.drain_window + config.stop_timeout + SUPERVISOR_KILL_GRACE_S
    assert seconds(unit_settings()["TimeoutStopSec"][0]) > needed


def test_unit_hardening_keeps_what_wsd_needs():
    unit = unit_settings()
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RemoveIPC"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    families = unit["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)  # doorbells, admin socket, ports
    assert "ProcSubset" not in unit  # psutil reads /proc/stat
    assert unit["RuntimeDirectory"] == ["wsd"]
    example = load_toml(str(EXAMPLE))
    assert example["admin_socket"].startswith("/run/wsd/")  # writable under ProtectSystem=strict


systemd_analyze = shutil.which("systemd-analyze")


@pytest.mark.skipif(systemd_analyze is None, reason="systemd-analyze not installed (Debian package systemd)")
def test_systemd_accepts_the_unit_and_rates_its_exposure_low(tmp_path):
    # verify wants ExecStart's binary to exist: point it at the installed wsd.
    wsd = Path(sys.executable).with_name("wsd")
    unit = tmp_path / "wsd.service"
    unit.write_text(UNIT.read_text().replace("/opt/wsd/bin/wsd", str(wsd)))
    verify = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert "wsd.service" not in verify.stderr, verify.stderr  # no warning about our unit
    security = subprocess.run([systemd_analyze, "security", "--offline=yes", str(unit)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    match = re.search(r"Overall exposure level for wsd\.service: (\d+\.\d+)", security.stdout)
    assert match, security.stdout[-2000:] + security.stderr
    assert float(match[1]) <= 2.0, security.stdout  # "OK"; an unhardened service rates 9.6


# -- the example config ---------------------------------------------------------------------------


def example_parts() -> tuple[str, str]:
    text = EXAMPLE.read_text()
    assert PLANNED_MARKER in text
    current, planned = text.split(PLANNED_MARKER, 1)
    return current, planned.split("\n", 1)[1]


def commented_settings(text: str) -> dict[str, object]:
    """The `# key = value` lines of `text`, uncommented and parsed (headings and prose skipped)."""
    settings: dict[str, object] = {}
    table = None
    for line in text.splitlines():
        heading = re.fullmatch(r"# \[(\w+)\]", line)
        if heading:
            table = heading[1]
            continue
        match = re.fullmatch(r"#? ?([a-z_]+) = (.+?)(\s+#.*)?", line)
        if match:
            value = tomllib.loads(f"v = {match[2]}")["v"]
            settings[f"{table}.{match[1]}" if table else match[1]] = value
    return settings


def setting_names(listed: dict[str, object]) -> dict[str, object]:
    """`auth.secret` → `auth_secret`: the keys of a table under the names of their settings."""
    named = {}
    for key, value in listed.items():
        table, _, name = key.rpartition(".")
        named[TABLES[table][name] if table else name] = value
    return named


def test_example_lists_every_setting_of_this_version_at_its_default():
    current, _ = example_parts()
    listed = setting_names(commented_settings(current))
    defaults = Config()
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(listed) == fields, f"missing: {fields - set(listed)}, unknown: {set(listed) - fields}"
    # Settings that are off by default (None, or an empty list) can only be shown with an example value.
    examples_not_defaults = {"admin_socket", "workers", "public_channels", "cluster"} | {
        name for name, spec in SETTINGS.items() if spec.optional
    }
    for name, value in listed.items():
        if name not in examples_not_defaults:
            assert value == getattr(defaults, name), name


def test_example_loads_as_is_and_with_every_current_setting_uncommented(tmp_path):
    config = build_config(load_toml(str(EXAMPLE)), {})
    assert config.admin_socket == "/run/wsd/wsd.sock"
    current, _ = example_parts()
    # Uncomment every setting and table heading, but the alternatives (`# or: ...`) to a setting
    # above them: auth takes one key source, the API one key.
    setting_or_table = re.compile(r"^# ([a-z_]+ = |\[\w+\]$)")
    uncommented = "\n".join(
        line if "# or:" in line else setting_or_table.sub(r"\1", line) for line in current.splitlines()
    )
    path = tmp_path / "wsd.toml"
    path.write_text(uncommented)
    config = build_config(load_toml(str(path)), {})
    config.validate()
    assert config.auth_secret_file == "/etc/wsd/auth-secret" and config.auth_audience == "wsd"


def test_planned_settings_stay_commented_and_name_their_issue():
    _, planned = example_parts()
    assert not [line for line in planned.splitlines() if line and not line.startswith("#")]
    keys = commented_settings(planned)
    known = {f.name for f in dataclasses.fields(Config)}
    landed = [name for name in keys if name in known]
    assert not landed, f"{landed} are settings now: move them above the planned marker"
    for heading in re.findall(r"^# -- (.+?) -+$", planned, flags=re.M):
        assert heading.startswith("issue "), heading
