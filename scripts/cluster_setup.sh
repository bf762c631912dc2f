#!/usr/bin/env bash
# Sets up one node of an activeda Ray cluster (head or worker) from the working tree that `ray up`
# synced to this node (cluster.yaml, cluster.local.yaml run it as a setup command):
#
#   1. optionally mounts shared storage (an NFS export such as AWS EFS) at the same path on every node:
#      Ray Train/Tune checkpoints, the source-model cache and the label stores live under the sweep's
#      output_dir, which must be on it as soon as a cluster has more than one node;
#   2. creates a venv and installs the project editable from the synced tree, with the versions pinned
#      in scripts/cluster-constraints.txt (identical on every node);
#   3. makes later `ray exec` / `ray attach` shells use that venv and Ray token authentication.
#
# Environment (all optional):
#   ACTIVEDA_SHARED_NFS  NFS export to mount, e.g. fs-0123456789abcdef0.efs.us-west-2.amazonaws.com:/
#                        (empty: no mount; then use a single node or mount storage yourself)
#   ACTIVEDA_SHARED_DIR  where to mount it (default /mnt/activeda); pass --output-dir $DIR/runs to sweeps
#   ACTIVEDA_DATA_DIR    the datasets' folder, made writable for this user (default /data; empty: skip):
#                        `activeda cluster stage --dest` copies datasets there, at the same path on every node
#   ACTIVEDA_VENV        the venv (default ~/activeda-venv)
#   ACTIVEDA_PYTHON      the interpreter that creates the venv (default python3; must be >= 3.10)
set -euo pipefail

tree="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ACTIVEDA_VENV:-$HOME/activeda-venv}"
python="${ACTIVEDA_PYTHON:-python3}"
shared_nfs="${ACTIVEDA_SHARED_NFS:-}"
shared_dir="${ACTIVEDA_SHARED_DIR:-/mnt/activeda}"
data_dir="${ACTIVEDA_DATA_DIR-/data}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" \
        || { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }
}

# 1. Shared storage.
if [ -n "$shared_nfs" ]; then
    if ! mountpoint -q "$shared_dir"; then
        command -v mount.nfs4 >/dev/null 2>&1 || apt_install nfs-common
        as_root mkdir -p "$shared_dir"
        as_root mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport \
            "$shared_nfs" "$shared_dir"
    fi
    [ -w "$shared_dir" ] || as_root chown "$(id -u):$(id -g)" "$shared_dir"
    echo "cluster_setup: shared storage $shared_nfs at $shared_dir"
fi

# 1b. The datasets' folder: the same path on every node as in the configs (data.source.root: /data/gta5).
if [ -n "$data_dir" ] && [ ! -w "$data_dir" ]; then
    as_root mkdir -p "$data_dir"
    as_root chown "$(id -u):$(id -g)" "$data_dir"
fi

# 2. The venv and the project, pinned.
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "cluster_setup: activeda needs Python >= 3.10 on every node, but '$python' is" \
         "$("$python" -V 2>&1 || echo missing); use an image with a newer python3 or set ACTIVEDA_PYTHON" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$tree/scripts/cluster-constraints.txt" \
    -e "$tree" "ray[default,train,tune]"

# 3. Shells that Ray opens later (`ray exec`, `ray attach`, `ray down`'s `ray stop`) source ~/.bashrc.
marker="# activeda cluster node (scripts/cluster_setup.sh)"
if ! grep -qF "$marker" "$HOME/.bashrc" 2>/dev/null; then
    {
        echo ""
        echo "$marker"
        echo "export RAY_AUTH_MODE=token"
        echo "export PATH=\"$venv/bin:\$PATH\""
    } >> "$HOME/.bashrc"
fi

"$venv/bin/python" -c 'import sys, ray, torch, mlflow, orchestrator
print(f"cluster_setup: python {sys.version.split()[0]}, ray {ray.__version__}, torch {torch.__version__}, "
      f"mlflow {mlflow.__version__}, activeda from {orchestrator.__path__[0]}")'
