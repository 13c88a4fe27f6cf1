#!/usr/bin/env bash
# Train on a TPU VM pod slice: one process per worker, JAX finds its peers by itself.
# Usage: TPU=my-v4-32 ZONE=us-central2-b CONFIG=experiments/configs/code2_resnet.py \
#        WORKDIR=/mnt/shared/workdirs/code2_resnet DATA=/mnt/code2 experiments/launch/tpu_pod.sh
# Every worker must see the repo (same path) and the data. WORKDIR must be a directory on a
# shared filesystem mounted at the same path on every worker (NFS / Filestore, or a GCS bucket
# through GCS FUSE, e.g. `gcsfuse BUCKET /mnt/shared`): ecgfm treats it as a local path, so a
# gs:// URL does not work.
set -euo pipefail
: "${TPU:?set TPU}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
: "${DATA:?set DATA}" "${REPO:=~/ecgfm}"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd $REPO && .venv/bin/ecgfm pretrain --config $CONFIG --workdir $WORKDIR \
    --config.data.path=$DATA --config.distributed.auto=true $*"
