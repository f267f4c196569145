#!/usr/bin/env bash
# Train ShuffleNetV2 on the 8 NPUs of one Ascend server, as the Ascend ModelZoo's
# test/train_full_8p.sh does: one process per device, HCCL all-reduce between them.
# Edit the two lines below (or pass them as environment variables), then:
#   bash scripts/run_8p.sh [more shufflenet-train flags]
# Rank 0 logs to this terminal and writes result/training_8p_job_<time>/ (train.log,
# checkpoints, curves); ranks 1-7 log to rank<k>.log in the same folder.
data_path=${data_path:-/data/imagenet}        # ImageFolder root with train/ and val/
device_list=${device_list:-0,1,2,3,4,5,6,7}   # the NPUs to use, one rank each

# The ModelZoo 8p recipe: global batch 8192 (1024 per NPU), lr 0.5 x 8192/1024 = 4.0 (the
# default linear scaling), fp16 with a dynamic loss scale.
batch_size=${batch_size:-8192}
epochs=${epochs:-240}
device=${device:-npu}                         # npu, cuda or cpu
# Optional on one server (HCCL negotiates by itself); the path of an hccl.json rank table.
# export RANK_TABLE_FILE=/path/to/hccl_8p.json

set -euo pipefail
nproc=$(( $(tr -cd , <<<"${device_list}" | wc -c) + 1 ))
exec shufflenet-train "${data_path}" \
    -a shufflenet_v2_x1_0 \
    --device "${device}" \
    --nproc "${nproc}" \
    --device-list "${device_list}" \
    -b "${batch_size}" \
    --epochs "${epochs}" \
    -j 16 \
    --output-dir result \
    "$@"
