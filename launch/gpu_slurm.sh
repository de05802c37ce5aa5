#!/usr/bin/env bash
# Run one jssl config on a SLURM GPU cluster: N nodes x G GPUs, one run.
#
#   launch/gpu_slurm.sh --nodes N --gpus-per-node G --config CONFIG --workdir DIR
#                       [--per gpu|node] [--partition P] [--account A] [--time HH:MM:SS]
#                       [--cpus-per-task C] [--job-name NAME] [--python PY] [--install]
#                       [--port PORT] [--logdir DIR] [--no-follow] [--dry-run]
#                       [-- more python -m jssl.main arguments]
#   launch/gpu_slurm.sh --cancel JOBID [--dry-run]
#
# Steps: (1) with --install, `PY -m pip install -U 'jax[cuda12]' -e <this checkout>` here
# (cluster file systems are shared: every node then has it; without --install the nodes
# import jssl from this checkout through PYTHONPATH); (2) write a batch script to
# LOGDIR/NAME.sbatch (LOGDIR: --logdir, default ./slurm-logs) and submit it with sbatch;
# (3) follow its log, LOGDIR/NAME-<job id>.out, until the job ends (Ctrl-C stops following,
# not the job; --no-follow only submits); the exit status says whether the job completed.
# --cancel JOBID deletes a job (scancel).
#
# In the job, srun starts one process per GPU (--per gpu, the default: each sees only its
# GPU, CUDA_VISIBLE_DEVICES=$SLURM_LOCALID) or per node (--per node: each sees all G),
# every one with the same command,
#     PY -m jssl.main --coordinator_address <first node>:PORT --num_processes $SLURM_NTASKS
#         --process_id $SLURM_PROCID --config CONFIG --workdir DIR [more arguments]
# so the N x G GPUs form one mesh. DIR must be on the shared file system. PY defaults to
# python3 (sbatch passes this shell's environment, e.g. an activated virtualenv, on).
# --dry-run prints the batch script and every command instead of running them.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "gpu_slurm.sh: error: $*" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
nodes="" gpus="" per=gpu partition="" account="" time_limit="" cpus="" job_name="" python=python3
install=0 port="" logdir=slurm-logs follow=1 dry=0 config="" workdir="" cancel=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes|--gpus-per-node|--per|--partition|--account|--time|--cpus-per-task|--job-name|\
--python|--port|--logdir|--config|--workdir|--cancel)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --nodes) nodes="$2" ;; --gpus-per-node) gpus="$2" ;; --per) per="$2" ;;
        --partition) partition="$2" ;; --account) account="$2" ;; --time) time_limit="$2" ;;
        --cpus-per-task) cpus="$2" ;; --job-name) job_name="$2" ;; --python) python="$2" ;;
        --port) port="$2" ;; --logdir) logdir="$2" ;; --config) config="$2" ;;
        --workdir) workdir="$2" ;; --cancel) cancel="$2" ;;
      esac
      shift 2 ;;
    --install) install=1; shift ;;
    --no-follow) follow=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help); jssl arguments go after --" ;;
  esac
done

# quote, run (prints the command instead with --dry-run)
source "$root/launch/common.sh"

if [ -n "$cancel" ]; then
  [[ "$cancel" =~ ^[0-9]+$ ]] || die "--cancel needs a job id, got '$cancel'"
  run scancel "$cancel"
  exit 0
fi

[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, e.g. --nodes 2"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, e.g. --gpus-per-node 8"
[ "$per" = gpu ] || [ "$per" = node ] || die "--per must be gpu or node, got '$per'"
[ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
[ -n "$config" ] || die "--config is required, e.g. --config configs/barlow_twins.py:cifar10"
[ -n "$workdir" ] || die "--workdir is required (on the shared file system)"
[ -f "${config%%:*}" ] || die "--config $config: config file ${config%%:*} not found (paths are relative to $(pwd))"
job_name="${job_name:-jssl-$(basename "${config%%:*}" .py)}"
tasks_per_node=1
[ "$per" = node ] || tasks_per_node="$gpus"

# (1) Install once; the nodes share the file system.
if [ "$install" -eq 1 ]; then
  run "$python" -m pip install -U 'jax[cuda12]' -e "$root"
fi

# (2) The batch script.
script="$logdir/$job_name.sbatch"
log="$logdir/$job_name-%j.out"
script_tmp="$(mktemp)"
{
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$tasks_per_node"
  echo "#SBATCH --gpus-per-node=$gpus"
  echo "#SBATCH --output=$log"
  [ -z "$time_limit" ] || echo "#SBATCH --time=$time_limit"
  [ -z "$partition" ] || echo "#SBATCH --partition=$partition"
  [ -z "$account" ] || echo "#SBATCH --account=$account"
  [ -z "$cpus" ] || echo "#SBATCH --cpus-per-task=$cpus"
  echo "# Written by launch/gpu_slurm.sh: one jssl run, $nodes node(s) x $gpus GPU(s), one process per $per."
  echo "set -euo pipefail"
  echo "export PYTHONPATH=$(quote "$root")\${PYTHONPATH:+:\$PYTHONPATH}"
  if [ -n "$port" ]; then
    echo "port=$port"
  else
    echo "port=\$((20000 + SLURM_JOB_ID % 20000))"
  fi
  # sed, not head: it reads to the end, so no SIGPIPE fails the pipeline (pipefail).
  echo "coordinator=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | sed -n 1p):\$port\""
  if [ "$per" = gpu ]; then
    # Every task of a node sees the node's GPUs; each keeps the one of its local rank.
    task='export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; '
  else
    task=''
  fi
  task+='exec "$0" -m jssl.main --coordinator_address "$1" --num_processes "$SLURM_NTASKS" --process_id "$SLURM_PROCID" "${@:2}"'
  line="srun --kill-on-bad-exit=1 bash -c $(quote "$task") $(quote "$python") \"\$coordinator\""
  for word in --config "$config" --workdir "$workdir" "$@"; do line+=" $(quote "$word")"; done
  echo "$line"
} > "$script_tmp"
if [ "$dry" -eq 1 ]; then
  echo "# $script:"
  cat "$script_tmp"
  rm -f "$script_tmp"
  run sbatch --parsable "$script"
  [ "$follow" -eq 0 ] || run tail -n +1 -F "${log//%j/<job id>}"
  exit 0
fi
mkdir -p "$logdir"
mv "$script_tmp" "$script"

# (3) Submit, then follow the log until the job ends.
job="$(sbatch --parsable "$script")"
job="${job%%;*}"  # "<id>;<cluster>" on federated clusters
log="${log//%j/$job}"
echo "gpu_slurm.sh: submitted job $job; log $log; stop it with launch/gpu_slurm.sh --cancel $job" >&2
[ "$follow" -eq 1 ] || exit 0
( while [ -n "$(squeue -h -j "$job" 2>/dev/null)" ]; do sleep 10; done ) &
watcher=$!
trap 'echo "gpu_slurm.sh: stopped following; job $job keeps running" >&2; kill "$watcher" 2>/dev/null; exit 130' INT
until [ -e "$log" ] || ! kill -0 "$watcher" 2>/dev/null; do sleep 2; done
[ ! -e "$log" ] || tail -n +1 -F --pid="$watcher" "$log"
wait "$watcher" 2>/dev/null || true
state="$(sacct -j "$job" -X -n -P -o State 2>/dev/null | head -n 1)"
echo "gpu_slurm.sh: job $job ended: ${state:-unknown state}" >&2
[ "${state%% *}" = COMPLETED ]
