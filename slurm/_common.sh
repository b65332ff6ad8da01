# Shared by the nvrxlog sbatch scripts (sourced, not run).
# Per-node files and the cluster file live on the shared filesystem; temp
# message files on node-local storage; the streamer runs on the first node.
# Sourcing this installs an EXIT trap (nvrx_finish) that, on every exit path
# (training failed, job cancelled), lets each node's aggregation finish, stops
# what the script started, removes the node-local tmpdirs if nothing is left in
# them, prints where the files are, and keeps the script's exit status.

# The directory of this file: the example training script sits next to it.
NVRX_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export NVRX_SLURM_DIR
export NVRX_LOG_DIR=${NVRX_LOG_DIR:-$SLURM_SUBMIT_DIR/nvrx_logs/$SLURM_JOB_ID}
export NVRX_NODE_LOCAL_TMPDIR=${NVRX_NODE_LOCAL_TMPDIR:-${TMPDIR:-/dev/shm}/nvrx-$SLURM_JOB_ID}
# A shell command line; `nvrx_srun_train` runs it with `bash -c` on every task.
NVRX_TRAIN=${NVRX_TRAIN:-python $(printf %q "$NVRX_SLURM_DIR/example_train.py")}
NVRX_HEAD=$(hostname)  # the batch script runs on the job's first node
NVRX_STREAMER_PID=""     # set by nvrx_start_streamer
NVRX_AGGREGATORS_PID=""  # set by nvrx_start_aggregators (external mode)
NVRX_STOP_FILE=""        # the aggregators' --wait-file

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
    # `|| true`: the background shell may not have created streamer.out yet (sed exits 2)
    port=$(sed -n 's/.*listening on tcp:\/\/[^:]*:\([0-9]*\),.*/\1/p' "$NVRX_LOG_DIR/streamer.out" 2>/dev/null || true)
    [[ -n $port ]] && break
    kill -0 "$NVRX_STREAMER_PID" 2>/dev/null || { cat "$NVRX_LOG_DIR/streamer.err" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $port ]] || { echo "nvrxlog: the streamer did not start" >&2; exit 1; }
  export NVRX_LOG_STREAMER="tcp://$NVRX_HEAD:$port"
  echo "nvrxlog: streamer at $NVRX_LOG_STREAMER; watch with: nvrxlog tail --connect $NVRX_LOG_STREAMER"
}

# External mode: one `nvrxlog aggregate` per node as an overlapping srun step.
# Each drains, forwards what is left and exits 0 once the wait file exists
# (nvrx_finish creates it, whether training succeeded or not).
nvrx_start_aggregators() {
  NVRX_STOP_FILE="$NVRX_LOG_DIR/.training-finished"
  rm -f "$NVRX_STOP_FILE"
  srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --overlap \
    nvrxlog aggregate --tmp-dir "$NVRX_NODE_LOCAL_TMPDIR" --log-dir "$NVRX_LOG_DIR" \
    --streamer "$NVRX_LOG_STREAMER" --wait-file "$NVRX_STOP_FILE" &
  NVRX_AGGREGATORS_PID=$!
}

# The training step: NVRX_TRAIN on every task of the job.
nvrx_srun_train() {
  srun bash -c "$NVRX_TRAIN"
}

# Wait up to $2 seconds for our child $1 ($3 names it), then SIGTERM it, then
# SIGKILL it 10 s later; return its exit status.
nvrx_wait_child() {
  local pid=$1 limit=$2 what=$3 waited=0
  while kill -0 "$pid" 2>/dev/null && (( waited < limit * 10 )); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "nvrxlog: $what did not stop within ${limit}s; sending SIGTERM" >&2
    kill -TERM "$pid" 2>/dev/null
    waited=0
    while kill -0 "$pid" 2>/dev/null && (( waited < 100 )); do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -0 "$pid" 2>/dev/null && { echo "nvrxlog: killing $what" >&2; kill -KILL "$pid" 2>/dev/null; }
  fi
  wait "$pid"
}

# Run on every node (one task per node) once training is over, before the
# streamer stops. The node's aggregation may outlive the ranks: in thread and
# torchrun mode the aggregating rank hands over to a detached successor
# (`nvrxlog aggregate --take-over`) while other writers live. Wait up to $2
# seconds for every aggregator of tmpdir $1 on this node to finish (it exits
# once everything is written and delivered), then SIGTERM what is left (it
# drains and exits). Then remove the tmpdir if all that is left in it is the
# aggregator's lock file; temp message files that were not aggregated are
# never deleted: one line says where they are.
nvrx_node_end() {
  local d limit=$2 lock waited=0 pids
  d=$(realpath -m -s "$1")  # as nvrxlog writes it in the aggregator's command line
  [[ -d $d ]] || return 0
  lock=$d/.nvrx-aggregator.lock
  nvrx_node_aggregators() {  # pids whose command line is `... aggregate ... --tmp-dir $d ...`
    local f pid prev arg agg tmp
    for f in /proc/[0-9]*/cmdline; do
      pid=${f#/proc/}
      pid=${pid%/cmdline}
      [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
      prev="" agg=0 tmp=0
      while IFS= read -r -d '' arg; do
        [[ $arg == aggregate ]] && agg=1
        [[ ($prev == --tmp-dir && $arg == "$d") || $arg == "--tmp-dir=$d" ]] && tmp=1
        prev=$arg
      done 2>/dev/null < "$f"
      (( agg && tmp )) && echo "$pid"
    done 2>/dev/null
  }
  nvrx_node_busy() {  # an aggregator of $d runs, or something holds its lock
    [[ -n $(nvrx_node_aggregators) ]] && return 0
    [[ -e $lock ]] && command -v flock >/dev/null && ! flock -s -n "$lock" true 2>/dev/null
  }
  while nvrx_node_busy && (( waited < limit * 5 )); do
    sleep 0.2
    waited=$((waited + 1))
  done
  pids=$(nvrx_node_aggregators)
  if [[ -n $pids ]]; then
    echo "nvrxlog: $(hostname): the node's aggregator did not finish within ${limit}s; SIGTERM (it drains and exits)" >&2
    # shellcheck disable=SC2086  # a list of pids
    kill -TERM $pids 2>/dev/null
    waited=0
    while [[ -n $(nvrx_node_aggregators) ]] && (( waited < 50 )); do
      sleep 0.2
      waited=$((waited + 1))
    done
    pids=$(nvrx_node_aggregators)
    # shellcheck disable=SC2086
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null
  fi
  if [[ -z $(find "$d" -mindepth 1 -maxdepth 1 ! -name .nvrx-aggregator.lock -print -quit) ]]; then
    rm -f "$lock"
    rmdir "$d" 2>/dev/null && return 0
  fi
  echo "nvrxlog: $(hostname): node-local tmpdir $d kept" \
    "($(find "$d" -maxdepth 1 -name 'nvrx.*.jsonl' | wc -l) temp message file(s) not aggregated)"
}

# nvrx_node_end on every node: an srun step with one task per node, overlapping
# whatever else runs, bounded by a timeout.
nvrx_end_nodes() {
  local limit=${NVRX_AGGREGATOR_STOP_TIMEOUT:-120}
  timeout --kill-after=10 "$((limit + 60))" \
    srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --overlap \
    bash -c "$(declare -f nvrx_node_end); nvrx_node_end \"\$@\"" nvrx-node-end "$NVRX_NODE_LOCAL_TMPDIR" "$limit" \
    || echo "nvrxlog: could not finish the node-local aggregation and tmpdirs ($NVRX_NODE_LOCAL_TMPDIR)" >&2
}

# The EXIT trap: stop the external aggregators (wait file), finish every node
# (its aggregation, its tmpdir), then stop the streamer (SIGTERM: it flushes and
# exits 0) and say where the files are. The exit status is the script's own
# (e.g. training's), else the first failure here.
nvrx_finish() {
  local status=$? rc
  set +e
  trap ':' TERM INT  # a second SIGTERM must not cut the clean-up short
  if [[ -n $NVRX_STOP_FILE ]]; then
    touch "$NVRX_STOP_FILE"
  fi
  if [[ -n $NVRX_AGGREGATORS_PID ]]; then
    nvrx_wait_child "$NVRX_AGGREGATORS_PID" "${NVRX_AGGREGATOR_STOP_TIMEOUT:-120}" "the per-node aggregators"
    rc=$?
    (( rc == 0 )) || { echo "nvrxlog: the per-node aggregators exited $rc" >&2; (( status )) || status=$rc; }
  fi
  nvrx_end_nodes  # before the streamer stops: a successor may still be forwarding
  if [[ -n $NVRX_STREAMER_PID ]]; then
    kill -TERM "$NVRX_STREAMER_PID" 2>/dev/null
    nvrx_wait_child "$NVRX_STREAMER_PID" "${NVRX_STREAMER_STOP_TIMEOUT:-60}" "the streamer"
    rc=$?
    (( rc == 0 )) || { echo "nvrxlog: the streamer exited $rc (see $NVRX_LOG_DIR/streamer.err)" >&2; (( status )) || status=$rc; }
  fi
  echo "nvrxlog: per-node files in $NVRX_LOG_DIR, cluster file $NVRX_LOG_DIR/cluster.log"
  exit "$status"
}

# From here on, every exit path goes through nvrx_finish.
trap nvrx_finish EXIT
# SLURM cancels (scancel, time limit) with SIGTERM: exit non-zero through the EXIT trap.
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p "$NVRX_LOG_DIR"
