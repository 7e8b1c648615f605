"""The deployment files in deploy/server: compose file, env template, nginx config, timer."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import _ENV_NAMES, load_settings
from server.keys import load_keys

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "server"
SETTINGS = set(_ENV_NAMES.values())


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def _template() -> dict[str, str]:
    text = (DEPLOY / "facepay.env.example").read_text(encoding="utf-8")
    pairs = [line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line)]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), "a setting appears twice in the env template"
    return dict(pairs)


def _docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def test_compose_file_has_the_stack() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "server", "proxy"} <= set(services)
    assert "pgdata" in compose["volumes"] and "keystore" in compose["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])

    server = services["server"]
    assert server["build"]["dockerfile"] == "deploy/server/Dockerfile"
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert "ports" not in server, "the server is reached only through the proxy"
    assert server["environment"]["FACEPAY_ENV"] == "production"
    assert server["environment"]["FACEPAY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "./secrets:/run/facepay-keys:ro" in server["volumes"]
    key_store = server["environment"]["FACEPAY_KEY_STORE"]
    assert any(
        v.startswith("keystore:") and key_store.startswith(v.split(":")[1] + "/")
        for v in server["volumes"]
    ), "the shopper key store lives on its own volume"
    for name in ("MASTER", "AUDIT", "PHONE", "SEALING"):
        assert server["environment"][f"FACEPAY_{name}_KEY_FILE"].startswith("/run/facepay-keys/")

    proxy = services["proxy"]
    assert sorted(proxy["ports"]) == ["443:443", "80:80"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert "./tls:/etc/nginx/tls:ro" in proxy["volumes"]
    assert compose["networks"]["backend"]["internal"] is True
    assert "backend" not in services["postgres"].get("ports", [])


def test_compose_environment_names_settings_and_holds_no_secret() -> None:
    for name, service in _compose()["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if variable.startswith("FACEPAY_"):
                assert variable in SETTINGS, f"{name}: {variable} is not in server/config.py"
            assert variable != "FACEPAY_SECRET_KEY", "the secret key comes from facepay.env"
            text = str(value)
            if "PASSWORD" in variable:
                assert text.startswith("${"), f"{name}: {variable} is written inline"
            for password in re.findall(r"://[^:/@]+:([^@]+)@", text):
                assert password.startswith("${"), f"{name}: {variable} has a password inline"


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    if not _docker_compose():
        pytest.skip("docker compose is not installed; the structure is checked above")
    work = tmp_path / "deploy" / "server"
    shutil.copytree(DEPLOY, work)
    shutil.copy(work / "facepay.env.example", work / "facepay.env")
    env = {**os.environ, "POSTGRES_PASSWORD": "0123abcd"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(work / "compose.yaml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_env_template_lists_exactly_the_settings() -> None:
    template = _template()
    assert set(template) == SETTINGS
    text = (DEPLOY / "facepay.env.example").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(text):
        if re.match(r"^FACEPAY_\w+=", line):
            assert text[index - 1].startswith("# "), f"{line.split('=')[0]} has no comment"
    assert template["FACEPAY_SECRET_KEY"] == "", "no secret in the template: it fails closed"
    settings = load_settings(environ=template)
    assert settings.is_production and settings.liveness_required


def test_documented_key_generation_satisfies_production_mode(tmp_path: Path) -> None:
    env = {**_template(), "FACEPAY_SECRET_KEY": "x" * 64}
    env["FACEPAY_INSTANCE"] = str(tmp_path / "instance")
    for name in ("MASTER", "AUDIT", "PHONE", "SEALING"):
        env[f"FACEPAY_{name}_KEY_FILE"] = str(tmp_path / "secrets" / f"{name.lower()}.key")
    env["FACEPAY_KEY_STORE"] = str(tmp_path / "keystore" / "keystore.sqlite3")
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    one_off = re.search(r"docker compose run --rm admin (facepay server keys generate)", readme)
    assert one_off is not None, "deploy/README.md shows how to generate the keys"
    subprocess.run(
        [sys.executable, "-m", "facepay_cli", *one_off.group(1).split()[1:]],
        env={**os.environ, **env},
        check=True,
        timeout=60,
        capture_output=True,
    )
    keys = load_keys(load_settings(environ=env))
    keys.key_store.close()
    for path in (tmp_path / "secrets").iterdir():
        assert path.stat().st_mode & 0o077 == 0


def test_nginx_config_terminates_tls_in_front_of_the_server() -> None:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert re.search(r"listen 443 ssl;", conf)
    assert 'add_header Strict-Transport-Security "max-age=63072000' in conf
    assert re.search(r"client_max_body_size \d+k;", conf)
    assert "server server:8000;" in conf and "proxy_pass http://facepay;" in conf
    assert "ssl_certificate /etc/nginx/tls/fullchain.pem;" in conf
    assert "return 301 https://" in conf


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light to run this check)")
    for name in _TEMP_PATHS:
        (tmp_path / name).mkdir()
    key, cert = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=pay.example.com", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    # Only what differs outside the container: the certificate's folder, the upstream's
    # name (nginx resolves it at load time) and writable temp folders for a non-root run.
    conf = conf.replace("/etc/nginx/tls/", f"{tmp_path}/").replace("server:8000", "127.0.0.1:8000")
    temp = "".join(f"    {n}_temp_path {tmp_path / n};\n" for n in _TEMP_PATHS)
    conf = conf.replace("http {\n", "http {\n" + temp, 1)
    test_conf = tmp_path / "nginx.conf"
    test_conf.write_text(conf, encoding="utf-8")
    result = subprocess.run(
        [
            *(nginx, "-t", "-e", "stderr", "-p", str(tmp_path)),
            *("-c", str(test_conf), "-g", f"pid {tmp_path}/pid;"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@pytest.mark.parametrize(
    ("unit", "command", "calendar"),
    [
        ("facepay-expire", "facepay server payments expire", "hourly"),
        ("facepay-purge", "facepay server purge", "*-*-* 03:30:00"),
    ],
)
def test_timers_run_their_jobs(unit: str, command: str, calendar: str) -> None:
    from click.testing import CliRunner

    from server.cli import server_group

    service, timer = configparser.ConfigParser(), configparser.ConfigParser()
    service.read(DEPLOY / f"{unit}.service")
    timer.read(DEPLOY / f"{unit}.timer")
    assert service["Service"]["Type"] == "oneshot"
    exec_start = service["Service"]["ExecStart"]
    assert f"{command} --json" in exec_start
    assert timer["Timer"]["OnCalendar"] == calendar
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # The command the unit runs exists and takes --json.
    words = [*exec_start.split(command, 1)[1].split(), "--help"]
    found = CliRunner().invoke(server_group, command.split()[2:] + words)
    assert found.exit_code == 0 and "--json" in found.output, found.output
