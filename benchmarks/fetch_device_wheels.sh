#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu_study.sh installs on the device machine
# (its `# wheel:` lines; Python 3.12, x86-64 Linux). .whl/ must never be committed: list it
# in .git/info/exclude (`echo /.whl/ >> .git/info/exclude` in the main checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t wheels < <(sed -n 's/^# wheel: //p' benchmarks/gpu_study.sh)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${wheels[@]}"
