#!/usr/bin/env bash
# Train ShuffleNetV2 on one Ascend NPU, as the Ascend ModelZoo's test/train_full_1p.sh does.
# Edit the two lines below (or pass them as environment variables), then:
#   bash scripts/run_1p.sh [more shufflenet-train flags]
# Results (log, checkpoints, curves) go to result/training_1p_job_<time>/.
data_path=${data_path:-/data/imagenet}   # ImageFolder root with train/ and val/
device_id=${device_id:-0}                # which NPU of this server

# Defaults of the ModelZoo 1p recipe: batch 1024, lr 0.5, fp16 with a dynamic loss scale.
batch_size=${batch_size:-1024}
epochs=${epochs:-240}
device=${device:-npu}                    # npu, cuda or cpu

set -euo pipefail
export ASCEND_DEVICE_ID=${device_id}
exec shufflenet-train "${data_path}" \
    -a shufflenet_v2_x1_0 \
    --device "${device}" \
    --device-id "${device_id}" \
    -b "${batch_size}" \
    --epochs "${epochs}" \
    -j 16 \
    --output-dir result \
    "$@"
