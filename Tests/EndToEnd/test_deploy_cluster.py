"""deploy/kubernetes/cluster checked as far as a machine without a cluster can: every manifest
parses and the kustomization lists them; the nodes' and the router's settings load in the real
tollgated with the flags the manifests give; secrets.sh makes the Secrets they name, with the
router's token admitted as admin."""

import hashlib
import subprocess

import yaml

from conftest import ROOT, binary

CLUSTER = ROOT / "deploy" / "kubernetes" / "cluster"


def documents():
    found = {}
    for path in sorted(CLUSTER.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[(document["kind"], document.get("metadata", {}).get("name", path.name))] = document
    return found


def run(*arguments, check=True):
    return subprocess.run([*arguments], capture_output=True, text=True, check=check, timeout=60)


def config(name):
    return documents()[("ConfigMap", "tollgate-cluster-config")]["data"][name]


def test_every_manifest_parses_and_the_kustomization_lists_them():
    found = documents()
    kustomization = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in CLUSTER.glob("*.yaml") if p.name != "kustomization.yaml")
    shards = sorted(name for kind, name in found if kind == "StatefulSet" and name.startswith("tollgate-"))
    assert shards == ["tollgate-s0", "tollgate-s1", "tollgate-s2"]
    assert found[("StatefulSet", "etcd")]["spec"]["replicas"] == 3
    for shard in shards:
        spec = found[("StatefulSet", shard)]["spec"]
        assert spec["replicas"] == 2 and spec["serviceName"] == shard and ("Service", shard) in found


def test_nodes_and_router_settings_load_with_the_manifests_flags(tmp_path):
    found = documents()
    help_text = run(binary("tollgated"), "--help").stdout
    node_file = tmp_path / "node.yaml"
    node_file.write_text(config("node.yaml"))
    for shard in ("s0", "s1", "s2"):
        container = found[("StatefulSet", "tollgate-" + shard)]["spec"]["template"]["spec"]["containers"][0]
        arguments = [argument.replace("$(POD_NAME)", "tollgate-%s-0" % shard) for argument in container["args"]]
        arguments[arguments.index("--config") + 1] = str(node_file)
        assert all(flag in help_text for flag in arguments if flag.startswith("--"))
        printed = yaml.safe_load(run(binary("tollgated"), *arguments, "--print-config").stdout)
        assert printed["shard"] == shard and printed["journalMode"] == "replicated" and printed["clusterName"] == "prod"
        assert printed["advertiseAddress"] == "tollgate-%s-0.tollgate-%s:7400" % (shard, shard)
        assert printed["etcdEndpoints"] == "etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379"
    router_file = tmp_path / "router.yaml"
    router_file.write_text(config("router.yaml"))
    sidecar = found[("Deployment", "agent-app")]["spec"]["template"]["spec"]["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    printed = yaml.safe_load(run(binary("tollgated"), "--config", str(router_file), "--print-config").stdout)
    assert printed["router"] == "true" and printed["host"] == "127.0.0.1" and printed["clusterName"] == "prod"


def test_secrets_admit_the_router_as_admin(tmp_path):
    out = tmp_path / "secrets"
    text = run("sh", str(CLUSTER / "secrets.sh"), "--namespace", "t", "--out", str(out)).stdout
    secrets = {document["metadata"]["name"] for document in yaml.safe_load_all(text)}
    assert secrets == {"tollgate-cluster-credentials", "tollgate-router-token", "tollgate-app-token"}
    credentials = yaml.safe_load((out / "credentials.yaml").read_text())
    roles = {identity["name"]: identity for identity in credentials["identities"]}
    router_digest = hashlib.sha256((out / "router.token").read_bytes()).hexdigest()
    assert roles["router"]["role"] == "admin" and roles["router"]["tokenSha256"] == router_digest
    assert roles["agent-app"]["role"] == "gate"
