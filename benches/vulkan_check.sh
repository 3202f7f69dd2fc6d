#!/usr/bin/env bash
# The GPU code path next to the CPU's: builds the models bench with `--features vulkan`,
# trains and scores the shipped wide & deep model on a small world twice, on the CPU backend
# and through Vulkan, and fails unless the two holdout AUCs agree within 0.005. Needs a GPU:
# without one it picks Mesa's CPU driver, lavapipe (Debian: mesa-vulkan-drivers), which up to
# Mesa 25.0.7 segfaults compiling Burn's kernels (benches/README.md).
#
#     bash benches/vulkan_check.sh                 # 20,000 users; USERS=... for another size
#
# Takes a cold build of Burn's wgpu stack the first time (see benches/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-20000}
root=${ROOT:-/tmp/redflower-vulkan-check-$users}
tolerance=${TOLERANCE:-0.005}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/redflower/target}
# lavapipe's driver file (Mesa 25 names it lvp_icd.json, Mesa 22 lvp_icd.x86_64.json)
lavapipe=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -1)
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -n "$lavapipe" ]; then
    export VK_DRIVER_FILES=$lavapipe
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

bench=$(bash benches/gpu_run.sh build)
out=$(mktemp -d)
for device in cpu vulkan; do
    echo "== $device"
    "$bench" --users "$users" --root "$root" --device "$device" --no-baselines \
        --score-passes 1 --json "$out/$device.json"
done
python3 - "$out" "$tolerance" <<'PY'
import json, sys
out, tolerance = sys.argv[1], float(sys.argv[2])
cpu, vulkan = (json.load(open(f"{out}/{d}.json"))[0] for d in ("cpu", "vulkan"))
gap = abs(cpu["holdout_auc"] - vulkan["holdout_auc"])
print(f"holdout AUC: cpu {cpu['holdout_auc']:.4f}, vulkan {vulkan['holdout_auc']:.4f}, gap {gap:.4f} (allowed {tolerance})")
print(f"train samples/s: cpu {cpu['train_samples_per_s']:.0f}, vulkan {vulkan['train_samples_per_s']:.0f}")
sys.exit(0 if gap <= tolerance else 1)
PY
