#!/usr/bin/env bash
# Re-resolve requirements/cpu.in into constraints/cpu.lock in a scratch venv (scripts/lock_venv.sh).
# sglang and torchvision go in with --no-deps (their pins are CUDA-only); the rest resolves normally
# against the local CPU torch.
source "$(dirname "$0")/lock_venv.sh"
"${pip[@]}" install "$(requirements requirements/cpu.in | grep -E '^torch==')"
"${pip[@]}" install --no-deps $(requirements requirements/cpu.in | grep -E '^(sglang|torchvision)==')
"${pip[@]}" install $(requirements requirements/cpu.in '^(torch|sglang|torchvision)==')
write_lock cpu
