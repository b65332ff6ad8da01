# Shared by the nvrxlog sbatch scripts (sourced, not run).
# Per-node files and the cluster file live on the shared filesystem; temp
# message files on node-local storage; the streamer runs on the first node.
export NVRX_LOG_DIR=${NVRX_LOG_DIR:-$SLURM_SUBMIT_DIR/nvrx_logs/$SLURM_JOB_ID}
export NVRX_NODE_LOCAL_TMPDIR=${NVRX_NODE_LOCAL_TMPDIR:-${TMPDIR:-/dev/shm}/nvrx-$SLURM_JOB_ID}
NVRX_TRAIN=${NVRX_TRAIN:-python $SLURM_SUBMIT_DIR/example_train.py}
mkdir -p "$NVRX_LOG_DIR"
NVRX_HEAD=$(hostname)  # the batch script runs on the job's first node

# Start the central streamer (any free port) and export its address to every
# rank through NVRX_LOG_STREAMER. The batch script runs on the first node, so the
# streamer runs right here, not as an srun step: cancelling a step SIGKILLs it,
# while a plain SIGTERM lets it flush and exit 0.
nvrx_start_streamer() {
  nvrxlog stream --bind "tcp://0.0.0.0:${NVRX_STREAMER_PORT:-0}" --out "$NVRX_LOG_DIR/cluster.log" \
    > "$NVRX_LOG_DIR/streamer.out" 2> "$NVRX_LOG_DIR/streamer.err" &
  NVRX_STREAMER_PID=$!
  local port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on tcp:\/\/[^:]*:\([0-9]*\),.*/\1/p' "$NVRX_LOG_DIR/streamer.out" 2>/dev/null)
    [[ -n $port ]] && break
    kill -0 "$NVRX_STREAMER_PID" 2>/dev/null || { cat "$NVRX_LOG_DIR/streamer.err" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $port ]] || { echo "nvrxlog: the streamer did not start" >&2; exit 1; }
  export NVRX_LOG_STREAMER="tcp://$NVRX_HEAD:$port"
  echo "nvrxlog: streamer at $NVRX_LOG_STREAMER; watch with: nvrxlog tail --connect $NVRX_LOG_STREAMER"
}

# SIGTERM makes the streamer flush everything it received and exit 0.
nvrx_stop_streamer() {
  kill -TERM "$NVRX_STREAMER_PID"
  wait "$NVRX_STREAMER_PID"
}
