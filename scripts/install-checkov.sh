#!/usr/bin/env bash
# Install checkov (Bridgecrew's policy-as-code scanner, PyPI `checkov`) into a virtualenv of
# its own in the cache outside the repository, and print the path of its `checkov` binary.
#
#   scripts/install-checkov.sh       # no-op when the cached one is complete and answers
#                                    # `--version` with VERSION
#
# The tests (tests/integration/pod_security_tools.py) run it as an independent judge of the
# rank pods and the chart against Pod Security "restricted". A virtualenv of its own:
# checkov pins dozens of packages (boto3, networkx, ...) that must not move the project's.
#
# Environment:
#   SHUFFLENET_CACHE   cache root (default: $HOME/.cache/shufflenet-k8s)
#   PYTHON             the Python the virtualenv is made with (default: python3)
set -euo pipefail

VERSION=3.3.30
CACHE="${SHUFFLENET_CACHE:-$HOME/.cache/shufflenet-k8s}"
DIR="$CACHE/checkov-$VERSION"
CHECKOV="$DIR/bin/checkov"

# .complete is written last: an interrupted install is redone, not taken for a good one.
if [[ -f "$DIR/.complete" ]] && [[ "$("$CHECKOV" --version 2>/dev/null)" == "$VERSION" ]]; then
    echo "$CHECKOV"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
    echo "install-checkov: $PYTHON has no venv module (apt-get install -y python3-venv)" >&2
    exit 1
fi

rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/python" -m pip install -q --disable-pip-version-check "checkov==$VERSION" >&2
[[ "$("$CHECKOV" --version)" == "$VERSION" ]]
touch "$DIR/.complete"
echo "$CHECKOV"
