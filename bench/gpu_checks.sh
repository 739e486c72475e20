#!/usr/bin/env bash
# The GPU measurements behind bench/RESULTS.md and the README's GPU figures, one command per topic:
#
#   bash bench/gpu_checks.sh speed                  # ours vs timm (compiled, eager), profile, Lightning overhead, host syncs, BN folding, more sizes
#   bash bench/gpu_checks.sh cifar DATA [ARGS...]   # configs/cifar10.yaml on a CIFAR-10 JPEG folder (or its .tar.gz)
#   bash bench/gpu_checks.sh pipeline               # ImageNet-sized JPEGs: loader img/s, folder fit vs synthetic fit, host syncs
#
# Run from the repository root. Output goes to $OUT (default outputs/gpu_checks/<topic>): one log per
# step plus summary.md. A step that fails or passes its time limit is recorded and the next one starts.
# BUDGET_S (default 540) bounds the whole run: steps that no longer fit in it are skipped, so the
# most important step of each topic comes first. ONLY="NAME ..." runs just the named steps (the
# names are those in summary.md, e.g. ONLY="c0_compiled c0_host_syncs"). ARGS are extra `cli.py fit`
# overrides for the CIFAR run (for example --trainer.max_epochs=60).
#
# Without jsonargparse, huggingface_hub or simplejpeg installed, wheels in .whl/ are installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
topic=${1:?usage: bash bench/gpu_checks.sh speed|cifar|pipeline [DATA] [ARGS...]}
case $topic in
  speed|cifar|pipeline) ;;
  *) echo "unknown topic '$topic'; choose speed, cifar or pipeline" >&2; exit 2 ;;
esac
OUT=${OUT:-outputs/gpu_checks/$topic}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import jsonargparse, huggingface_hub, simplejpeg" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
# Fail in seconds, not after every step has failed: the GPU machine has no network to install from.
missing=$(python3 - <<'PY'
import importlib.util
names = ["torch", "torchvision", "lightning", "torchmetrics", "jsonargparse", "tensorboard", "timm", "yaml", "cv2",
         "huggingface_hub", "tqdm", "packaging", "simplejpeg"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)
if [[ -n $missing ]]; then
  echo "missing Python packages: $missing (carry their wheels in .whl/: see the header of this script)" >&2
  exit 3
fi
summary=$OUT/summary.md
{ echo "# gpu_checks $topic, $(date -u +%F\ %H:%M) UTC"; echo
  python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; echo; } > "$summary"

# step NAME LIMIT_S COMMAND...: run COMMAND under a time limit, log it, and record its outcome.
step() {
  local name=$1 limit=$2; shift 2
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then
    echo "- $name: not selected (ONLY=$ONLY)" >> "$summary"; return
  fi
  local left=$((BUDGET_S - SECONDS))
  if ((left < limit)); then
    echo "- $name: skipped, ${left}s of the budget left (needs ${limit}s)" >> "$summary"; return
  fi
  local start=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "- $name: exit $rc after $((SECONDS - start))s: \`$*\`" >> "$summary"
  grep -E '^\|' "$OUT/$name.log" >> "$summary" && echo >> "$summary"
}

bench_throughput() { python3 -m bench.throughput --precision bf16 --channels-last "$@"; }

case $topic in
  speed)
    step c0_compiled 330 bench_throughput --model coatnet_0 --batch-size 256 --img-size 224 --compile --append-results
    step c0_eager 90 bench_throughput --model coatnet_0 --batch-size 256 --img-size 224 --append-results
    step c0_profile 90 python3 -m bench.profile_step --model coatnet_0 --batch-size 256 --img-size 224 \
      --precision bf16 --channels-last
    step c0_lightning_overhead 240 python3 -m bench.lightning_overhead --model coatnet_0 --batch-size 256 \
      --img-size 224 --precision bf16 --channels-last --compile
    step c0_host_syncs 120 python3 -m bench.host_syncs --config configs/coatnet0.yaml --trainer.devices=1 \
      --trainer.strategy=auto --trainer.accumulate_grad_batches=1 --trainer.log_every_n_steps=5 \
      --trainer.default_root_dir=/tmp/gpu_checks_syncs --trainer.logger=false --trainer.enable_progress_bar=false \
      --data=datamodules.SyntheticDataModule --data.init_args.num_classes=1000 --data.init_args.image_size=224 \
      --data.init_args.train_size=4096 --data.init_args.batch_size=256 --data.init_args.num_workers=8
    step c0_fold_bn 150 python3 -m bench.fold_batchnorm --model coatnet_0 --batch-size 256 --img-size 224 \
      --precision bf16 --channels-last --compile
    step c1_eager 90 bench_throughput --model coatnet_1 --batch-size 256 --img-size 224 --append-results
    step c2_eager 90 bench_throughput --model coatnet_2 --batch-size 128 --img-size 224 --append-results
    step c0_384_eager 90 bench_throughput --model coatnet_0 --timm-name coatnet_0_224 --batch-size 64 --img-size 384 \
      --append-results
    step c0_grad_checkpointing 60 bench_throughput --model coatnet_0 --no-timm --batch-size 256 --img-size 224 \
      --grad-checkpointing --append-results
    step c0_grad_checkpointing_s1_s2 60 bench_throughput --model coatnet_0 --no-timm --batch-size 256 --img-size 224 \
      --grad-checkpointing 0 1 --append-results
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
  cifar)
    data=${2:?usage: bash bench/gpu_checks.sh cifar DATA_DIR_OR_TAR_GZ [ARGS...]}
    shift 2
    if [[ -f $data ]]; then
      mkdir -p /tmp/cifar10-jpeg && tar -xzf "$data" -C /tmp/cifar10-jpeg && data=/tmp/cifar10-jpeg
    fi
    step cifar10_fit $((BUDGET_S - SECONDS - 30)) python3 cli.py fit --config configs/cifar10.yaml \
      --config configs/data/cifar10_folder.yaml --data.init_args.root="$data" \
      --trainer.logger.init_args.save_dir="$OUT/logs" --trainer.enable_progress_bar=false "$@"
    python3 -m bench.scalars "$OUT/logs" --csv "$OUT/cifar10_curves.csv" >> "$summary" 2>&1
    ;;
  pipeline)
    jpegs=/tmp/imagenet-like
    step loader_vs_timm 150 python3 -m bench.loader_vs_timm --num-images 1024 --large-images 128 --rounds 3
    step loader 200 python3 -m bench.data_pipeline --num-images 4096 --workers 8 15 --batch-size 256 --root "$jpegs"
    fit=(python3 cli.py fit --config configs/coatnet0.yaml --trainer.devices=1 --trainer.strategy=auto
      --trainer.accumulate_grad_batches=1 --trainer.max_epochs=3 --trainer.limit_val_batches=0
      --trainer.log_every_n_steps=5 --throughput.window=5 --trainer.enable_progress_bar=false
      --trainer.default_root_dir=/tmp/gpu_checks_fit --model.compile=true)
    step fit_folder_gpu_decode 170 "${fit[@]}" --trainer.logger.init_args.save_dir="$OUT/logs_folder" \
      --data.init_args.root="$jpegs" --data.init_args.val_dir=train --data.init_args.num_classes=4 \
      --data.init_args.decode=gpu --data.init_args.batch_size=256 --data.init_args.num_workers=15
    step fit_synthetic 170 "${fit[@]}" --trainer.logger.init_args.save_dir="$OUT/logs_synthetic" \
      --data=datamodules.SyntheticDataModule --data.init_args.num_classes=4 --data.init_args.image_size=224 \
      --data.init_args.train_size=4096 --data.init_args.val_size=256 --data.init_args.test_size=256 \
      --data.init_args.batch_size=256 --data.init_args.num_workers=8
    step fit_folder_gpu_decode_one_stream 170 "${fit[@]}" --trainer.logger.init_args.save_dir="$OUT/logs_one_stream" \
      --data.init_args.root="$jpegs" --data.init_args.val_dir=train --data.init_args.num_classes=4 \
      --data.init_args.decode=gpu --data.init_args.overlap_decode=false --data.init_args.batch_size=256 \
      --data.init_args.num_workers=15
    step folder_host_syncs 120 python3 -m bench.host_syncs --config configs/coatnet0.yaml --trainer.devices=1 \
      --trainer.strategy=auto --trainer.accumulate_grad_batches=1 --trainer.log_every_n_steps=5 \
      --trainer.default_root_dir=/tmp/gpu_checks_syncs --trainer.logger=false --trainer.enable_progress_bar=false \
      --data.init_args.root="$jpegs" --data.init_args.val_dir=train --data.init_args.num_classes=4 \
      --data.init_args.decode=gpu --data.init_args.batch_size=256 --data.init_args.num_workers=15
    for run in folder synthetic one_stream; do
      echo "fit_$run:" >> "$summary"
      python3 -m bench.scalars "$OUT/logs_$run" --tags train/images_per_sec train/mfu >> "$summary" 2>&1
    done
    ;;
esac
cat "$summary"
