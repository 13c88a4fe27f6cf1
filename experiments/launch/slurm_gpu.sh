#!/usr/bin/env bash
# Multi-node GPU training with SLURM: one process per GPU; jax.distributed.initialize()
# reads the coordinator, process count and id from SLURM's environment.
# Usage: sbatch --nodes=2 experiments/launch/slurm_gpu.sh experiments/configs/code2_resnet.py \
#        /shared/workdirs/code2_resnet --config.data.path=/shared/data/code2
#SBATCH --job-name=ecgfm
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
# SIGTERM two minutes before the time limit: the trainer checkpoints and exits; resubmitting
# the same command resumes from the workdir.
set -euo pipefail
CONFIG=$1 WORKDIR=$2
shift 2
srun --kill-on-bad-exit=1 bash -c "export CUDA_VISIBLE_DEVICES=\$SLURM_LOCALID; \
  .venv/bin/ecgfm pretrain --config $CONFIG --workdir $WORKDIR --config.distributed.auto=true $*"
