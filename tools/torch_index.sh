#!/bin/sh
# Print the package index to install torch from, or nothing for PyPI's default.
# On Linux without an NVIDIA GPU, PyPI's torch is a multi-GB CUDA build; the CPU wheel from
# download.pytorch.org is ~200 MB and computes the same. Use it when that index is reachable.
[ "$(uname -s)" = Linux ] || exit 0
command -v nvidia-smi >/dev/null 2>&1 && exit 0
url=https://download.pytorch.org/whl/cpu
if command -v curl >/dev/null 2>&1 && curl -fsS --max-time 5 -o /dev/null "$url/torch/" 2>/dev/null; then
  echo "$url"
fi
