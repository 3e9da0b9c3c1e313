#!/usr/bin/env bash
# The accelerator check, run on the GPU machine from the repository root, with the wheels of
# ../shared/gpu/wheels.sh in .whl/ (docs/benchmark/README.md, "On a GPU"). Installs them into
# .site, lists the devices, runs the :gpu benchmark (at most 8 minutes) and copies its table and
# JSON into $OUT (default ./out).  CONFIG (default :gpu) and PYTHON (python3) may be set;
# arguments go to the benchmark (e.g. --config.gpu.budget_s=300).
set -uo pipefail
py=${PYTHON:-python3}
config=${CONFIG:-experiments/configs/benchmark.py:gpu}
out=${OUT:-out}
workdir=$(mktemp -d)
if compgen -G ".whl/*" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-build-isolation \
    --target .site .whl/* || exit 1
fi
export PYTHONPATH=$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
$py -c "import jax; print('JAX', jax.__version__, jax.devices())" || exit 1
timeout 480 $py -m experiments.benchmark --config="$config" --noprogress --workdir="$workdir" "$@"
rc=$?
mkdir -p "$out" && cp "$workdir"/gpu_*.md "$workdir"/gpu_*.json "$out"/ || { [ $rc -eq 0 ] && rc=1; }
ls -l "$out"
exit $rc
