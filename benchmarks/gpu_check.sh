#!/usr/bin/env bash
# The one prepared check for a bare machine with one GPU: versions and the measured matmul peak, the
# device-aware tests on CUDA, training and sampling throughput and MFU beside diffusers, a real train.py run.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--budget SECONDS] [--dry-run]
#
# It finishes within --budget seconds (default 470, under 8 minutes): every step has its own time limit
# (`timeout`), capped by what is left of the budget, and a step that runs out of time or fails is recorded
# and the next one starts. What finished is kept: DIR/summary.md and summary.json are rewritten after every
# step, and the benchmarks save their results after every measurement.
#
# Files in DIR (default $OUT where the device tool sets it, else benchmarks/results/gpu-check): summary.md,
# summary.json, gpu_check.log (every step's output), bench-eager.json, bench-compiled.json, train-metrics.csv.
#
# Packages the machine lacks (diffusers, omegaconf, webdataset, braceexpand; no wandb: the run logs to CSV)
# are installed from wheels in --wheels DIR (default .whl), without an index. Fill that folder on a machine
# with a network, for the GPU machine's Python (all four are pure-Python wheels):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       diffusers==0.42.1 omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7
#
# --dry-run swaps cuda for cpu and the configs for tiny ones and skips the compiled benchmark (minutes to
# compile on a CPU): it checks the script, not the GPU (tests/test_gpu_check.py runs it).

set -u
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-benchmarks/results/gpu-check}"
WHEELS=".whl"
BUDGET=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$BUDGET" ] || BUDGET=$([ "$DRY" = 1 ] && echo 150 || echo 470)

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"  # checkpoints and caches; what matters is copied out
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"
: > "$OUT_DIR/gpu_check.log"
START=$SECONDS

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    TEST_ARGS=(--device cpu -k ddpm_table tests/test_training_dtypes.py)
    # fp32: bf16 autocast is many times slower on CPUs without bf16 units.
    BENCH_ARGS=(--device cpu --configs dit-tiny-16 --precisions fp32 --repeats 1 --warmup 1
                --repeat-seconds 0.01 --sample-batch 2 --matmul-size 128 --threads 1)
    TRAIN_ARGS=(training.accelerator=cpu training.max_steps=4 training.precision=32-true
                training.compile=false configs/model/unet-tiny.yaml
                "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}"
                data.resolution=8 data.batch_size=8 training.log_every_n_steps=1)
else
    DEVICE=cuda
    TEST_ARGS=(--device cuda tests)
    # The ~35M-parameter UNet (Ho et al.'s CIFAR-10 model) at 32x32 and DiT-B/2 on 32x32x4 latents, in bf16.
    BENCH_ARGS=(--device cuda --configs dit-b-2-latent32,unet-cifar10-32 --precisions bf16 --repeats 3
                --warmup 2 --repeat-seconds 0.5 --sample-batch 256)
    TRAIN_ARGS=(training.accelerator=gpu training.max_steps=300 training.precision=bf16-mixed
                training.compile=true configs/model/unet-small.yaml data.resolution=32 data.batch_size=256
                training.log_every_n_steps=25)
fi

summarise() {
    "$PY" -m benchmarks.gpu_check_summary --work "$WORK" --out "$OUT_DIR" --dry-run "$DRY" \
        >> "$OUT_DIR/gpu_check.log" 2>&1 || echo "gpu_check: the summary failed (see gpu_check.log)" >&2
}

# step NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (and what is left of the budget).
step() {
    local name="$1" limit="$2" left rc status began
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped\t0\t%s\tno time left in the %s s budget\n' "$name" "$limit" "$BUDGET" >> "$STEPS"
        summarise
        return
    fi
    echo "=== $name (at most $limit s): $*" | tee -a "$OUT_DIR/gpu_check.log"
    began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status="failed (exit $rc)" ;;
    esac
    cat "$WORK/$name.log" >> "$OUT_DIR/gpu_check.log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" "$limit" "$*" >> "$STEPS"
    echo "=== $name: $status in $((SECONDS - began)) s" | tee -a "$OUT_DIR/gpu_check.log"
    summarise
}

skip() {  # skip NAME REASON
    printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >> "$STEPS"
    summarise
}

step setup 60 "$PY" -m benchmarks.gpu_check_summary --install "$WHEELS" --target "$WORK/site"
[ -d "$WORK/site" ] && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"

step info 45 "$PY" -m benchmarks.gpu_check_summary --info "$WORK/info.json" --device "$DEVICE" \
    --dry-run "$DRY"
# A test module that cannot be imported there must not stop the device tests of the others.
step tests 120 "$PY" -m pytest -m device -q -p no:cacheprovider --continue-on-collection-errors \
    "${TEST_ARGS[@]}"
# bf16 training of both networks, ours and diffusers' at equal parameters, then DDIM-50 and DPM-Solver++-20
# at batch 256 and the byte-identical check of our sampler at two batch sizes.
step bench-eager 120 "$PY" -m benchmarks "${BENCH_ARGS[@]}" --compile off \
    --samplers ddim,dpmpp_2m --no-grad-checkpointing --no-loader --sample-repeats 1 --out "$WORK/bench-eager"
# A real run: Lightning's loop, the data module with loader workers, validation, a sample grid, checkpoints.
step train 110 "$PY" train.py configs/experiment/demo.yaml training.devices=1 \
    training.checkpoint_every_n_steps=300 training.val_every_n_steps=300 training.sample_every_n_steps=300 \
    logging.logger=csv logging.progress_bar=false "run_dir=$WORK/train" "${TRAIN_ARGS[@]}"
if [ "$DRY" = 1 ]; then
    skip bench-compiled "dry run: torch.compile takes minutes per network on a CPU"
else
    step bench-compiled 200 "$PY" -m benchmarks "${BENCH_ARGS[@]}" --compile on \
        --no-sampling --no-grad-checkpointing --no-loader --out "$WORK/bench-compiled"
fi
echo "gpu_check: done in $((SECONDS - START)) s; summary in $OUT_DIR/summary.md"
