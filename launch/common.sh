# Shared by launch/tpu_vm.sh and launch/gpu_slurm.sh (sourced; `dry` is the caller's
# --dry-run flag, 0 or 1).

quote() {  # one word for a shell command line, in single quotes only when needed
  case "$1" in
    '' | *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

run() {  # a command, or with --dry-run its shell-quoted form
  if [ "$dry" -eq 1 ]; then
    local word line="+"
    for word in "$@"; do line+=" $(quote "$word")"; done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}
