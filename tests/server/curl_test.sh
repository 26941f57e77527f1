#!/usr/bin/env bash
# Black-box test of `qserve serve` with curl: usage: curl_test.sh QSERVE_BINARY SHARED_DIR.
# Starts the server on a free port (--port 0), checks completions, chat, SSE streaming with
# [DONE], an error body, /health, /metrics and bearer auth, then SIGTERM and exit code 0.
# Exits 77 (CTest's skip code) when the model is absent.
set -uo pipefail
qserve=$1
shared=${QSERVE_SHARED:-$2}
model=$shared/models/doc-llama-22m
[[ -f $model/config.json ]] || { echo "skipped: $model not found"; exit 77; }
command -v curl > /dev/null || { echo "skipped: no curl"; exit 77; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# start_server ARGS...: runs `qserve serve ARGS --port 0` in the background; sets pid and port
# (empty when the server did not come up within 60 s).
start_server() {
  "$qserve" --threads 2 serve "$@" --port 0 2> "$log" &
  pid=$!
  port=""
  for _ in $(seq 1 600); do
    port=$(grep -o 'listening on http://[^:]*:[0-9]*' "$log" | grep -o '[0-9]*$')
    [[ -n $port ]] && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.1
  done
}
start_server --model "$model" --served-model-name doc-llama --max-model-len 512 \
  --num-gpu-page-blocks 64 --device cpu --api-key sekret
[[ -n $port ]] || { echo "server did not start"; cat "$log"; exit 1; }
url=http://127.0.0.1:$port
auth=(-H "Authorization: Bearer sekret")
failures=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then echo "ok    $what"; else echo "FAIL  $what"; failures=$((failures + 1)); fi
}

out=$(curl -sS "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/completions" \
  -d '{"model": "doc-llama", "prompt": "The kernel scheduler", "max_tokens": 6, "temperature": 0}')
check "completion" grep -q '"object":"text_completion"' <<< "$out"
check "completion usage" grep -q '"completion_tokens":[1-6]' <<< "$out"

out=$(curl -sS "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/chat/completions" \
  -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}')
check "chat" grep -q '"role":"assistant"' <<< "$out"

out=$(curl -sSN "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/completions" \
  -d '{"prompt": "The kernel", "max_tokens": 5, "temperature": 0, "stream": true,
       "stream_options": {"include_usage": true}}')
check "stream has data: chunks" grep -q '^data: {' <<< "$out"
check "stream ends with data: [DONE]" test "$(grep -v '^$' <<< "$out" | tail -1)" = "data: [DONE]"
check "stream has a usage chunk" grep -q '"choices":\[\],.*"usage":{' <<< "$out"

code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
  "$url/v1/completions" -d '{"prompt": "x", "max_tokens": -1}')
check "negative max_tokens is 400" test "$code" = 400
out=$(curl -sS "${auth[@]}" -H 'Content-Type: application/json' "$url/v1/completions" -d '{bad')
check "bad JSON has an error message" grep -q '"error":{.*"message"' <<< "$out"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  "$url/v1/completions" -d '{"prompt": "x"}')
check "no key is 401" test "$code" = 401
check "health" grep -q '"status":"ok"' <<< "$(curl -sS "$url/health")"
check "metrics" grep -q '^vllm:generation_tokens_total{model_name="doc-llama"} [1-9]' \
  <<< "$(curl -sS "$url/metrics")"

kill -TERM $pid
wait $pid
rc=$?
check "SIGTERM exits 0 (got $rc)" test $rc = 0

# A synthetic model paired with a real tokenizer (--tokenizer), as the GPU load test runs one:
# the model's vocabulary is the tokenizer's, so every sampled id decodes to text.
start_server --model synthetic:tiny --tokenizer "$model" --max-model-len 256 \
  --num-gpu-page-blocks 16 --device cpu
if [[ -n $port ]]; then
  out=$(curl -sS -H 'Content-Type: application/json' "http://127.0.0.1:$port/v1/completions" \
    -d '{"prompt": "The kernel", "max_tokens": 5, "temperature": 1.0, "seed": 3, "ignore_eos": true}')
  check "synthetic + --tokenizer completes 5 tokens" grep -q '"completion_tokens":5' <<< "$out"
  kill -TERM $pid
  wait $pid
  rc=$?
  check "synthetic server exits 0 (got $rc)" test $rc = 0
else
  check "synthetic + --tokenizer server starts" false
  cat "$log"
fi
if ((failures)); then
  tail -20 "$log"
  echo "$failures failure(s)"
  exit 1
fi
