#!/usr/bin/env bash
# Run one jssl command as N processes on this machine: the multi-host set-up of a TPU pod or
# a GPU cluster, on one box, for debugging (the tests use it with 2 CPU processes).
#
#   launch/local_multiprocess.sh [-n N] [--cpu-devices D | --gpus-per-process G] [--port P]
#                                [--logdir DIR] [--] <python -m jssl.main arguments>
#
# Example (2 processes x 4 simulated CPU devices = one 8-device mesh):
#   launch/local_multiprocess.sh -n 2 --cpu-devices 4 -- \
#       --config configs/barlow_twins.py:smoke --workdir runs/mp
#
# Every process runs `python -m jssl.main --coordinator_address 127.0.0.1:P --num_processes N
# --process_id i <arguments>`. Process 0's output comes to this terminal; process i's goes to
# DIR/process_<i>.log (DIR: --logdir, default a new temporary directory). When one process
# fails the others are stopped (they would wait for it); the exit status is the first
# failure's, 0 when all succeed. Run from the repository root, or with jssl installed.
# $PYTHON picks the interpreter (default: python).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "local_multiprocess.sh: error: $*" >&2; exit 2; }

num=2
cpu_devices=""
gpus_per_process=""
port=""
logdir=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--num-processes) [ $# -ge 2 ] || die "$1 needs a value"; num="$2"; shift 2 ;;
    --cpu-devices) [ $# -ge 2 ] || die "$1 needs a value"; cpu_devices="$2"; shift 2 ;;
    --gpus-per-process) [ $# -ge 2 ] || die "$1 needs a value"; gpus_per_process="$2"; shift 2 ;;
    --port) [ $# -ge 2 ] || die "$1 needs a value"; port="$2"; shift 2 ;;
    --logdir) [ $# -ge 2 ] || die "$1 needs a value"; logdir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "no jssl arguments; e.g. -- --config configs/barlow_twins.py:smoke --workdir runs/mp"
[[ "$num" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, got '$num'"
[ -z "$cpu_devices" ] || [[ "$cpu_devices" =~ ^[1-9][0-9]*$ ]] \
  || die "--cpu-devices must be a positive integer, got '$cpu_devices'"
[ -z "$gpus_per_process" ] || [[ "$gpus_per_process" =~ ^[1-9][0-9]*$ ]] \
  || die "--gpus-per-process must be a positive integer, got '$gpus_per_process'"
[ -z "$cpu_devices" ] || [ -z "$gpus_per_process" ] \
  || die "--cpu-devices and --gpus-per-process exclude each other"
python="${PYTHON:-python}"
if [ -z "$port" ]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
logdir="${logdir:-$(mktemp -d "${TMPDIR:-/tmp}/jssl-mp.XXXXXX")}"
mkdir -p "$logdir"

if [ -n "$cpu_devices" ]; then
  # Replace any device count already in XLA_FLAGS (e.g. the test suite's 8).
  flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
  export XLA_FLAGS="${flags} --xla_force_host_platform_device_count=${cpu_devices}"
  export JAX_PLATFORMS=cpu
fi

echo "local_multiprocess.sh: $num processes on 127.0.0.1:$port; logs of processes 1.. in $logdir" >&2
start() {  # start <process id> <jssl arguments>: runs in its own (background) subshell
  local i="$1"
  shift
  if [ -n "$gpus_per_process" ]; then
    export CUDA_VISIBLE_DEVICES
    CUDA_VISIBLE_DEVICES="$(seq -s, $((i * gpus_per_process)) $(((i + 1) * gpus_per_process - 1)))"
  fi
  exec "$python" -m jssl.main --coordinator_address "127.0.0.1:$port" \
    --num_processes "$num" --process_id "$i" "$@"
}

pids=()
for ((i = 0; i < num; i++)); do
  if [ "$i" -eq 0 ]; then
    start "$i" "$@" &
  else
    start "$i" "$@" > "$logdir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM
rc=0
for ((left = num; left > 0; left--)); do
  status=0
  wait -n || status=$?
  if [ "$status" -ne 0 ] && [ "$rc" -eq 0 ]; then
    rc="$status"
    echo "local_multiprocess.sh: a process exited with status $status; stopping the others" >&2
    stop
  fi
done
if [ "$rc" -ne 0 ]; then
  for ((i = 1; i < num; i++)); do
    echo "--- process $i (last lines of $logdir/process_$i.log) ---" >&2
    tail -n 5 "$logdir/process_$i.log" >&2 || true
  done
fi
exit "$rc"
