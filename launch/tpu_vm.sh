#!/usr/bin/env bash
# Run one jssl config on a Cloud TPU VM or pod slice (gcloud compute tpus tpu-vm).
#
#   launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE --config CONFIG
#                    [--project PROJECT] [--version RUNTIME] [--spot] [--install SPEC]
#                    [--bucket BUCKET] [--workdir DIR] [--delete-after] [--dry-run]
#                    [-- more python -m jssl.main arguments]
#   launch/tpu_vm.sh --name NAME --zone ZONE [--project PROJECT] --logs     # follow worker 0
#   launch/tpu_vm.sh --name NAME --zone ZONE [--project PROJECT] --delete
#
# Steps: (1) reuse the TPU VM NAME if it exists, else create it; (2) put jssl on every
# worker: this checkout (tracked and untracked, not ignored, files) packed, copied and
# `pip install -e`d, or with --install SPEC `pip install SPEC` (e.g.
# git+https://github.com/ORG/jssl); the config file is copied to ~/jssl-config.py;
# (3) run the same command on every worker, in its home directory,
#     python3 -m jssl.main --config jssl-config.py[:PRESET] --workdir DIR [more arguments]
# where JAX finds the other workers itself (jax.distributed on a TPU VM needs no flags);
# the output of all workers streams here and is kept in ~/jssl-NAME.log on each; (4) with
# --delete-after, delete the VM when the run ends, whatever its outcome.
#
# A pod slice (more than one worker, e.g. v4-32) needs a --workdir every worker shares:
# --bucket BUCKET mounts gs://BUCKET on every worker with gcsfuse at ~/gcs and the workdir
# defaults to ~/gcs/jssl/NAME (or give --workdir on your own shared file system).
# --dry-run prints every command instead of running it.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "tpu_vm.sh: error: $*" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
name="" zone="" project="" accelerator="" version="" spot=0 install="" bucket="" workdir=""
config="" dry=0 delete_after=0 action=run
while [ $# -gt 0 ]; do
  case "$1" in
    --name|--zone|--project|--accelerator-type|--version|--install|--bucket|--workdir|--config)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --name) name="$2" ;; --zone) zone="$2" ;; --project) project="$2" ;;
        --accelerator-type) accelerator="$2" ;; --version) version="$2" ;;
        --install) install="$2" ;; --bucket) bucket="$2" ;; --workdir) workdir="$2" ;;
        --config) config="$2" ;;
      esac
      shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) dry=1; shift ;;
    --delete-after) delete_after=1; shift ;;
    --delete) action=delete; shift ;;
    --logs) action=logs; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help); jssl arguments go after --" ;;
  esac
done
[ -n "$name" ] || die "--name is required (the TPU VM to create or reuse)"
[ -n "$zone" ] || die "--zone is required, e.g. --zone us-central2-b"

where=(--zone="$zone")
[ -z "$project" ] || where+=(--project="$project")

# quote, run (prints the command instead with --dry-run)
source "$root/launch/common.sh"
on_workers() {  # on_workers <worker> <remote bash command>
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$1" --command="$2"
}

if [ "$action" = delete ]; then
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  exit 0
fi
if [ "$action" = logs ]; then
  on_workers 0 "tail -n +1 -F ~/jssl-$name.log"
  exit 0
fi

[ -n "$config" ] || die "--config is required, e.g. --config configs/barlow_twins.py:cifar10"
[ -n "$accelerator" ] || die "--accelerator-type is required, e.g. --accelerator-type v4-8"
config_file="${config%%:*}"
[ -f "$config_file" ] || [ -f "$root/$config_file" ] \
  || die "--config $config: config file $config_file not found"
if [ -z "$version" ]; then  # the software version each TPU generation boots
  case "$accelerator" in
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi
cores="${accelerator##*-}"
[[ "$cores" =~ ^[0-9]+$ ]] || die "--accelerator-type $accelerator: expected <type>-<size>, e.g. v4-8"
if [ -n "$bucket" ]; then
  workdir="${workdir:-\$HOME/gcs/jssl/$name}"
elif [ -z "$workdir" ]; then
  [ "$cores" -le 8 ] || die "--accelerator-type $accelerator has several workers: give --bucket " \
    "BUCKET (mounted on every worker) or a --workdir they share"
  workdir="\$HOME/jssl-runs/$name"
fi

# (1) Create the TPU VM, or reuse it.
if [ "$dry" -eq 1 ]; then
  echo "# reuse the TPU VM if this succeeds, else create it:"
  run gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format=value\(state\)
  create=1
elif gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' >/dev/null 2>&1; then
  echo "tpu_vm.sh: reusing the TPU VM $name" >&2
  create=0
else
  create=1
fi
if [ "$create" -eq 1 ]; then
  extra=()
  [ "$spot" -eq 0 ] || extra+=(--spot)
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${extra[@]}"
fi

# (2) jssl on every worker, and the config file as ~/jssl-config.py.
if [ -z "$install" ]; then
  archive="${TMPDIR:-/tmp}/jssl-$name.tar.gz"
  run bash -c "cd $(quote "$root") && git ls-files -z --cached --others --exclude-standard \
| tar --null -T - -czf $(quote "$archive")"
  run gcloud compute tpus tpu-vm scp "$archive" "$name:jssl.tar.gz" "${where[@]}" --worker=all
  on_workers all "rm -rf ~/jssl && mkdir -p ~/jssl && tar -xzf ~/jssl.tar.gz -C ~/jssl \
&& python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ~/jssl"
else
  on_workers all "python3 -m pip install -q -U 'jax[tpu]' $(quote "$install")"
fi
src="$config_file"
[ -f "$src" ] || src="$root/$config_file"
run gcloud compute tpus tpu-vm scp "$src" "$name:jssl-config.py" "${where[@]}" --worker=all
remote_config="jssl-config.py${config#"$config_file"}"
if [ -n "$bucket" ]; then
  on_workers all "mountpoint -q ~/gcs || { command -v gcsfuse >/dev/null || { \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; } \
&& mkdir -p ~/gcs && gcsfuse --implicit-dirs $(quote "$bucket") ~/gcs; }"
fi

# (3) The same command on every worker; their output streams here.
if [[ "$workdir" == '$HOME/'* ]]; then  # the worker's home
  remote_workdir="\"\$HOME\"/$(quote "${workdir#'$HOME/'}")"
else
  remote_workdir="$(quote "$workdir")"
fi
quoted=" --config $(quote "$remote_config") --workdir $remote_workdir"
for word in "$@"; do quoted+=" $(quote "$word")"; done
status=0
on_workers all "set -o pipefail; cd ~ && python3 -m jssl.main$quoted 2>&1 | tee -a ~/jssl-$name.log" \
  || status=$?

# (4) Delete on request, whatever the outcome.
if [ "$delete_after" -eq 1 ]; then
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
fi
exit "$status"
