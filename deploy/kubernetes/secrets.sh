#!/bin/sh
# Makes the Secrets the sidecar manifests name, and prints them as YAML for kubectl:
#
#   deploy/kubernetes/secrets.sh [--namespace NS] [--out DIR] | kubectl apply -f -
#
#   tollgate-tls          tls.crt, tls.key: the gate port's certificate (localhost, 127.0.0.1 and
#                         the StatefulSet's pod names); ca.crt: the CA clients trust
#   tollgate-credentials  credentials.yaml: the app's gate token and the dashboard's read
#                         token, by SHA-256 only
#   tollgate-app-token    token: the app container's gate token
#
# DIR (default ./tollgate-secrets, mode 0700) keeps the CA's key and the tokens: the read
# token (dashboard.token) is what a person types into the dashboard. With cert-manager or
# your own CA, make tollgate-tls yourself and leave it out of what you apply.
# Needs only openssl and a POSIX shell.
set -eu
namespace=default
out=./tollgate-secrets
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

if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
    -days 825 -subj "/CN=tollgate-ca" 2>/dev/null
fi
cat > server.ext <<EXT
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:agent-app,DNS:*.agent-app,DNS:*.agent-app.${namespace}.svc,DNS:*.agent-app.${namespace}.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout tls.key -out tls.csr -subj "/CN=tollgated" 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days 397 -extfile server.ext 2>/dev/null
[ -f app.token ] || token > app.token
[ -f dashboard.token ] || token > dashboard.token
cat > credentials.yaml <<CREDS
# Who may connect to tollgated (see examples/credentials.yaml). Tokens by SHA-256 only.
identities:
  - name: agent-app
    tokenSha256: $(digest "$(cat app.token)")
    role: gate
    accounts: "*"
  - name: dashboard
    tokenSha256: $(digest "$(cat dashboard.token)")
    role: read
    accounts: "*"
CREDS

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: tollgate-tls
  namespace: ${namespace}
type: kubernetes.io/tls
data:
  tls.crt: $(b64 tls.crt)
  tls.key: $(b64 tls.key)
  ca.crt: $(b64 ca.crt)
---
apiVersion: v1
kind: Secret
metadata:
  name: tollgate-credentials
  namespace: ${namespace}
type: Opaque
data:
  credentials.yaml: $(b64 credentials.yaml)
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
