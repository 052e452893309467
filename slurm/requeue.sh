# Sourced by slurm/train.sbatch, slurm/lstm_ddp.sbatch and the job arrays sweep.py prints.
#
#   run_train [train.py arguments]    one training run: `python train.py ...`, or torchrun with one process per
#                                     GPU when the job has more than one; resumable, see run_requeueable
#   run_requeueable COMMAND...        run COMMAND so that the run outlives its job:
#
# - `#SBATCH --signal=B:USR1@120` makes SLURM send USR1 to this batch shell two minutes before the time limit.
#   It is passed on to the command as SIGTERM (train.py checkpoints and exits 75; torchrun passes SIGTERM on to
#   its workers but would die on USR1), and then the job requeues itself: the same command runs again later and
#   train.py resumes from its checkpoint.
# - Preemption, `scontrol requeue` and `scancel` signal every process of the job with SIGTERM themselves, so
#   that is not passed on again (train.py would get it twice); SLURM requeues preempted jobs (`--requeue`).
#   The shell only waits for the command to finish its checkpoint before the step ends.
# - A plain `scancel` is not undone: only the time-limit warning leads to a self-requeue.
# Environment: TRAIN_PYTHON (default python) runs train.py; SWEEP_MAX_REQUEUES (default 50) bounds the
# self-requeues of a run that makes no progress; TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default here 600 s) is how long
# torchrun waits for its workers' checkpoints after SIGTERM before killing them.

run_requeueable() {
    local warned=0 trapped pid status rc=""
    echo "[requeue.sh] $(date '+%F %T') job ${SLURM_JOB_ID:-none} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}: $*"
    "$@" &
    pid=$!
    trap 'trapped=1; warned=1; kill -TERM "$pid" 2>/dev/null
          echo "[requeue.sh] $(date "+%F %T") time-limit warning: the run checkpoints, the job requeues"' USR1
    trap 'trapped=1; echo "[requeue.sh] $(date "+%F %T") SIGTERM: waiting for the run to checkpoint"' TERM
    trap 'trapped=1; kill -INT "$pid" 2>/dev/null' INT
    while [ -z "$rc" ]; do
        trapped=0
        wait "$pid"
        status=$?
        # a trap cuts `wait` short with a status above 128; waiting again returns the command's own status
        if [ "$trapped" = 1 ] && [ "$status" -gt 128 ]; then continue; fi
        rc=$status
    done
    trap - USR1 TERM INT
    echo "[requeue.sh] $(date '+%F %T') exit status $rc"
    if [ "$warned" = 1 ] && [ "$rc" != 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        if [ "${SLURM_RESTART_COUNT:-0}" -ge "${SWEEP_MAX_REQUEUES:-50}" ]; then
            echo "[requeue.sh] requeued ${SLURM_RESTART_COUNT} times already: not again (SWEEP_MAX_REQUEUES)"
            return "$rc"
        fi
        echo "[requeue.sh] requeueing job $SLURM_JOB_ID: the run resumes from its checkpoint"
        # SLURM_JOB_ID is the task's own id in an array too; the requeue ends this job, so wait for that
        scontrol requeue "$SLURM_JOB_ID" && sleep 300
    fi
    return "$rc"
}

run_train() {
    local nproc=${SLURM_GPUS_ON_NODE:-} python=${TRAIN_PYTHON:-python}
    if [ -z "$nproc" ] && [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        nproc=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)  # the GPUs SLURM gave the job
    fi
    case "$nproc" in ''|*[!0-9]*) nproc=0 ;; esac
    [ "$nproc" -ge 1 ] || nproc=1
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then  # split the task's CPUs between its processes: no oversubscription
        local threads=$(( SLURM_CPUS_PER_TASK / nproc ))
        [ "$threads" -ge 1 ] || threads=1
        export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
    fi
    if [ "$nproc" -gt 1 ]; then
        # torchrun kills its workers 30 s after passing SIGTERM on (its default): less than SLURM's warning
        # (--signal=B:USR1@120) and maybe less than a large checkpoint takes. Wait longer than any warning here;
        # SLURM's own kill at the time limit (or after KillWait on preemption) bounds a run that never exits.
        export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}
        run_requeueable "$python" -m torch.distributed.run --standalone --nproc_per_node="$nproc" train.py "$@"
    else
        run_requeueable "$python" train.py "$@"
    fi
}
