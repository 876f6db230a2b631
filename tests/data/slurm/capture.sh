#!/usr/bin/env bash
# How the files in this folder were made: run on the single-node cluster of
# slurm/local-cluster (SLURM 22.05, cgroup job tracking, no accounting database), as root.
#   slurm/local-cluster start && bash tests/data/slurm/capture.sh OUTDIR
# It submits small jobs that end each way SLURM can end them, and saves what SLURM printed:
# the jobs' stderr (slurm-<id>.out) and the squeue / scontrol lines about them.
# The node-failure job sets the node DOWN for a moment: do not run this on a shared cluster.
# Run it once without accounting (the default) and once with EVENTFLOW_SLURM_ACCOUNTING=yes:
# the sacct_*.txt files need accounting, sacct_without_accounting.txt and
# scontrol_show_config.txt come from the run without it; the other files from the last run.
set -euo pipefail
out="$(realpath "${1:?usage: capture.sh OUTDIR}")"
work="$(mktemp -d)"
cd "$work"

job() {  # job NAME [sbatch options...] -- body
    local name="$1"; shift
    local opts=()
    while [[ "$1" != -- ]]; do opts+=("$1"); shift; done
    shift
    printf '#!/bin/bash\n#SBATCH --output=slurm-%%j.out\n%s\n' "$*" >"$name.sh"
    sbatch --parsable --job-name="ef-capture-$name" "${opts[@]}" "$name.sh"
}
wait_done() {  # wait_done ID: until scontrol says the job is no longer pending/running
    while scontrol --oneliner show job "$1" | grep -qE 'JobState=(PENDING|RUNNING|COMPLETING)'; do
        sleep 1
    done
}
show() { scontrol --oneliner show job "$1"; }

# 1. Node failure: the node is set DOWN under a running job (ReturnToService=2 brings it back).
nf=$(job node_failure --no-requeue -- 'echo start; sleep 60; echo end')
sleep 3
node="$(sinfo --noheader --format=%N | head -n 1)"
scontrol update nodename="$node" state=down reason=eventflow-capture
wait_done "$nf"
show "$nf" >"$out/scontrol_node_fail.txt"
cp "slurm-$nf.out" "$out/node_failure_stderr.txt"
until sinfo --noheader --format=%T | grep -qE '^(idle|mixed)'; do
    scontrol update nodename="$node" state=resume 2>/dev/null || true; sleep 1
done

# 2. The other endings, side by side.
ok=$(job completed -- 'echo hello')
fail=$(job exit3 -- 'echo failing; exit 3')
run=$(job running -- 'sleep 300')
oom=$(job oom --mem=100M -- 'python3 -c "
import time
blocks = []
for _ in range(60):
    blocks.append(bytearray(20 * 1024 * 1024)); time.sleep(0.2)
"')
tl=$(job time_limit --time=1 -- 'sleep 200')
sleep 3
pend=$(job pending --cpus-per-task=16 --mem=100M -- 'echo never alone')
sleep 3
wait_done "$ok"; wait_done "$fail"; wait_done "$oom"
squeue --noheader --states=all --format='%i|%T|%r|%N|%j' --jobs="$ok,$fail,$run,$oom,$tl,$pend,999999" \
    >"$out/squeue_states.txt"
squeue --noheader --states=all --format='%i|%T|%r|%N|%j' --name=ef-capture-running \
    >"$out/squeue_by_name.txt"
{ show "$ok"; show "$fail"; show "$oom"; show "$run"; show "$pend"; } >"$out/scontrol_jobs.txt"
{ squeue --noheader --states=all --jobs=999999 2>&1 || true; } >"$out/squeue_unknown_id.txt"
if sacct --noheader --jobs="$ok" >/dev/null 2>&1; then
    accounting=yes
    scontrol show config >"$out/scontrol_show_config_accounting.txt"
else
    accounting=no
    { sacct --jobs="$ok" 2>&1 || true; } >"$out/sacct_without_accounting.txt"
    scontrol show config >"$out/scontrol_show_config.txt"
fi
cp "slurm-$oom.out" "$out/oom_cgroup_stderr.txt"
cp "slurm-$fail.out" "$out/exit3_stderr.txt"
scancel "$run"; scancel "$pend"
wait_done "$run"; wait_done "$pend"
{ show "$run"; show "$pend"; } >"$out/scontrol_cancelled.txt"
cp "slurm-$run.out" "$out/cancelled_stderr.txt"
wait_done "$tl"
show "$tl" >"$out/scontrol_timeout.txt"
cp "slurm-$tl.out" "$out/time_limit_stderr.txt"
if [[ "$accounting" == yes ]]; then
    sleep 5  # slurmctld sends job records to slurmdbd asynchronously
    fields=JobIDRaw,State,ExitCode,Reason,NodeList,JobName
    ids="$nf,$ok,$fail,$run,$oom,$tl,$pend"
    sacct --noheader --parsable2 --allocations --format="$fields" --jobs="$ids" \
        >"$out/sacct_jobs.txt"
    sacct --noheader --parsable2 --format="$fields" --jobs="$ids" >"$out/sacct_with_steps.txt"
    sacct --noheader --parsable2 --allocations --format="$fields" --name=ef-capture-exit3 \
        --starttime=now-1days >"$out/sacct_by_name.txt"
fi
echo "captured into $out (work folder $work)"
