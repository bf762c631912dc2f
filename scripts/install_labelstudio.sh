#!/usr/bin/env bash
# Installs Label Studio from the package registry into a venv of its own, .venv-labelstudio at the
# repository root (its pinned dependencies, Django among them, clash with the project's). The product
# never installs or downloads it at run time: scripts/labelstudio_roundtrip.sh and people who want to
# label in Label Studio use this venv. Idempotent: does nothing when the venv already has this version.
#
#   bash scripts/install_labelstudio.sh            # LABEL_STUDIO_VERSION=1.23.2 by default
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
VENV="${LABEL_STUDIO_VENV:-.venv-labelstudio}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/label-studio" ] &&
    [ "$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("label-studio"))' 2>/dev/null)" = "$VERSION" ]; then
    echo "install_labelstudio: label-studio $VERSION already in $VENV"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$VERSION"
echo "install_labelstudio: installed label-studio $VERSION into $VENV"
