#!/usr/bin/env bash
# The committed downstream experiment on Fashion-MNIST (offline, CPU): one diffusion model per benchmark cell
# (k real images per class x seed), trained on exactly that cell's k-shot images, exported, then the benchmark.
#
#   bash scripts/fashion_downstream.sh                      # closed-set: each model sees only its k labelled images
#   POOL=1 bash scripts/fashion_downstream.sh               # + pretrain once on the unlabelled pool, fine-tune per cell
#   KS="10 50" SEEDS="0 1 2" JOBS=2 bash scripts/fashion_downstream.sh
#
# Cells run JOBS at a time, one CPU thread each (faster than one process on every core for these small
# networks). Finished steps are skipped on a re-run (train resumes, export resumes), so a killed run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KS=${KS:-"10 25 50 100"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
JOBS=${JOBS:-2}
POOL=${POOL:-0}
EXP=configs/experiment/fashion-downstream.yaml
export OMP_NUM_THREADS=1 WANDB_MODE=${WANDB_MODE:-offline}

cell() {  # k seed [prefix init_from]: train (or fine-tune) and export one cell's model
    local k=$1 seed=$2 prefix=${3:-fashion} init=${4:-}
    local name="$prefix-k$k-s$seed"
    local extra=()
    [ -n "$init" ] && extra=(configs/experiment/fashion-finetune.yaml "training.init_from=$init")
    if [ ! -f "runs/$name/model.safetensors" ]; then
        $PY train.py "$EXP" "${extra[@]}" "name=$name" "data.per_class_limit=$k" "data.seed=$seed" \
            training.resume=auto logging.progress_bar=false > "runs/$name.log" 2>&1
    fi
    # The candidate sets the benchmark chooses among on validation (eval.downstream.synthetic lists them):
    # no guidance, guidance 2, and variations of the cell's own k-shot images at SDEdit strength 0.3 / 0.5 / 0.7.
    local candidate
    for candidate in "export" "export-g2 sampling.guidance_scale=2.0" \
        "export-sde30 export.source_images=train export.strength=0.3" \
        "export-sde50 export.source_images=train export.strength=0.5" \
        "export-sde70 export.source_images=train export.strength=0.7"; do
        set -- $candidate
        local dir=$1; shift
        [ "$prefix" != fashion ] && [ "$dir" != export ] && continue  # the pool run: one set (see fashion-finetune.yaml)
        $PY sample.py "runs/$name/model.safetensors" "export.out_dir=runs/$name/$dir" "$@" >> "runs/$name.log" 2>&1
    done
    echo "cell $name done"
}
export -f cell
export PY EXP
mkdir -p runs

if [ "$POOL" = 1 ]; then
    # The unlabelled pool: every training image outside the validation holdout, labels ignored.
    if [ ! -f runs/fashion-pool/model.safetensors ]; then
        OMP_NUM_THREADS=$JOBS $PY train.py configs/experiment/fashion-pool.yaml training.resume=auto \
            logging.progress_bar=false > runs/fashion-pool.log 2>&1
    fi
fi

for k in $KS; do for seed in $SEEDS; do
    echo "$k $seed fashion"
    [ "$POOL" = 1 ] && echo "$k $seed fashion-pool runs/fashion-pool/model.safetensors"
done; done | xargs -P "$JOBS" -L 1 bash -c 'cell "$@"' _

ks="[${KS// /,}]"; seeds="[${SEEDS// /,}]"
OMP_NUM_THREADS=$JOBS $PY -m diffaug eval downstream "$EXP" "eval.downstream.ks=$ks" "eval.downstream.seeds=$seeds"
if [ "$POOL" = 1 ]; then
    OMP_NUM_THREADS=$JOBS $PY -m diffaug eval downstream "$EXP" "eval.downstream.ks=$ks" "eval.downstream.seeds=$seeds" \
        "eval.downstream.synthetic=['runs/fashion-pool-k{k}-s{seed}/export']" eval.out_dir=runs/fashion-downstream/eval-pool
fi
