"""nginx in front of the real `tokenward serve`: deploy/nginx/nginx.conf rendered for a
private working directory, and the command that runs it (the binary and the recording
upstream are fixtures in tests/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tests.helpers.gateway import ROOT

NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
IDENTITY = (
    "X-Tokenward-Token-Id",
    "X-Tokenward-Token-Name",
    "X-Tokenward-Org",
    "X-Tokenward-Team",
    "X-Tokenward-Service-Account",
    "X-Tokenward-Scopes",
)


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def render_nginx_conf(workdir: Path, listen_port: int, tokenward_port: int, upstream_port: int) -> Path:
    """deploy/nginx/nginx.conf with its placeholders filled in and every path nginx writes
    moved under `workdir` (nothing under /var, /run or /etc is touched)."""
    text = NGINX_CONF.read_text()
    values = {
        "__LISTEN_PORT__": f"127.0.0.1:{listen_port}",
        "__TOKENWARD__": f"127.0.0.1:{tokenward_port}",
        "__UPSTREAM__": f"127.0.0.1:{upstream_port}",
    }
    for placeholder, value in values.items():
        assert placeholder in text, f"{placeholder} is documented but not used"
        text = text.replace(placeholder, value)
    leftover = re.findall(r"__[A-Z_]+__", text)
    assert not leftover, f"undocumented placeholders: {leftover}"
    for original, local in (
        ("/var/log/nginx/access.log", workdir / "access.log"),
        ("/var/cache/nginx/tokenward", workdir / "cache"),
    ):
        assert original in text, original
        text = text.replace(original, str(local))
    temp_paths = "".join(
        f"    {directive} {workdir / name};\n"
        for directive, name in (
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        )
    )
    assert text.count("\nhttp {\n") == 1
    text = text.replace("\nhttp {\n", "\nhttp {\n" + temp_paths, 1)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(nginx: str, conf: Path, workdir: Path, *, test: bool = False) -> list[str]:
    main = f"pid {workdir / 'nginx.pid'}; error_log {workdir / 'error.log'} info;"
    if os.geteuid() == 0:
        main += " user root;"  # workers may then write the denial cache under the private tmp dir
    if not test:
        main += " daemon off;"
    command = [nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf), "-g", main]
    return [*command, "-t"] if test else command
