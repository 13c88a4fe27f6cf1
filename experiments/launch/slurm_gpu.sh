#!/usr/bin/env bash
# Multi-node GPU training with SLURM: one process per GPU; jax.distributed.initialize()
# reads the coordinator, process count and id from SLURM's environment, and gives each task
# the GPU of its SLURM_LOCALID (so CUDA_VISIBLE_DEVICES must stay unset: restricting a task to
# one GPU would leave tasks 1..7 asking for a device id they no longer see).
# Usage: sbatch --nodes=2 experiments/launch/slurm_gpu.sh experiments/configs/code2_resnet.py \
#        /shared/workdirs/code2_resnet --config.data.path=/shared/data/tfds
# WORKDIR must be on a filesystem every node mounts (NFS, Lustre, a GCS FUSE mount, ...):
# paths are local paths, not gs:// or s3:// URLs.
#SBATCH --job-name=ecgfm
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
# SIGTERM two minutes before the time limit: the trainer checkpoints and exits with code 143
# (ecgfm.train.PREEMPTED_EXIT_CODE); resubmitting the same command resumes from the workdir.
set -euo pipefail
CONFIG=$1 WORKDIR=$2
shift 2
srun --kill-on-bad-exit=1 .venv/bin/ecgfm pretrain --config "$CONFIG" --workdir "$WORKDIR" \
  --config.distributed.auto=true "$@"
