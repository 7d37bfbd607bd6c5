#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 and import it as
# $BASE_TAG (default cpc-embed-base:bookworm).
#
# Why: on machines with no image registry, `FROM python:3.11-slim` cannot be
# pulled. debootstrap only needs a Debian mirror, and the result can stand in
# for the official slim image via `--build-arg BASE_IMAGE=cpc-embed-base:bookworm`.
# What the Dockerfile needs from a base is `python3` with the venv module and
# CA certificates; they are installed here so the Dockerfile needs no apt step.
#
# Usage: scripts/docker-base.sh [--force]    (root, debootstrap, a running dockerd)
# Env:   BASE_TAG, DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (default: the mirror apt uses)
set -euo pipefail

BASE_TAG=${BASE_TAG:-cpc-embed-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}

log() { printf 'docker-base: %s\n' "$*" >&2; }

if [[ ${1:-} != --force ]] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "$BASE_TAG exists; reusing it (pass --force to rebuild)"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "debootstrap needs root"
    exit 1
fi
command -v debootstrap >/dev/null || {
    log "debootstrap is missing: apt-get install -y debootstrap"
    exit 1
}

# Use the same Debian mirror apt is configured with, so a machine that can only
# reach its own mirror (or a snapshot) still works. Both the deb822 (*.sources)
# and the one-line (*.list) formats are read; the first main-archive URI wins.
detect_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk '
            /^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
            /^[[:space:]]*deb[[:space:]]/ {
                for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { print $i; break }
            }' "$f" | grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return
        fi
    done
    printf '%s\n' "http://deb.debian.org/debian"
}
MIRROR=${DEBIAN_MIRROR:-$(detect_mirror)}

ROOTFS=$(mktemp -d /tmp/cpc-embed-rootfs.XXXXXX)
# The rootfs holds device nodes and root-owned files: always clean it up.
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS (a few minutes)"
# minbase: dpkg, apt and the essentials only. python3-venv brings ensurepip
# (the Debian python3 has no pip of its own); ca-certificates lets pip reach
# PyPI over HTTPS from a build.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

# Slim it the way the official slim images are: no package lists, no docs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/tmp/*
# Let apt inside the image use the same mirror for later apt steps.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"

log "importing as $BASE_TAG"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$BASE_TAG" >/dev/null
docker image ls "$BASE_TAG"
