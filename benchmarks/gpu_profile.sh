#!/usr/bin/env bash
# What to run on a lent GPU in the device call right after ../shared/gpu/check.sh's (check.sh alone takes up to
# about 560 s of the 600 s a call may run, so this is a second call, made at once while the machine is warm):
#   call 1: bash .gpu/check.sh                                      (carry: [".gpu"], timeout_s 590)
#   call 2: BUDGET=60 bash benchmarks/gpu_profile.sh              (carry: [".gpu"], timeout_s 420)
# check.sh leaves $DEMO (default /tmp/demo: 20,000 demo images) and the wheels' site in /tmp/site; on a fresh
# machine this script installs the wheels and makes the demo images itself. Under $OUT:
#   profile.txt   the run's `end` line and a cProfile of it (cumulative, top 60): a 20,000-image Grad-CAM run
#   env.txt       what the imports cost there and why (bytecode compiled or not, Python, file system, -X importtime)
#   spy.txt       the same run under py-spy (its wheel in .gpu/whl): CPU time per thread of the run and per forked
#                 process role (loader workers, writer processes, report forks), by function (benchmarks/spy_summary.py)
#   host.txt      the same images through benchmarks/host_path.py (a model that costs nothing): the host alone
#   device.txt    benchmarks/device_start.py: time to the first batch with the GPU started beside the imports
#                 and without (3 rounds over 2,000 demo images, fresh processes taking turns)
#   lime.txt      benchmarks/lime_phases.py: one LIME batch phase by phase (the bundled model at the run's GPU
#                 batch of 512, and resnet18 @ 64), as is, with cudnn.benchmark and channels-last (trials), all
#                 with BatchNorm folded (model/fold.py); the bundled one once more unfolded (--unfolded): the fold's gain
#   fs.txt        the file system a run writes to (/tmp): benchmarks/fs_scale.py (atomic small files from 1-16
#                 processes, one folder and one each) and benchmarks/writer_scale.py (the writer with 0-8
#                 processes against one thread's floor): does the writer's 0.55x come from the folder or the FS?
#   bench_r18_b64.md  xaibatch bench at resnet18 @ 64 with batch 64 (the bench's default before it took a run's:
#                 512 there, as check.sh's bench now runs; #20's baseline was measured at 64)
#   equivalence.txt  benchmarks/gpu_equivalence.py: every device path against the CPU, PASS/FAIL per row (first:
#                 correctness before speed; about a minute, its own timeout, not in BUDGET; EQUIV=0 skips it)
# BUDGET: seconds from this script's start after which no step is started (each step has its own timeout).
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DEMO=${DEMO:-/tmp/demo}; T0=$(date +%s); BUDGET=${BUDGET:-150}
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
left(){ [ $(( $(date +%s) - T0 )) -lt "$BUDGET" ]; }
if [ "${EQUIV:-1}" = 1 ]; then  # outside BUDGET: the profile's steps keep their time
  timeout 240 python3 benchmarks/gpu_equivalence.py >"$OUT/equivalence.txt" 2>&1
  echo "gpu_equivalence exit $? after $(( $(date +%s) - T0 )) s" >>"$OUT/equivalence.txt"
  T0=$(date +%s)
fi
{  # why imports cost 2.5-3x this box's there: bytecode compiled or not, the interpreter, the file system
  python3 -c "import sys,os;print(sys.version.split()[0], 'PYTHONDONTWRITEBYTECODE', os.environ.get('PYTHONDONTWRITEBYTECODE'))"
  for m in torch timm numpy PIL; do
    d=$(python3 -c "import os,$m;print(os.path.dirname($m.__file__))" 2>/dev/null) &&
      echo "$m: $(find "$d" -name '*.py' | wc -l) .py, $(find "$d" -name '*.pyc' | wc -l) .pyc in $d ($(df -T "$d" | awk 'NR==2{print $2}'))"
  done
  for i in 1 2; do
    /usr/bin/time -f "import torch: %e s" python3 -c "import torch"
    /usr/bin/time -f "torch and timm as a run imports them: %e s" python3 -c \
      "import torch; from xaibatch.imports import defer_hub, import_timm; defer_hub(); import_timm()"
  done
  python3 -X importtime -c "import torch" 2>&1 | sort -t'|' -k1.13,1.24 -n | tail -15  # most self time
} >"$OUT/env.txt" 2>&1
[ -d "$DEMO/test" ] || python3 -m xaibatch demo-data "$DEMO" --train-per-class 10 --test-per-class 10000 >/dev/null
if left; then
  rm -rf /tmp/xb-prof-out
  timeout 90 python3 -m cProfile -o /tmp/xb-run.prof -m xaibatch run "$DEMO/test" -m gradcam --out /tmp/xb-prof-out \
    --log-json | grep '"end"' >"$OUT/profile.txt"
  python3 -c "import pstats,sys; pstats.Stats('/tmp/xb-run.prof', stream=sys.stdout).sort_stats('cumulative').print_stats(60)" \
    >>"$OUT/profile.txt" 2>&1
fi
SPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
if left && [ -x "$SPY" ]; then  # every thread and forked process (cProfile sees the main thread only)
  rm -rf /tmp/xb-spy-out
  timeout 90 "$SPY" record -s -t -r 200 -f raw -o /tmp/xb-run.spy -- python3 -m xaibatch run "$DEMO/test" -m gradcam \
    --out /tmp/xb-spy-out --log-json 2>"$OUT/spy.err" | grep '"end"' >"$OUT/spy.txt"
  python3 benchmarks/spy_summary.py /tmp/xb-run.spy --rate 200 >>"$OUT/spy.txt" 2>&1
fi
if left; then
  timeout 60 python3 benchmarks/host_path.py "$DEMO/test" --out /dev/shm/xb-host --batch-size 512 >"$OUT/host.txt" 2>&1
fi
if left; then
  mkdir -p /tmp/demo2k/FAKE /tmp/demo2k/REAL
  for c in FAKE REAL; do ls "$DEMO/test/$c" | grep -v mask | head -1000 | sed "s|^|$DEMO/test/$c/|" | xargs cp -t /tmp/demo2k/$c; done
  timeout 120 python3 benchmarks/device_start.py /tmp/demo2k --rounds 3 >"$OUT/device.txt" 2>&1
fi
if left; then
  for flags in "" "--cudnn-benchmark" "--channels-last" "--cudnn-benchmark --channels-last"; do
    timeout 60 python3 benchmarks/lime_phases.py --batch-size 512 --rounds 2 $flags >>"$OUT/lime.txt" 2>&1
  done
  timeout 60 python3 benchmarks/lime_phases.py --batch-size 512 --rounds 2 --unfolded >>"$OUT/lime.txt" 2>&1
  timeout 60 python3 benchmarks/lime_phases.py --arch resnet18 --size 64 --rounds 2 >>"$OUT/lime.txt" 2>&1
  timeout 60 python3 benchmarks/lime_phases.py --arch resnet18 --size 64 --rounds 2 --cudnn-benchmark >>"$OUT/lime.txt" 2>&1
fi
if left; then  # the writer's 0.55x of the floor with 8 processes: the file system's scaling, or the writer's own?
  { df -T /tmp /dev/shm; nproc
    timeout 60 python3 benchmarks/fs_scale.py --root /tmp --files 24000 --procs 1,2,4,8,16 --rounds 1
    mkdir -p /tmp/xb-ws && timeout 90 python3 benchmarks/writer_scale.py --size 32 --images 8192 --batch 512 \
      --writers 0,1,2,4,8 --rounds 1 --out /tmp/xb-ws; } >"$OUT/fs.txt" 2>&1
fi
if left; then  # the bench's ratios at #20's baseline batch (64); check.sh's bench runs at a run's GPU batch (512)
  timeout 100 python3 -m xaibatch bench --arch resnet18 --image-size 64 --device cuda --images 4096 --batch-size 64 \
    --only gradcam --repeats 1 --budget 80 --markdown >"$OUT/bench_r18_b64.md" 2>&1
fi
echo "gpu_profile done after $(( $(date +%s) - T0 )) s" >>"$OUT/profile.txt"
