#!/bin/sh
# Makes the Secrets the cluster's manifests name, and prints them as YAML for kubectl:
#
#   deploy/kubernetes/cluster/secrets.sh [--namespace NS] [--out DIR] | kubectl apply -f -
#
#   tollgate-cluster-credentials  credentials.yaml: who may connect to nodes and routers — the
#                                 app (gate), the routers (admin, at the nodes) and the
#                                 dashboard (read) — by SHA-256 only
#   tollgate-router-token         token: what routers show the nodes
#   tollgate-app-token            token: the app container's gate token
#
# DIR (default ./tollgate-cluster-secrets, mode 0700) keeps the tokens. Needs openssl.
set -eu
namespace=default
out=./tollgate-cluster-secrets
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--namespace NS] [--out DIR]" >&2; exit 2 ;;
  esac
done
umask 077
mkdir -p "$out"
cd "$out"
b64() { openssl base64 -A < "$1"; }
token() { printf 'tg_%s' "$(openssl rand -hex 32)"; }
digest() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
[ -f app.token ] || token > app.token
[ -f router.token ] || token > router.token
[ -f dashboard.token ] || token > dashboard.token
cat > credentials.yaml <<CREDS
# Who may connect to the cluster's nodes and routers. Tokens by SHA-256 only.
identities:
  - name: agent-app
    tokenSha256: $(digest "$(cat app.token)")
    role: gate
    accounts: "*"
  - name: router
    tokenSha256: $(digest "$(cat router.token)")
    role: admin
  - name: dashboard
    tokenSha256: $(digest "$(cat dashboard.token)")
    role: read
    accounts: "*"
CREDS
cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: tollgate-cluster-credentials
  namespace: ${namespace}
type: Opaque
data:
  credentials.yaml: $(b64 credentials.yaml)
---
apiVersion: v1
kind: Secret
metadata:
  name: tollgate-router-token
  namespace: ${namespace}
type: Opaque
data:
  token: $(b64 router.token)
---
apiVersion: v1
kind: Secret
metadata:
  name: tollgate-app-token
  namespace: ${namespace}
type: Opaque
data:
  token: $(b64 app.token)
YAML
