#!/usr/bin/env bash
# Build the control plane (kube-apiserver, kube-controller-manager, kube-scheduler) and the
# node (kubelet, kube-proxy) of Kubernetes v1.20.2 from Debian
# bookworm's `kubernetes` source package, offline, and cache them outside the repository.
#
#   scripts/cluster/build.sh          # no-op when the cached binaries answer --version
#   scripts/cluster/build.sh --node   # and Debian's packages a real node runs on
#
# Why Debian's source package: it is the full v1.20.2 tree with vendor/, so the build needs
# no Go module download, only Debian packages. Debian builds only kubectl from it, so the
# control-plane binaries are ours to build. Takes several minutes on 2 cores and ~2.2 GB of
# scratch disk, which is deleted afterwards (SHUFFLENET_KEEP_BUILD=1 keeps it).
#
# Environment:
#   SHUFFLENET_CACHE   cache root (default: $HOME/.cache/shufflenet-k8s)
#   SHUFFLENET_KEEP_BUILD=1   keep the source tree and Go cache after a successful build
set -euo pipefail

KUBE_VERSION=v1.20.2
CACHE="${SHUFFLENET_CACHE:-$HOME/.cache/shufflenet-k8s}"
ROOT="$CACHE/kube-$KUBE_VERSION"
BIN="$ROOT/bin"
WORK="$ROOT/build"
SERVER_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { printf '[cluster-build] %s\n' "$*" >&2; }

have_server_bins() {
    local b
    for b in "${SERVER_BINS[@]}"; do
        [[ -x "$BIN/$b" ]] || return 1
        "$BIN/$b" --version 2>/dev/null | grep -q "Kubernetes $KUBE_VERSION" || return 1
    done
}

have_kubectl() {
    [[ -x "$BIN/kubectl" ]] && "$BIN/kubectl" version --client >/dev/null 2>&1
}

have_etcd() {
    command -v etcd >/dev/null 2>&1
}

# Debian packages the build and the cluster need. Installing needs root (as on CI);
# anyone else gets told what to install instead of a half-done build.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]} (install them as root, then rerun)"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    # stdout carries this script's one result (the bin dir), so apt talks on stderr. An image
    # may ship with no package lists or stale ones: refresh them and retry once.
    local install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    if ! DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2
    fi
}

# A private apt configuration with deb-src entries derived from the system's own deb entries,
# so `apt-get source` works without editing /etc/apt and without writing any mirror name
# into this repository.
APT_DIR="$CACHE/apt"
apt_private() {
    apt-get -o Dir::Etc::SourceList=/dev/null \
        -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d" \
        -o Dir::State::Lists="$APT_DIR/lists" \
        -o Dir::Cache="$APT_DIR/cache" \
        -o APT::Sandbox::User=root \
        "$@"
}

setup_private_apt() {
    rm -rf "$APT_DIR"
    mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    local f found=0
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e "$f" ]] || continue
        sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$APT_DIR/sources.list.d/$(basename "$f")"
        found=1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -e "$f" ]] || continue
        if grep -qE '^deb[[:space:]]' "$f"; then
            sed -nE 's/^deb([[:space:]])/deb-src\1/p' "$f" >"$APT_DIR/sources.list.d/$(basename "$f").list"
            found=1
        fi
    done
    if ((found == 0)); then
        log "no Debian apt sources found under /etc/apt"
        exit 1
    fi
    apt_private update -qq >&2
}

install_kubectl() {
    # The machine's kubectl is used when there is one; otherwise Debian's kubernetes-client,
    # built from the very same source package (v1.20.2), is unpacked into the cache without
    # installing it system-wide.
    local sys
    sys="$(command -v kubectl || true)"
    if [[ -n "$sys" && "$sys" != "$BIN/kubectl" ]]; then
        ln -sfn "$sys" "$BIN/kubectl"
        have_kubectl && return 0
        rm -f "$BIN/kubectl"
    fi
    log "fetching Debian's kubernetes-client for kubectl"
    deb_install kubernetes-client usr/bin/kubectl
}

# Debian's registry (docker-registry: the CNCF distribution registry 2.8), which the real
# node runs inside its namespace (node.sh). Unpacked into the cache like kubectl: installing
# the package would also enable its service, a registry on the host's port 5000.
have_registry() {
    [[ -x "$BIN/docker-registry" ]] && "$BIN/docker-registry" --version 2>/dev/null | grep -q ' 2\.'
}

# deb_install PACKAGE PATH: the file PATH of Debian's PACKAGE, into $BIN, without installing
# the package system-wide.
deb_install() {
    local package=$1 path=$2 tmp
    tmp="$(mktemp -d "$ROOT/deb.XXXXXX")"
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$package" >&2) || {
        apt-get update -qq >&2
        (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$package" >&2)
    }
    dpkg-deb -x "$tmp/${package}"_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/$path" "$BIN/${path##*/}.new"
    mv -f "$BIN/${path##*/}.new" "$BIN/${path##*/}"
    rm -rf "$tmp"
}

build_server_bins() {
    ensure_packages golang-go rsync make dpkg-dev golang-github-modern-go-reflect2-dev
    setup_private_apt

    rm -rf "$WORK"
    mkdir -p "$WORK"
    log "fetching Debian's kubernetes source package"
    (cd "$WORK" && apt_private source -qq kubernetes >/dev/null)
    local src
    src="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
    if [[ -z "$src" || ! -d "$src/vendor" ]]; then
        log "unexpected source layout under $WORK"
        exit 1
    fi
    if ! head -n 1 "$src/debian/changelog" | grep -q '1\.20\.2'; then
        log "the source package is not Kubernetes 1.20.2"
        exit 1
    fi

    # The vendored reflect2 1.0.1 reads Go runtime internals that changed in Go 1.18 and
    # crashes at start-up under Debian's Go 1.19; Debian's packaged 1.0.2 fixes that and
    # is API-compatible.
    local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -d "$reflect2" ]] || {
        log "missing $reflect2"
        exit 1
    }
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r "$reflect2" "$src/vendor/github.com/modern-go/reflect2"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod" "$src/vendor/github.com/modern-go/reflect2/go.sum"

    log "building ${SERVER_BINS[*]} (several minutes on 2 cores)"
    local start=$SECONDS
    # Version stamps come from the environment because the tarball has no .git; GOPROXY=off
    # proves the build uses vendor/ only; the Go build cache stays in the scratch tree.
    (
        cd "$src"
        env CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor GOCACHE="$WORK/gocache" \
            KUBE_GIT_VERSION="$KUBE_VERSION" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
            KUBE_GIT_TREE_STATE=clean \
            make WHAT="${SERVER_BINS[*]/#/cmd/}"
    ) >"$ROOT/build.log" 2>&1 || {
        log "build failed; last lines of $ROOT/build.log:"
        tail -n 40 "$ROOT/build.log" >&2
        exit 1
    }
    log "built in $((SECONDS - start)) s"

    local b out
    for b in "${SERVER_BINS[@]}"; do
        out="$(find "$src/_output" -type f -name "$b" -perm -u+x | head -n 1)"
        [[ -n "$out" ]] || {
            log "build produced no $b"
            exit 1
        }
        install -m 0755 "$out" "$BIN/$b.new"
        mv -f "$BIN/$b.new" "$BIN/$b"
    done
    if [[ "${SHUFFLENET_KEEP_BUILD:-0}" != 1 ]]; then
        rm -rf "$WORK" "$APT_DIR"
    fi
}

main() {
    mkdir -p "$BIN"
    # Parallel test sessions may all ask for the binaries; only one builds, the rest wait.
    exec 9>"$ROOT/.build.lock"
    flock 9

    have_etcd || ensure_packages etcd-server
    if [[ "${1:-}" == --node ]]; then
        # containerd 1.6 (CRI), runc, the CNI plugins, iptables for kube-proxy, dnsmasq for
        # the cluster DNS, socat for the loopback port forwards into the node's namespace.
        ensure_packages containerd runc containernetworking-plugins iptables dnsmasq-base \
            socat util-linux iproute2 curl openssl
    fi
    if have_server_bins; then
        log "cached binaries OK in $BIN"
    else
        build_server_bins
        have_server_bins || {
            log "built binaries do not report $KUBE_VERSION"
            exit 1
        }
    fi
    have_kubectl || install_kubectl
    if [[ "${1:-}" == --node ]] && ! have_registry; then
        log "fetching Debian's docker-registry for the node's registry"
        deb_install docker-registry usr/bin/docker-registry
    fi
    printf '%s\n' "$BIN"
}

main "$@"
