#!/bin/bash
# Nsight Compute over bench/profile_kernels.py cases: one text report per case under $OUT.
set -u
TAG=${TAG:-}
# Extra arguments for every case (e.g. --config '{...}' --realization gemv) come from $CASE_ARGS.
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
for c in "$@"; do
  timeout 120 "$NCU" --profile-from-start off --clock-control none \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section LaunchStats --section InstructionStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section SourceCounters \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    python bench/profile_kernels.py --case "$c" ${CASE_ARGS:-} > "$OUT/ncu_$c$TAG.txt" 2>&1
  echo "== $c$TAG rc=$?"; grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Issued Warp Per|No Eligible|Active Warps Per Scheduler|Eligible Warps|Warp Cycles Per Issued|Memory Throughput|DRAM Throughput|Executed Ipc A|Block Limit Registers" "$OUT/ncu_$c$TAG.txt" | head -24
  grep -E "issue_stalled" "$OUT/ncu_$c$TAG.txt" | awk '$NF > 0.3' | head -8
done
