#!/usr/bin/env bash
# Sets up .venv in the project root.   scripts/setup.sh run   -> the library, its demo data and search
#                                      scripts/setup.sh test  -> plus the reference implementations and pytest
#
# Which torch: dualtower needs torch >= 2.4 and never torchvision. The tests compare against open_clip_torch,
# transformers and timm, which import torchvision, so the test environment takes a matching torch/torchvision
# pair (torch 2.14.1 + torchvision 0.29.1). The run environment takes the small CPU build torch 2.13.0 when
# the index has it, and otherwise whatever torch pip picks. An existing torch is kept, so running `run` after
# `test` never breaks the test environment's torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }

case "$mode" in
  run)
    .venv/bin/python -c "import torch" 2>/dev/null || pip "torch==2.13.0" || pip "torch>=2.4"
    pip -e ".[demo,search]"
    ;;
  test)
    .venv/bin/python -c "import torch, torchvision" 2>/dev/null || pip "torch==2.14.1" "torchvision==0.29.1"
    pip -e ".[test]" -c scripts/test-constraints.txt
    # clip-retrieval's own ClipClient, the peer of the /knn-service routes: its package pins numpy<2, pyarrow<16
    # and open_clip<3, which this environment cannot take, and the client itself needs only requests
    pip --no-deps "clip-retrieval==2.45.0"
    ;;
  *)
    echo "usage: scripts/setup.sh run|test" >&2
    exit 2
    ;;
esac
