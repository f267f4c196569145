#!/usr/bin/env bash
# Build the project's container images with buildah, offline and cached outside the
# repository, and load them into a containerd.
#
#   scripts/images/build.sh [build]   # base, wheelhouse, operator, trainer-cpu, pause; then
#                                     # prints the image references as shell assignments
#   scripts/images/build.sh env       # the same (a no-op when everything is cached)
#   scripts/images/build.sh push REGISTRY   # build, then push the operator
#                                     # and trainer images to REGISTRY/shufflenet/NAME:TAG;
#                                     # prints their references, tags and digests
#   scripts/images/build.sh import --address SOCKET IMAGE...   # into containerd's k8s.io
#   scripts/images/build.sh run IMAGE [ARG...]   # podman run it as a pod would: uid 10001,
#                                     # read-only root, tmpfs /tmp, no network
#   scripts/images/build.sh clean     # drop the image store and the wheelhouses
#
#   eval "$(scripts/images/build.sh env)"   # OPERATOR_IMAGE, TRAINER_IMAGE, PAUSE_IMAGE
#
# How (docs/images.md): a Debian bookworm base made by mmdebstrap from the host's own apt
# sources (no registry needed; its Python 3.11 matches the wheels); a wheelhouse made by
# the host's pip (`pip download`, with the host's pip configuration) of what pyproject.toml
# and constraints.txt ask for; then `buildah build` of images/<name>/Dockerfile with that
# base, the wheelhouse mounted read-only and pip's index off, and no network at all. Each
# image is tagged with a hash of its inputs (Dockerfile, base, wheelhouse, the files the
# build context admits), so an unchanged image is not rebuilt.
#
# Environment:
#   SHUFFLENET_CACHE   cache root (default: $HOME/.cache/shufflenet-k8s); the image store,
#                      its run state, the wheelhouses and the import layouts live under
#                      $SHUFFLENET_CACHE/images
#   PYTHON             the host Python whose pip makes the wheelhouse (default: python3)
#   BUILDAH_RUNTIME    the OCI runtime of the RUN steps (default: runc)
#   REGISTRY_CA        push: a CA certificate file the registry's certificate is signed by,
#                      when the system's trust does not cover it
#   REGISTRY_AUTH_FILE push: the registry credentials (`buildah login --authfile`), as every
#                      tool of the containers stack reads them
set -euo pipefail
# Most results come back through $(...): fail there too.
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${SHUFFLENET_CACHE:-$HOME/.cache/shufflenet-k8s}"
IMAGES="$CACHE/images"
PYTHON="${PYTHON:-python3}"
# crun fails on a cgroup v1 host; runc works on both.
RUNTIME="${BUILDAH_RUNTIME:-runc}"
PREFIX=localhost/shufflenet
# kubelet v1.20's default sandbox image is pause:3.2; the node points at ours by this name.
PAUSE_IMAGE="$PREFIX/pause:3.2"
INPUTS_LABEL=io.shufflenet.inputs

# The base: Debian bookworm's Python 3.11 (the wheels' cp311), pip, venv, CA certificates,
# and passwd for the Dockerfiles' useradd.
SUITE=bookworm
BASE_PACKAGES=python3,python3-pip,python3-venv,ca-certificates,passwd
# The wheelhouse's target: the images' Python and glibc (bookworm has glibc 2.36). pip takes
# --platform tags literally, so every manylinux tag that glibc satisfies is listed.
WHEEL_PYTHON=3.11
WHEEL_ABI=cp311
WHEEL_GLIBC_MINOR=36

log() { printf '[images] %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# One store for buildah, podman and skopeo alike, outside the host's /var and /run: every
# tool of the containers stack reads CONTAINERS_STORAGE_CONF. Their big temporary files
# (layer staging, normally in /var/tmp) follow TMPDIR, and runc keeps its container state
# under the cache too (--root, normally /run/runc).
setup_storage() {
    mkdir -p "$IMAGES/storage" "$IMAGES/run" "$IMAGES/tmp" "$IMAGES/runc"
    cat >"$IMAGES/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "$IMAGES/storage"
runroot = "$IMAGES/run"
EOF
    mv "$IMAGES/storage.conf.tmp" "$IMAGES/storage.conf"
    export CONTAINERS_STORAGE_CONF="$IMAGES/storage.conf" TMPDIR="$IMAGES/tmp"
}

# Run the rest in a private mount namespace in which the host's /var and /run are
# read-only, so no tool writes there behind our back: the containers stack keeps a blob
# cache in /var/lib/containers (without write access, in memory), and buildah 1.28 stages
# some files in /var/tmp whatever TMPDIR says, so /var/tmp is the cache's tmp/ in there.
# Skipped when the cache itself lies there, or without the rights to do it.
isolate() {
    local dir
    if [[ -z "${SHUFFLENET_IMAGES_ISOLATED:-}" ]] && unshare --mount true 2>/dev/null; then
        SHUFFLENET_IMAGES_ISOLATED=1 exec unshare --mount --propagation private -- \
            "$BASH" "${BASH_SOURCE[0]}" "$@"
    fi
    [[ "${SHUFFLENET_IMAGES_ISOLATED:-}" == 1 ]] || return 0
    for dir in /var /run; do
        [[ "$IMAGES/" == "$dir"/* ]] && continue
        mount --rbind "$dir" "$dir"
        mount -o remount,bind,ro "$dir"
    done
    if [[ "$IMAGES/" != /var/* && -d /var/tmp ]]; then
        mkdir -p "$IMAGES/tmp"
        mount --bind "$IMAGES/tmp" /var/tmp
    fi
}

# The Debian package of each tool the script runs.
declare -A PACKAGE_OF=([buildah]=buildah [mmdebstrap]=mmdebstrap [runc]=runc [gcc]=gcc
    [skopeo]=skopeo [ctr]=containerd [podman]=podman [python3]=python3)

# Tools missing on a fresh machine are installed from Debian (as root, as in CI); anyone
# else is told what to install.
need() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("${PACKAGE_OF[$tool]:-$tool}")
    done
    [[ " $* " == *" gcc "* && ! -e /usr/lib/x86_64-linux-gnu/libc.a && ! -e /usr/lib/aarch64-linux-gnu/libc.a ]] &&
        missing+=(libc6-dev)
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing: ${missing[*]} (Debian: apt-get install ${missing[*]})"
    log "installing Debian packages: ${missing[*]}"
    local install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    if ! DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2
    fi
}

sha() { sha256sum | cut -c1-16; }

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

image_label() {
    buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null
}

# The host's apt sources, handed to mmdebstrap as files: the base comes from the same
# mirror the host uses, and no mirror name is written anywhere.
host_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; do
        [[ -s "$f" ]] && printf '%s\n' "$f"
    done
    return 0
}

base_image() {
    local sources=() aptopts=() key tag tmp ctr apt_config start
    mapfile -t sources < <(host_sources)
    ((${#sources[@]})) || die "no apt sources on this host (/etc/apt/sources.list*)"
    # A snapshot mirror's Release files are past their Valid-Until date; accept them only
    # where the host's apt does.
    # (apt-config's whole output first: `grep -q` in a pipe would race pipefail.)
    apt_config="$(apt-config dump)"
    if grep -qx 'Acquire::Check-Valid-Until "false";' <<<"$apt_config"; then
        aptopts+=(--aptopt='Acquire::Check-Valid-Until "false"')
    fi
    key="$({
        printf '%s\n' "$SUITE" "$BASE_PACKAGES" "${aptopts[@]}"
        declare -f base_rootfs
        cat "${sources[@]}"
    } | sha)"
    tag="$PREFIX/base:$key"
    if ! have_image "$tag"; then
        log "base: mmdebstrap $SUITE ($BASE_PACKAGES)"
        start=$SECONDS
        tmp="$(mktemp -d -p "$WORK")"
        base_rootfs "$tmp/rootfs.tar" "${aptopts[@]}" -- "${sources[@]}"
        ctr="$(buildah from --pull=never scratch)"
        buildah add --quiet "$ctr" "$tmp/rootfs.tar" / >/dev/null
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd python3 --label "$INPUTS_LABEL=$key" "$ctr"
        buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
        rm -rf "$tmp"
        log "base: $tag in $((SECONDS - start)) s, $(image_size "$tag")"
    fi
    printf '%s\n' "$tag"
}

# mmdebstrap OUT [APTOPT...] -- SOURCE...: a minimal bookworm as a tarball.
base_rootfs() {
    local out="$1" opts=()
    shift
    while [[ "$1" != -- ]]; do
        opts+=("$1")
        shift
    done
    shift
    # Docs, man pages and translations are dead weight in an image (copyright files stay).
    # The hook lets pip install into the system Python (Debian marks it externally managed;
    # the image is the environment) and drops the host's apt sources and options, so nothing
    # of the build host ends up in the image. mmdebstrap expands $1 (the new root), not us.
    # shellcheck disable=SC2016
    local hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED "$1"/etc/apt/apt.conf.d/99mmdebstrap
        rm -rf "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*'
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "${opts[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="$hook" \
        "$SUITE" "$out" "$@" >&2
}

# The wheels every image installs, for the images' platform, fetched by the host's pip (its
# index, certificates and proxy settings): the builds themselves never reach an index.
wheelhouse() {
    local reqs key dir minor start platforms=(--platform any)
    for ((minor = 5; minor <= WHEEL_GLIBC_MINOR; minor++)); do
        platforms+=(--platform "manylinux_2_${minor}_x86_64")
    done
    platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
        --platform manylinux1_x86_64)
    reqs="$("$PYTHON" "$REPO/scripts/images/inputs.py" requirements "$REPO")"
    key="$(printf '%s\n' "$reqs" "$WHEEL_PYTHON $WHEEL_ABI ${platforms[*]}" | sha)"
    dir="$IMAGES/wheels/$key"
    if [[ ! -f "$dir/.complete" ]]; then
        log "wheelhouse: pip download into $dir"
        start=$SECONDS
        rm -rf "$dir"
        mkdir -p "$dir"
        printf '%s\n' "$reqs" >"$dir/requirements.txt"
        "$PYTHON" -m pip download --quiet --dest "$dir" --only-binary=:all: \
            --python-version "$WHEEL_PYTHON" --implementation cp --abi "$WHEEL_ABI" \
            --abi abi3 --abi none "${platforms[@]}" \
            -c "$REPO/constraints.txt" -r "$dir/requirements.txt" >&2
        touch "$dir/.complete"
        log "wheelhouse: $(du -sh "$dir" | cut -f1) in $((SECONDS - start)) s"
    fi
    printf '%s\n' "$dir"
}

# A hash of everything an image is built from: the Dockerfile, the base image's id, the
# wheelhouse's file names, and the path and content of every file in the build context.
image_key() {
    local name="$1" base="$2" wheels="$3"
    {
        sha256sum "$REPO/images/$name/Dockerfile" | cut -d' ' -f1
        image_id "$base"
        (cd "$wheels" && ls -- *.whl)
        (cd "$REPO" && "$PYTHON" scripts/images/inputs.py context . | tr '\n' '\0' |
            xargs -0 sha256sum)
    } | sha
}

build_image() {
    local name="$1" base="$2" wheels="$3" tag start
    tag="$PREFIX/$name:$(image_key "$name" "$base" "$wheels")"
    if ! have_image "$tag"; then
        log "$name: building $tag"
        start=$SECONDS
        # --layers: each step is cached, so a code change rebuilds only the last layers.
        # --network none: pip installs from the mounted wheelhouse only.
        buildah build --quiet --layers --pull=never --runtime "$RUNTIME" --network none \
            --runtime-flag "root=$IMAGES/runc" \
            --file "$REPO/images/$name/Dockerfile" --build-arg BASE="$base" \
            --volume "$wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 \
            --build-arg PIP_FIND_LINKS=/wheels --label "$INPUTS_LABEL=${tag##*:}" \
            --tag "$tag" "$REPO" >/dev/null
        log "$name: built in $((SECONDS - start)) s, $(image_size "$tag")"
    fi
    printf '%s\n' "$tag"
}

image_size() {
    buildah images --format '{{.Size}}' "$1" | sed -n 1p
}

# The pod sandbox: our own pause (images/pause/pause.c), static, in an otherwise empty image.
pause_image() {
    local key tmp ctr
    key="$(cat "$REPO/images/pause/pause.c" <(gcc --version | sed -n 1p) | sha)"
    if [[ "$(image_label "$PAUSE_IMAGE" "$INPUTS_LABEL")" != "$key" ]]; then
        log "pause: building $PAUSE_IMAGE"
        tmp="$(mktemp -d -p "$WORK")"
        gcc -Os -static -Wall -Werror -o "$tmp/pause" "$REPO/images/pause/pause.c"
        strip "$tmp/pause"
        ctr="$(buildah from --pull=never scratch)"
        buildah copy --quiet --chmod 0755 "$ctr" "$tmp/pause" /pause >/dev/null
        # 65535: the conventional unprivileged user of the sandbox process.
        buildah config --entrypoint '["/pause"]' --user 65535:65535 \
            --label "$INPUTS_LABEL=$key" "$ctr"
        buildah commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
        rm -rf "$tmp"
    fi
    printf '%s\n' "$PAUSE_IMAGE"
}

build_all() {
    local base wheels operator trainer pause
    need buildah mmdebstrap runc gcc "$PYTHON"
    base="$(base_image)"
    wheels="$(wheelhouse)"
    operator="$(build_image operator "$base" "$wheels")"
    trainer="$(build_image trainer-cpu "$base" "$wheels")"
    pause="$(pause_image)"
    printf 'OPERATOR_IMAGE=%s\nTRAINER_IMAGE=%s\nPAUSE_IMAGE=%s\nBASE_IMAGE=%s\n' \
        "$operator" "$trainer" "$pause" "$base"
    printf 'export OPERATOR_IMAGE TRAINER_IMAGE PAUSE_IMAGE BASE_IMAGE\n'
}

# push REGISTRY: the operator and trainer images, built or cached, to
# REGISTRY/shufflenet/<name>:<tag> (the tag: the hash of the image's inputs). An image the
# registry already holds under that reference, with the same config, is not pushed again:
# buildah 1.28 always gzips layers for a registry, and its record of which compressed blobs a
# registry holds lives in /var/lib/containers, read-only here, so a second push would
# compress and send the gigabytes again. Prints shell assignments: REGISTRY, then
# <NAME>_IMAGE (the full reference), <NAME>_TAG and <NAME>_DIGEST (the manifest's digest)
# for OPERATOR and TRAINER.
push_all() {
    local tls=() registry="${1%/}" built var ref dest start
    [[ -n "$registry" && $# -eq 1 ]] || die "usage: $0 push REGISTRY (host[:port])"
    if [[ -n "${REGISTRY_CA:-}" ]]; then
        # buildah and skopeo read CA certificates (*.crt) from a directory.
        mkdir -p "$WORK/certs"
        cp "$REGISTRY_CA" "$WORK/certs/ca.crt"
        tls+=(--cert-dir "$WORK/certs")
    fi
    built="$(build_all)"
    eval "$built"
    printf 'REGISTRY=%s\n' "$registry"
    for var in OPERATOR TRAINER; do
        ref="${var}_IMAGE"
        ref="${!ref}"
        dest="$registry/${ref#localhost/}"
        start=$SECONDS
        if [[ "$(registry_config_digest "$dest" "${tls[@]}")" == "sha256:$(image_id "$ref")" ]]; then
            log "$dest: already in the registry"
        else
            buildah push --quiet "${tls[@]}" "$ref" "docker://$dest" >&2
            log "$dest: pushed in $((SECONDS - start)) s"
        fi
        skopeo inspect --raw "${tls[@]}" "docker://$dest" >"$WORK/manifest"
        printf '%s_IMAGE=%s\n%s_TAG=%s\n%s_DIGEST=sha256:%s\n' "$var" "$dest" "$var" \
            "${ref##*:}" "$var" "$(sha256sum "$WORK/manifest" | cut -d' ' -f1)"
    done
}

# registry_config_digest REF [TLS OPTION...]: the config digest of the manifest the registry
# holds under REF (empty when it has none).
registry_config_digest() {
    local ref=$1
    shift
    skopeo inspect --raw "$@" "docker://$ref" >"$WORK/manifest" 2>/dev/null || return 0
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["digest"])' \
        "$WORK/manifest"
}

# The config digest containerd holds under REF (empty when it has none).
containerd_config_digest() {
    local address="$1" ref="$2" manifest
    manifest="$(ctr --address "$address" -n k8s.io images ls "name==$ref" |
        awk 'NR == 2 { print $3 }')"
    [[ -n "$manifest" ]] || return 0
    ctr --address "$address" -n k8s.io content get "$manifest" |
        "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])'
}

# import --address SOCKET IMAGE...: into containerd's k8s.io namespace (the one the CRI
# serves kubelet from), skipping an image containerd already has under that name with the
# same content.
#
# Each image goes through an OCI layout kept in the cache per repository (trainer-cpu,
# operator, ...): skopeo writes only the layers the layout lacks, and the tar stream for
# `ctr import` carries only the blobs containerd lacks (the importer takes the others from
# its content store). After a code change that is the last layers, not gigabytes. Layers
# stay uncompressed: compressing gigabytes only to unpack them again on the same machine
# costs minutes of CPU.
import_images() {
    local address="" ref have want start
    while (($#)); do
        case "$1" in
        --address)
            address="$2"
            shift 2
            ;;
        --address=*)
            address="${1#*=}"
            shift
            ;;
        *) break ;;
        esac
    done
    [[ -n "$address" && $# -gt 0 ]] || die "usage: $0 import --address SOCKET IMAGE..."
    need ctr buildah skopeo
    for ref in "$@"; do
        have_image "$ref" || die "$ref: no such image in $IMAGES/storage"
        want="sha256:$(image_id "$ref")"
        have="$(containerd_config_digest "$address" "$ref")"
        if [[ "$have" == "$want" ]]; then
            log "$ref: already in containerd"
            continue
        fi
        start=$SECONDS
        import_image "$address" "$ref"
        log "$ref: imported in $((SECONDS - start)) s"
    done
}

import_image() {
    local address="$1" ref="$2" layout name blob
    local needed=() present=() send=(oci-layout index.json)
    name="${ref%:*}"
    layout="$IMAGES/oci/${name##*/}"
    mkdir -p "$layout"
    # One image per layout: the old index goes, its blobs stay for skopeo to reuse.
    rm -f "$layout/index.json"
    skopeo copy --quiet --dest-oci-accept-uncompressed-layers "containers-storage:$ref" \
        "oci:$layout:$ref"
    mapfile -t needed < <("$PYTHON" "$REPO/scripts/images/inputs.py" blobs "$layout")
    # Blobs of earlier builds that this image no longer uses.
    comm -23 <(cd "$layout" && find blobs -type f | sort) <(printf '%s\n' "${needed[@]}") |
        (cd "$layout" && xargs -r rm -f)
    mapfile -t present < <(ctr --address "$address" -n k8s.io content ls -q)
    for blob in "${needed[@]}"; do
        [[ " ${present[*]} " == *" sha256:${blob##*/} "* ]] || send+=("$blob")
    done
    log "$ref: sending $((${#send[@]} - 2)) of ${#needed[@]} blobs" \
        "($(cd "$layout" && du -shc "${send[@]}" | tail -n1 | cut -f1))"
    tar -C "$layout" -cf - "${send[@]}" |
        ctr --address "$address" -n k8s.io images import - >&2
}

# run IMAGE [ARG...]: podman run of an image of the store the way a pod runs it: uid 10001,
# read-only root filesystem, a tmpfs on /tmp, no network. The limits are explicit because
# podman's defaults (about a million open files) are more than some hosts let a container
# raise to.
run_image() {
    (($#)) || die "usage: $0 run IMAGE [ARG...]"
    need podman
    mkdir -p "$IMAGES/run/libpod"
    podman --runtime "$RUNTIME" --runtime-flag "root=$IMAGES/runc" --cgroup-manager cgroupfs \
        --events-backend none --tmpdir "$IMAGES/run/libpod" run --rm --read-only \
        --tmpfs /tmp --user 10001:10001 --network none \
        --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$@"
}

clean() {
    buildah rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$IMAGES"
}

main() {
    # Before isolate: installing packages writes the host's /var, read-only in there.
    if [[ -z "${SHUFFLENET_IMAGES_ISOLATED:-}" ]]; then
        case "${1:-build}" in
        build | env | push) need buildah mmdebstrap runc gcc skopeo "$PYTHON" ;;
        import) need ctr buildah skopeo ;;
        run) need podman ;;
        esac
    fi
    isolate "$@"
    setup_storage
    # Scratch space of this run (rootfs tarball, archives for containerd), gone at exit.
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    case "${1:-build}" in
    build | env) build_all ;;
    push)
        shift
        push_all "$@"
        ;;
    import)
        shift
        import_images "$@"
        ;;
    run)
        shift
        run_image "$@"
        ;;
    clean) clean ;;
    *) die "usage: $0 [build|env|push REGISTRY|import --address SOCKET IMAGE...|run IMAGE [ARG...]|clean]" ;;
    esac
}

main "$@"
