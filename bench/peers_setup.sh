#!/usr/bin/env bash
# Create the peer tools' virtualenvs for bench/peers.py (idempotent: an existing venv whose package
# imports is left alone; delete the folder to rebuild it).
#
#   bash bench/peers_setup.sh            # both peers
#   bash bench/peers_setup.sh cryodrgn   # or only one: cryodrgn | recovar
#
# bench/.venv-cryodrgn: cryodrgn (default 4.3.1) on a CPU-only torch wheel.
# bench/.venv-recovar:  recovar (default 1.0.5; it pins jax 0.9.0.1, jax_finufft 0.1.0, ...), CPU jax.
# Override with CRYODRGN_SPEC / RECOVAR_SPEC / TORCH_SPEC / PYTHON (the base interpreter, >= 3.11
# for recovar). The CPU torch wheel comes from TORCH_INDEX (default: PyTorch's CPU index); where that
# index cannot be reached, pip's ordinary indexes and find-links are used instead (on the project's
# VM a torch-*+cpu wheel lies in /opt/wheels).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
base_python="${PYTHON:-python3}"
cryodrgn_spec="${CRYODRGN_SPEC:-cryodrgn==4.3.1}"
recovar_spec="${RECOVAR_SPEC:-recovar==1.0.5}"
torch_spec="${TORCH_SPEC:-torch}"
torch_index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

make_venv() {  # folder
    if [ ! -x "$1/bin/python" ]; then
        "$base_python" -m venv "$1"
    fi
    "$1/bin/python" -m pip install --quiet --upgrade pip wheel
}

setup_cryodrgn() {
    local venv="$here/.venv-cryodrgn"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import cryodrgn, torch" 2>/dev/null; then
        echo "cryodrgn: $venv already set up"
    else
        make_venv "$venv"
        # A CPU-only torch first, so that cryodrgn's `torch>=2` does not pull a CUDA build.
        if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
            local local_wheel
            local_wheel="$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)"
            if [ -n "$local_wheel" ]; then
                "$venv/bin/python" -m pip install "$local_wheel"
            elif ! "$venv/bin/python" -m pip install --timeout 20 --retries 1 --index-url "$torch_index" "$torch_spec"; then
                echo "cryodrgn: $torch_index not reachable; installing $torch_spec from the default index" >&2
                "$venv/bin/python" -m pip install "$torch_spec"
            fi
        fi
        "$venv/bin/python" -m pip install "$cryodrgn_spec"
    fi
    "$venv/bin/python" -c "import cryodrgn, torch; print('cryodrgn', cryodrgn.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
}

setup_recovar() {
    local venv="$here/.venv-recovar"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import recovar, jax" 2>/dev/null; then
        echo "recovar: $venv already set up"
    else
        make_venv "$venv"
        "$venv/bin/python" -m pip install "$recovar_spec"
    fi
    "$venv/bin/python" -c "import importlib.metadata as m, jax; print('recovar', m.version('recovar'), 'jax', jax.__version__, 'devices', jax.devices())"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(cryodrgn recovar)
for target in "${targets[@]}"; do
    case "$target" in
        cryodrgn) setup_cryodrgn ;;
        recovar) setup_recovar ;;
        *) echo "unknown peer: $target (cryodrgn | recovar)" >&2; exit 2 ;;
    esac
done
