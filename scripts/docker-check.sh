#!/usr/bin/env bash
# End-to-end check of the container image (`make docker-check`; by hand, not in CI).
#
# Builds the image on a local Debian base (so no registry is needed), runs it on
# a free loopback port, waits for /ready, embeds one input per served modality,
# and checks that the process is not root and that torch is not in the image.
# Exits non-zero on the first failure; the container is always removed.
#
# Env: IMAGE (cpc-embed:latest), BASE_IMAGE (cpc-embed-base:bookworm; built with
# scripts/docker-base.sh when missing), READY_TIMEOUT (seconds, 300),
# PIP_CERT (CA bundle handed to pip in the build as a secret), PYTHON (host python
# with the dev install, .venv/bin/python).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-cpc-embed:latest}
BASE_IMAGE=${BASE_IMAGE:-cpc-embed-base:bookworm}
READY_TIMEOUT=${READY_TIMEOUT:-300}
PYTHON=${PYTHON:-.venv/bin/python}

log() { printf '\n== docker-check: %s\n' "$*" >&2; }
die() {
    printf 'docker-check: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ -x $PYTHON ]] || die "$PYTHON not found: run 'make test' once (it creates .venv)"

# --- a Docker daemon -------------------------------------------------------
# Reuse a running daemon; otherwise start one (as root) and leave it running
# for the next check: it is slow to start and holds the build cache.
if ! docker info >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "no Docker daemon answers, and starting one needs root"
    command -v dockerd >/dev/null || die "no dockerd: apt-get install -y docker.io"
    log "starting dockerd (log: /var/log/cpc-embed-dockerd.log)"
    nohup dockerd >/var/log/cpc-embed-dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up; see /var/log/cpc-embed-dockerd.log"
fi

# --- a BuildKit build command ----------------------------------------------
# The Dockerfile needs BuildKit (secret mounts). Docker >= 23 clients do that
# only through the buildx plugin; older clients (Debian's docker.io 20.10)
# have it built in. Use whichever is there.
BUILD=()
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker buildx build --load)
else
    while read -r client; do
        major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
        if [[ $major =~ ^[0-9]+$ ]] && ((major < 23)); then
            BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
            break
        fi
    done < <(type -ap docker)
fi
((${#BUILD[@]})) || die "no BuildKit: install the docker buildx plugin"

# --- base and image --------------------------------------------------------
if [[ $BASE_IMAGE == cpc-embed-base:* ]]; then
    BASE_TAG=$BASE_IMAGE scripts/docker-base.sh
fi

SECRET=()
CERT=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
# The host's CA bundle lets pip in the build through a TLS-inspecting proxy; as
# a build secret it is mounted for the pip steps only, never stored in a layer.
[[ -r $CERT ]] && SECRET=(--secret "id=pip_cert,src=$CERT")

TMP=$(mktemp -d /tmp/cpc-embed-check.XXXXXX)
CID=""
cleanup() {
    if [[ -n $CID ]]; then
        docker rm -f "$CID" >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

log "building $IMAGE on $BASE_IMAGE"
# Host network: the build's pip reaches PyPI the way the host does. The build's
# log is shown only when it fails.
if ! "${BUILD[@]}" --network host "${SECRET[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --target runtime -t "$IMAGE" . >"$TMP/build.log" 2>&1; then
    tail -n 60 "$TMP/build.log" >&2
    die "docker build"
fi
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
printf 'image %s: %s MB\n' "$IMAGE" "$((size / 1000000))"

# --- models ----------------------------------------------------------------

MOUNT=()
if compgen -G "models/*/bundle.json" >/dev/null; then
    log "serving the bundles baked into the image from models/"
else
    # No default bundles committed yet: export tiny untrained ones (the same
    # helper as tests/test_packaging.py) and mount them over /models, so the
    # check does not depend on models/ being filled.
    log "models/ has no bundles: exporting tiny ones into $TMP/models and mounting them"
    # (torch's export warnings are about the tiny models, not the image.)
    PYTHONWARNINGS=ignore "$PYTHON" -c 'import sys; from pathlib import Path
from tests.test_packaging import export_tiny_bundles
print("exported:", ", ".join(export_tiny_bundles(Path(sys.argv[1]))))' "$TMP/models" ||
        die "exporting tiny bundles"
    chmod -R a+rX "$TMP"
    MOUNT=(-v "$TMP/models:/models:ro")
fi

# --- run -------------------------------------------------------------------
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "running $IMAGE on 127.0.0.1:$PORT"
# A short health interval so the image's own HEALTHCHECK gets to run here.
CID=$(docker run -d --health-interval 3s --health-start-period 120s \
    -p "127.0.0.1:$PORT:8000" "${MOUNT[@]}" "$IMAGE") || die "docker run"

# Probes, embeddings and the health status, from the host side.
"$PYTHON" - "$PORT" "$READY_TIMEOUT" "$CID" <<'EOF' || { docker logs --tail 50 "$CID" >&2 || true; die "HTTP checks"; }
"""Wait for /ready, then POST one /embed per modality that /models lists."""

import base64
import io
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave

import numpy as np
from PIL import Image

port, timeout, cid = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"


def call(path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


deadline = time.monotonic() + timeout
status, ready = 0, {}
while time.monotonic() < deadline:
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", cid],
                           capture_output=True, text=True).stdout.strip()
    if state != "running":
        sys.exit(f"container is {state}")
    try:
        status, ready = call("/ready")
    except (OSError, ValueError):
        status = 0
    if status == 200:
        break
    time.sleep(1)
else:
    sys.exit(f"/ready not 200 within {timeout:.0f}s (last: {status} {ready})")
print(f"/ready 200 after {timeout - (deadline - time.monotonic()):.1f}s")
status, health = call("/health")
assert status == 200 and health == {"status": "ok"}, (status, health)

rate = 16000
t = np.arange(rate) / rate
pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
wav = io.BytesIO()
with wave.open(wav, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
png = io.BytesIO()
yy, xx = np.mgrid[0:64, 0:64]
Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)).save(png, "PNG")
inputs = {
    "text": ["hello world."],
    "audio": [base64.b64encode(wav.getvalue()).decode()],
    "image": [base64.b64encode(png.getvalue()).decode()],
}

status, models = call("/models")
assert status == 200, (status, models)
modalities = sorted({m["modality"] for m in models["models"]})
print("models:", ", ".join(f"{m['name']} ({m['modality']}, dims {m['dims']})" for m in models["models"]))
if not modalities:
    sys.exit("no models served")
for modality in modalities:
    status, out = call("/embed", {"modality": modality, "inputs": inputs[modality]})
    if status != 200:
        sys.exit(f"/embed {modality}: {status} {out}")
    vec = out["embeddings"][0]
    norm = math.sqrt(sum(v * v for v in vec))
    assert len(vec) == out["dim"] and abs(norm - 1) < 1e-3, (len(vec), out["dim"], norm)
    head = ", ".join(f"{v:+.3f}" for v in vec[:4])
    print(f"/embed {modality}: 200 model={out['model']} dim={out['dim']} |v|={norm:.3f} [{head}, ...]")

# The image's own HEALTHCHECK command, run by Docker (interval shortened above).
for _ in range(60):
    health = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                            capture_output=True, text=True).stdout.strip()
    if health != "starting":
        break
    time.sleep(1)
print("docker health:", health)
if health != "healthy":
    sys.exit(f"HEALTHCHECK says {health}")
EOF

# --- what runs inside ------------------------------------------------------
uid=$(docker exec "$CID" id -u)
printf 'container user: %s (uid %s)\n' "$(docker exec "$CID" id -un)" "$uid"
[[ $uid != 0 ]] || die "the container runs as root"
if docker exec "$CID" python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
    die "torch is importable in the image"
fi
echo "torch: not installed (good)"
docker exec "$CID" sh -c 'test -w /data && ! test -w /models' || die "/data should be writable and /models not"
echo "/data writable, /models read-only"

log "stopping the container"
docker stop -t 10 "$CID" >/dev/null
docker rm "$CID" >/dev/null
CID=""
log "OK"
