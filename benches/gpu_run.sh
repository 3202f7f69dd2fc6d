#!/usr/bin/env bash
# The models bench on a lent GPU, in one call, so the device time goes to measuring.
#
#     bash benches/gpu_run.sh build   # here: build with --features vulkan, print the path
#     bash benches/gpu_run.sh pack    # here: build, strip, compress
#                                     # into .carry/ (git-ignored)
#     bash benches/gpu_run.sh run     # there: through the tool library's `device` entry,
#                                     # carrying .carry and .gl (the Vulkan loader, see its
#                                     # README); results land in $OUT
#
# `run` trains and scores on the shipped settings through Vulkan next to PyTorch on CUDA
# (same rows, split, epochs and batch size), profiles the steps for two epochs (LAYOUTS="flat
# padded" for both batch layouts), records cubecl's per-kernel times for an epoch, then trains
# on the CPU backend of the same binary for the AUC reference (CPU=0 skips it). Each part has a
# time limit (LIMIT_MAIN, LIMIT_PROFILE, LIMIT_CPU, in seconds); PROFILES=0 skips the profiles.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-200000}

case "${1:-}" in
build)
    # prints the path of the models bench built with --features vulkan (PROFILE: dev, or
    # release for the numbers a production build gives)
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/redflower/target}
    cargo build --profile "${PROFILE:-dev}" --features vulkan --bench models --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message["target"]["name"] == "models":
        print(message["executable"])'
    ;;
pack)
    bench=$(bash "$0" build)
    mkdir -p .carry
    strip -o .carry/models "$bench"
    xz -f -T0 -6 .carry/models
    ls -l .carry
    ;;
run)
    out=${OUT:-/tmp/gpu-run}
    mkdir -p "$out"
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    xz -dc .carry/models.xz >/tmp/models
    chmod +x /tmp/models
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 -c 'import torch; print("torch", torch.__version__)' | tee -a "$out/gpu.txt"
    common=(--users "$users" --root "/tmp/world-$users")
    # every part has a time limit, so one slow part cannot eat the device time of the rest
    echo "== vulkan, shipped settings, next to PyTorch on CUDA"
    timeout "${LIMIT_MAIN:-300}" /tmp/models "${common[@]}" --device vulkan --torch-device cuda \
        --json "$out/vulkan.json" 2>&1 | tee "$out/vulkan.log" || echo "== failed or out of time"
    if [ "${PROFILES:-1}" = 1 ]; then
        echo "== step profiles (a device sync after each phase)"
        for layout in ${LAYOUTS:-flat}; do
            REDFLOWER_BATCH_LAYOUT=$layout REDFLOWER_PROFILE_STEPS=1 RUST_LOG=redflower=info \
                timeout "${LIMIT_PROFILE:-60}" /tmp/models "${common[@]}" --device vulkan \
                --no-baselines --epochs 2 --score-passes 1 2>&1 |
                grep -E "step profile|redflower \(Burn" | tee "$out/profile-$layout.log" ||
                echo "== failed or out of time"
        done
        echo "== kernel times, one epoch (cubecl's profiler)"
        CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/kernels.log \
            timeout "${LIMIT_PROFILE:-60}" /tmp/models "${common[@]}" --device vulkan \
            --no-baselines --epochs 1 --score-passes 1 2>&1 | grep -E "redflower \(Burn" ||
            echo "== failed or out of time"
        [ -f /tmp/kernels.log ] && gzip -c /tmp/kernels.log >"$out/kernels.log.gz"
    fi
    if [ "${CPU:-1}" = 1 ]; then
        echo "== cpu backend of the same binary (the AUC reference)"
        timeout "${LIMIT_CPU:-150}" /tmp/models "${common[@]}" --device cpu --no-baselines \
            --json "$out/cpu.json" 2>&1 | tee "$out/cpu.log" || echo "== failed or out of time"
    fi
    ;;
*)
    echo "usage: $0 build|pack|run" >&2
    exit 2
    ;;
esac
