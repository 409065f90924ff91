#!/usr/bin/env bash
# The CUDA paths in one run, one line per check: bf16 training, 1-GPU FSDP2 and its resume, qkv generate,
# qkv serve answering a client (plain and streamed), and the train/decode benchmarks on the GPU.
# Under 8 minutes on one H100. Never part of CI (CI has no GPU).
#
#   bash bench/gpu_check.sh --fetch-wheels   here, with pip's registry: the serve extra's wheels into .whl/
#                                             (the GPU machine has torch and transformers, no fastapi/uvicorn)
#   bash bench/gpu_check.sh                   there, from the repository root; .whl/ carried along
#
# Exit status: the number of failed checks (0 = all passed). DEVICE=cpu runs the same checks on the CPU
# (FSDP2 needs CUDA: those two fail there), to try the script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then          # Python 3.12 wheels for the GPU machine's interpreter
    platforms=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
    for pkg in fastapi starlette pydantic pydantic-core annotated-types typing-inspection uvicorn \
               llguidance sniffio; do
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d .whl "$pkg" || echo "could not fetch $pkg"
    done
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    ls .whl
    exit 0
fi

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/qkv-site .whl/*.whl
    export PYTHONPATH=/tmp/qkv-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}     # qkv from this tree, no install step
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
failed=0

# check NAME COMMAND...: run it, print "ok NAME (s): last output line" or "FAIL NAME (s)" and the output's end
check() {
    local name=$1; shift
    local t0=$SECONDS log="$WORK/$name.log"
    if "$@" >"$log" 2>&1; then
        printf 'ok    %-22s %4ds  %s\n' "$name" $((SECONDS - t0)) "$(tail -n 1 "$log" | cut -c1-150)"
    else
        printf 'FAIL  %-22s %4ds\n' "$name" $((SECONDS - t0))
        { grep -m 3 "error:" "$log" || tail -n 15 "$log"; } | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}

gpu() {
    [[ $DEVICE == cpu ]] && { $PY -c "import torch; print('cpu: torch', torch.__version__)"; return; }
    $PY - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA GPU"
print(torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "bf16", torch.cuda.is_bf16_supported(including_emulation=False))
EOF
}

train_bf16() {
    $PY -m qkv train --preset tiny --max-len 128 --max-iters 40 --eval-interval 20 --precision bf16 --out-dir "$WORK/bf16" \
        | tee "$WORK/bf16.out" && head -n 1 "$WORK/bf16.out" | grep -q "precision bf16 (forced; .*); device $DEVICE"
}

last_step() {
    $PY -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['step'])" "$1/metrics.jsonl"
}

fsdp() {
    $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m qkv train --preset tiny --fsdp \
        --max-iters 10 --eval-interval 5 --out-dir "$WORK/fsdp" && [[ $(last_step "$WORK/fsdp") == 10 ]]
}

fsdp_resume() {
    $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m qkv train --resume "$WORK/fsdp" --fsdp \
        --max-iters 20 && [[ $(last_step "$WORK/fsdp") == 20 ]] && echo "resumed to step 20"
}

generate() {
    # greedy on the GPU against greedy on the CPU: the same checkpoint gives the same first tokens
    $PY -m qkv generate "$WORK/bf16" --prompt "ROMEO:" --max-new-tokens 40 --temperature 0 --device "$DEVICE" \
        > "$WORK/gen-cuda.txt" &&
    $PY -m qkv generate "$WORK/bf16" --prompt "ROMEO:" --max-new-tokens 40 --temperature 0 --device cpu \
        > "$WORK/gen-cpu.txt" &&
    $PY - "$WORK/gen-cuda.txt" "$WORK/gen-cpu.txt" <<'EOF'
import sys
gpu, cpu = (open(p).read() for p in sys.argv[1:])
assert len(gpu) > len("ROMEO:") + 10, gpu
same = next((i for i, (a, b) in enumerate(zip(gpu, cpu)) if a != b), min(len(gpu), len(cpu)))
assert same >= len("ROMEO:") + 10, f"GPU and CPU greedy text part after {same} characters:\n{gpu!r}\n{cpu!r}"
print(f"{len(gpu)} characters, the first {same} equal to the CPU's greedy text")
EOF
}

serve() {
    local port=18765
    $PY -m qkv serve "$WORK/bf16" --device "$DEVICE" --port $port > "$WORK/serve.out" 2>&1 &
    local pid=$!
    $PY - $port <<'EOF'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):
    try:
        urllib.request.urlopen(base + "/health", timeout=2).read()
        break
    except OSError:
        time.sleep(0.5)
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=60)
body = {"model": "bf16", "prompt": "ROMEO:", "max_tokens": 24, "temperature": 0}
text = json.loads(post("/v1/completions", body).read())["choices"][0]["text"]
pieces = [json.loads(line[6:])["choices"][0]["text"] for line in post("/v1/completions", dict(body, stream=True))
          .read().decode().splitlines() if line.startswith("data: {")]
assert text and "".join(pieces) == text, (text, pieces)
print(f"completion of {len(text)} characters, streamed in {len(pieces)} pieces, equal")
EOF
    local rc=$?
    kill -TERM $pid; wait $pid 2>/dev/null
    return $rc
}

check gpu gpu || { echo "no GPU: nothing else can run"; exit 1; }
check train-bf16 train_bf16
check fsdp2 fsdp
check fsdp2-resume fsdp_resume
check generate generate
check serve serve
check bench-train $PY -m qkv bench train --device "$DEVICE" --json --rounds ${ROUNDS:-4} --steps ${STEPS:-5}
check bench-decode $PY -m qkv bench decode --device "$DEVICE" --json
echo "$failed failed"
exit $failed
