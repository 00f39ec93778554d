"""deploy/ checked as far as a machine without a container engine or a cluster can: every
manifest and the unit parse; every flag, setting, environment variable, port and path they use
exists in tollgated's --help and agrees with its settings; systemd-analyze verifies the unit;
the Kubernetes configuration runs the real server with the Secrets secrets.sh makes; the unit's
command line starts the real server in a temporary directory."""

import base64
import os
import pathlib
import re
import shlex
import signal
import subprocess
import urllib.request

import pytest
import yaml

from conftest import ROOT, binary, fixtures, read_api

DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"


def manifests():
    documents = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents[(document["kind"], document["metadata"]["name"] if "metadata" in document else path.name)] = document
    return documents


def statefulset():
    return manifests()[("StatefulSet", "agent-app")]


def pod_containers():
    spec = statefulset()["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "tollgate")
    app = next(c for c in spec["containers"] if c["name"] == "app")
    return spec, sidecar, app


def configmap_config():
    return manifests()[("ConfigMap", "tollgate-config")]["data"]["tollgated.yaml"]


def run(*arguments, env=None, check=True):
    return subprocess.run([*arguments], capture_output=True, text=True, env=env, check=check, timeout=60)


def tollgated_help():
    return run(binary("tollgated"), "--help").stdout


def print_config(config_text, tmp_path, *flags, env=None):
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    output = run(binary("tollgated"), "--config", str(path), "--print-config", *flags, env=env).stdout
    return {key: str(value) for key, value in yaml.safe_load(output).items()}


def secrets(tmp_path):
    out = tmp_path / "secrets"
    text = run("sh", str(KUBE / "secrets.sh"), "--namespace", "tollgate-test", "--out", str(out)).stdout
    documents = {document["metadata"]["name"]: document for document in yaml.safe_load_all(text)}
    return out, documents


def setting_names(help_text):
    match = re.search(r"Settings: ([a-zA-Z, ]+)\.", " ".join(help_text.split()))
    return set(name.strip() for name in match.group(1).split(","))


def env_name(setting):
    """adminPort → TOLLGATE_ADMIN_PORT, webhookURL → TOLLGATE_WEBHOOK_URL (as tollgated --help says)."""
    return "TOLLGATE_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", setting).upper()


# MARK: - Parsing and agreement


def test_every_manifest_parses_and_the_kustomization_lists_them():
    documents = manifests()
    assert {kind for kind, _ in documents} == {"ConfigMap", "StatefulSet", "Service", "Kustomization", "NetworkPolicy", "PodDisruptionBudget"}
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    for (kind, _), document in documents.items():
        assert document["apiVersion"], kind
    yaml.safe_load(configmap_config())
    yaml.safe_load((DEPLOY / "tollgated.yaml").read_text())


def test_the_sidecar_is_native_hardened_probed_and_scraped():
    spec, sidecar, app = pod_containers()
    assert sidecar["restartPolicy"] == "Always", "a native sidecar is an init container with restartPolicy: Always"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for container in (sidecar, app):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    ports = {port["name"]: port["containerPort"] for port in sidecar["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert sidecar[probe]["httpGet"]["path"] == path and sidecar[probe]["httpGet"]["port"] == "admin"
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["admin"] and annotations["prometheus.io/path"] == "/metrics"
    service = manifests()[("Service", "agent-app")]
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= set(ports)


def test_flags_settings_and_environment_variables_exist_in_tollgated_help(tmp_path):
    help_text = tollgated_help()
    settings = setting_names(help_text)
    _, sidecar, app = pod_containers()
    flags = [argument for argument in sidecar["args"] if argument.startswith("--")]
    unit = (DEPLOY / "systemd" / "tollgated.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    flags += [argument for argument in shlex.split(exec_start) if argument.startswith("--")]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert flags and all(flag in help_text for flag in flags), flags
    # The health check's flags exist in `tollgate health --help`.
    health = re.search(r'HEALTHCHECK .*?CMD (\[.*?\])', dockerfile, re.S).group(1)
    health_flags = [word.strip('",') for word in health.split() if word.strip('",').startswith("--")]
    health_help = run(binary("tollgate"), "health", "--help").stdout
    assert health_flags and all(flag in health_help for flag in health_flags)
    # Every config file key is a setting, and every config file loads.
    for text in (configmap_config(), (DEPLOY / "tollgated.yaml").read_text()):
        assert set(yaml.safe_load(text)) <= settings
    # Every TOLLGATE_* variable (the commented-out ones too) takes effect: tollgated, given them
    # all, prints each value under a setting. A misspelt one would be ignored, and caught here.
    env_file = (DEPLOY / "systemd" / "tollgated.env").read_text()
    variables = dict(re.findall(r"^#?(TOLLGATE_[A-Z_]+)=(.*)$", env_file, re.M))
    variables.update({variable["name"]: variable["value"] for variable in sidecar.get("env", [])})
    log_level = variables.pop("TOLLGATE_LOG_LEVEL")
    assert log_level in ("info", "notice", "warning") and "TOLLGATE_LOG_LEVEL" in help_text and "TOLLGATE_CONFIG" in help_text
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOLLGATE_")}
    printed = run(binary("tollgated"), "--print-config", env={**env, **variables}).stdout
    effective = {key: str(value) for key, value in yaml.safe_load(printed).items()}
    for variable, value in variables.items():
        setting = next((name for name in settings if env_name(name) == variable), None)
        assert setting and effective[setting] == value, (variable, value, setting)
    cli_help = run(binary("tollgate"), "ping", "--help").stdout
    for variable in app["env"]:
        assert variable["name"] in cli_help, variable["name"]


def test_ports_paths_and_times_agree_with_the_settings(tmp_path):
    spec, sidecar, app = pod_containers()
    config = print_config(configmap_config(), tmp_path)
    ports = {port["name"]: port["containerPort"] for port in sidecar["ports"]}
    assert ports == {"gate": int(config["port"]), "admin": int(config["adminPort"])}
    assert config["host"] == "0.0.0.0" and config["adminHost"] == "0.0.0.0"
    mounts = {mount["name"]: mount["mountPath"] for mount in sidecar["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    _, made = secrets(tmp_path)

    def secret_file(path, container_mounts):
        """The Secret and key a path in a container comes from."""
        for name, mount in container_mounts.items():
            if path.startswith(mount + "/"):
                secret = volumes[name]["secret"]["secretName"]
                key = path[len(mount) + 1:]
                assert key in made[secret]["data"], (path, secret)
                return secret, key
        raise AssertionError("%s is on no mounted volume" % path)

    assert mounts["data"] == config["dataDirectory"]
    assert secret_file(config["tlsCertificateFile"], mounts) == ("tollgate-tls", "tls.crt")
    assert secret_file(config["tlsKeyFile"], mounts) == ("tollgate-tls", "tls.key")
    assert secret_file(config["credentialsFile"], mounts) == ("tollgate-credentials", "credentials.yaml")
    assert sidecar["args"] == ["--config", mounts["config"] + "/tollgated.yaml"]
    app_mounts = {mount["name"]: mount["mountPath"] for mount in app["volumeMounts"]}
    app_env = {variable["name"]: variable["value"] for variable in app["env"]}
    assert secret_file(app_env["TOLLGATE_TLS_CA"], app_mounts) == ("tollgate-tls", "ca.crt")
    assert secret_file(app_env["TOLLGATE_TOKEN_FILE"], app_mounts) == ("tollgate-app-token", "token")
    assert app_env["TOLLGATE_SERVER"] == "127.0.0.1:%s" % config["port"]
    assert spec["terminationGracePeriodSeconds"] * 1000 > int(config["shutdownGraceMilliseconds"])
    # The image: its config, volume, ports and user.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    image_config = print_config((DEPLOY / "tollgated.yaml").read_text(), tmp_path)
    assert 'VOLUME ["%s"]' % image_config["dataDirectory"] in dockerfile
    assert "EXPOSE %s %s" % (image_config["port"], image_config["adminPort"]) in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M) and "FROM swift:" in dockerfile and "FROM debian:bookworm-slim" in dockerfile
    assert "ENV TOLLGATE_CONFIG=/etc/tollgate/tollgated.yaml" in dockerfile and "COPY deploy/tollgated.yaml /etc/tollgate/tollgated.yaml" in dockerfile
    assert "--admin\", \"127.0.0.1:%s\"" % image_config["adminPort"] in dockerfile
    # systemd: the stop timeout covers the drain.
    unit = (DEPLOY / "systemd" / "tollgated.service").read_text()
    env = dict(re.findall(r"^(TOLLGATE_[A-Z_]+)=(.*)$", (DEPLOY / "systemd" / "tollgated.env").read_text(), re.M))
    assert int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1)) * 1000 > int(env["TOLLGATE_SHUTDOWN_GRACE_MILLISECONDS"])


# MARK: - Running them


def test_the_kubernetes_configuration_serves_with_the_secrets_secrets_sh_makes(tmp_path):
    spec, sidecar, app = pod_containers()
    out, made = secrets(tmp_path)
    root = tmp_path / "pod"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}

    def mount(container):
        """The container's secret and config volumes, as files under `root`."""
        for volume_mount in container["volumeMounts"]:
            target = root / volume_mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(volume_mount["name"], {})
            if "secret" in volume:
                for key, value in made[volume["secret"]["secretName"]]["data"].items():
                    (target / key).write_bytes(base64.b64decode(value))
            elif "configMap" in volume:
                (target / "tollgated.yaml").write_text(configmap_config().replace(" /", " " + str(root) + "/"))

    mount(sidecar)
    mount(app)
    gate, admin = fixtures.free_port(), fixtures.free_port()
    arguments = [a if not a.startswith("/") else str(root) + a for a in sidecar["args"]]
    log = open(tmp_path / "tollgated.log", "w")
    server = subprocess.Popen([binary("tollgated"), *arguments, "--port", str(gate), "--admin-port", str(admin)], stdout=log, stderr=subprocess.STDOUT)
    try:
        fixtures.wait_for_port(admin)
        health = run(binary("tollgate"), "health", "--admin", "127.0.0.1:%d" % admin, check=False)
        fixtures.wait_for_port(gate)
        health = run(binary("tollgate"), "health", "--admin", "127.0.0.1:%d" % admin, check=False)
        assert health.returncode == 0 and "200 ready" in health.stdout, health
        # The example app's command, with its environment: TLS to the sidecar, its gate token.
        env = dict(os.environ)
        for variable in app["env"]:
            value = variable["value"]
            env[variable["name"]] = str(root) + value if value.startswith("/") else value
        env["TOLLGATE_SERVER"] = "127.0.0.1:%d" % gate
        ping = run(binary("tollgate"), "ping", env=env, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # Not without TLS, and not the read API with the gate token; the dashboard's read token reads.
        env_plain = {k: v for k, v in env.items() if k != "TOLLGATE_TLS_CA"}
        assert run(binary("tollgate"), "ping", "--timeout", "2000", env=env_plain, check=False).returncode != 0
        reader = type("Admin", (), {"admin_url": "http://127.0.0.1:%d" % admin})
        assert read_api(reader, "/api/v1/accounts", (out / "app.token").read_text())[0] == 403
        status, body = read_api(reader, "/api/v1/accounts", (out / "dashboard.token").read_text())
        assert status == 200 and body["accounts"] == []
        with urllib.request.urlopen(reader.admin_url + "/metrics", timeout=5) as response:
            assert b"tollgate_tls_certificate_not_after_seconds" in response.read()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        log.close()
    assert (root / "var/lib/tollgate/journal").is_dir()
    # The health check says so when the server is gone.
    assert run(binary("tollgate"), "health", "--admin", "127.0.0.1:%d" % admin, check=False).returncode == 1


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = pytest.importorskip("shutil").which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify wants the program to exist: the same unit, naming the built binary.
    unit = (DEPLOY / "systemd" / "tollgated.service").read_text().replace("/usr/local/bin/tollgated", binary("tollgated"))
    path = tmp_path / "tollgated.service"
    path.write_text(unit)
    result = run(analyze, "verify", str(path), check=False)
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", result
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "StateDirectory=tollgate", "Restart=on-failure",
                      "EnvironmentFile=-/etc/tollgate/tollgated.env", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service"):
        assert directive in unit


def test_the_units_command_line_starts_the_server_in_a_temporary_directory(tmp_path):
    unit = (DEPLOY / "systemd" / "tollgated.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    command = [binary("tollgated") if word == "/usr/local/bin/tollgated" else word.replace("${STATE_DIRECTORY}", str(state))
               for word in shlex.split(exec_start)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOLLGATE_")}
    env.update(re.findall(r"^(TOLLGATE_[A-Z_]+)=(.*)$", (DEPLOY / "systemd" / "tollgated.env").read_text(), re.M))
    env["STATE_DIRECTORY"] = str(state)
    gate, admin = fixtures.free_port(), fixtures.free_port()
    env["TOLLGATE_PORT"], env["TOLLGATE_ADMIN_PORT"] = str(gate), str(admin)
    log = open(tmp_path / "tollgated.log", "w")
    server = subprocess.Popen(command, cwd=str(state), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        fixtures.wait_for_port(gate)
        assert run(binary("tollgate"), "health", "--admin", "127.0.0.1:%d" % admin).returncode == 0
        token = (state / "admin.token").read_text().strip()
        assert oct((state / "admin.token").stat().st_mode & 0o777) == "0o600"
        ping = run(binary("tollgate"), "ping", "--server", "127.0.0.1:%d" % gate, "--token", token)
        assert ping.returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        log.close()
    assert code == 0
    assert (state / "journal").is_dir() and (state / "events").is_dir()
    assert "tollgated stopped" in (tmp_path / "tollgated.log").read_text()


def test_the_network_policy_budget_and_monitoring_select_the_pods_and_name_real_ports_and_metrics():
    documents = manifests()
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    _, sidecar, _ = pod_containers()
    port_names = {port["name"] for port in sidecar["ports"]}
    policy = documents[("NetworkPolicy", "agent-app-tollgate")]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]} == port_names
    budget = documents[("PodDisruptionBudget", "agent-app")]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items() and budget["spec"]["maxUnavailable"] == 1
    assert sidecar["imagePullPolicy"] == "IfNotPresent" and sidecar["image"].startswith("REGISTRY/")
    # The optional monitoring kustomization (Prometheus Operator CRDs).
    monitoring = KUBE / "monitoring"
    kustomization = yaml.safe_load((monitoring / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in monitoring.glob("*.yaml") if p.name != "kustomization.yaml")
    monitor = yaml.safe_load((monitoring / "servicemonitor.yaml").read_text())
    service = documents[("Service", "agent-app")]
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}
    # Every metric an alert reads is one the server exports.
    exported = set(re.findall(r'"(tollgate_[a-z_]+)"', (ROOT / "Sources" / "TollgateServer" / "ServerMetrics.swift").read_text()))
    rules = yaml.safe_load((monitoring / "prometheusrule.yaml").read_text())["spec"]["groups"][0]["rules"]
    for rule in rules:
        used = set(re.findall(r"tollgate_[a-z_]+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
