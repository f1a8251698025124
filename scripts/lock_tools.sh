#!/usr/bin/env bash
# Re-resolve requirements/tools.in into constraints/tools.lock in a scratch venv (scripts/lock_venv.sh).
source "$(dirname "$0")/lock_venv.sh"
"${pip[@]}" install $(requirements requirements/tools.in)
write_lock tools
