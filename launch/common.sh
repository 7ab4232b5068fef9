# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run): printing commands for DRY_RUN=1, and running them.

# The command as one shell line: plain words bare, others in single quotes.
show() {
  local words=() w
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$w")
    elif [[ $w =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then  # --flag='value'
      words+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else
      words+=("'${w//\'/\'\\\'\'}'")
    fi
  done
  echo "${words[*]}"
}

# Runs the command, or with DRY_RUN=1 prints it.
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then show "$@"; else "$@"; fi
}
