#!/usr/bin/env bash
# The findings campaign (docs/findings.md): for each table, its pilot (seeds 0-2), then the seeds the
# pre-registered seed rule gives it (`kdcicam claims --seed-plan`, read on the pilot seeds only, θ chosen
# on validation). Every step resumes from its checkpoints: rerun the same command to continue.
#
#   scripts/findings_campaign.sh DIR [PROFILE]      (PROFILE: medium unless named)
#
# DIR holds the store (runs.db), the artifacts (art/), the data cache (cache/) and campaign.log; keep it
# outside the repository. The code that trains is this script's checkout (PYTHONPATH points at it, so a
# pinned git worktree trains with its own code). Environment: JOBS (default 2) runs at a time, KDCICAM_THREADS
# (default 1) threads each; PYTHON
# (default python3); KDCICAM_CACHE (default DIR/cache); STEPS, a comma-separated list of "TABLE VARIANT"
# steps (default: the campaign's, in docs/findings.md's order); RETRAIN_MISSING=1 passes --retrain-missing to
# ablate (after a loss: finished teachers whose checkpoints are gone are trained again and checked).
set -u
[ $# -ge 1 ] || { echo "usage: $0 DIR [PROFILE]" >&2; exit 2; }
DIR=$(realpath -m "$1"); PROFILE=${2:-medium}; JOBS=${JOBS:-2}; PY=${PYTHON:-python3}
RETRAIN=(); [ "${RETRAIN_MISSING:-0}" = 1 ] && RETRAIN=(--retrain-missing)
CODE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DIR" || exit 2
# one thread per run whatever the core count: the thread count changes a run's numbers (README, "Repeating a run")
export KDCICAM_CACHE="${KDCICAM_CACHE:-$DIR/cache}" PYTHONPATH="$CODE" KDCICAM_THREADS="${KDCICAM_THREADS:-1}"
KD=("$PY" -m kdcicam)
STORE=(--db "$DIR/runs.db")
log() { echo "$(date -u +%FT%TZ) $*" >> "$DIR/campaign.log"; }
ablate() {
  log "ablate $*"
  "${KD[@]}" ablate "$@" --profile "$PROFILE" --jobs "$JOBS" --quiet "${RETRAIN[@]}" "${STORE[@]}" --artifacts "$DIR/art" \
    >> "$DIR/campaign.log" 2>&1
  local rc=$?
  log "rc=$rc ablate $*"
  [ "$rc" -eq 0 ] || failed=1
}
rule_seeds() {  # $1 table, $2 variant: the seed rule's number for it, or nothing when it needs no more
  local plan
  plan=$("${KD[@]}" claims --seed-plan --json --threshold-policy val --registry "$CODE/ablations" "${STORE[@]}" \
         2>> "$DIR/campaign.log") || { log "seed plan failed: $1, variant $2"; return 1; }
  "$PY" -c 'import json, sys
plan = json.loads(sys.argv[4])
n = [t["seeds"] for t in plan["tables"] if t["table"] == sys.argv[1] and t["variant"] == sys.argv[2]
     and t["profile"] == sys.argv[3] and t["command"]]
print(max(n) if n else "")' "$1" "$2" "$PROFILE" "$plan"
}
failed=0
log "start commit $(git -C "$CODE" rev-parse --short HEAD) dirty=$(git -C "$CODE" status --porcelain -- kdcicam ablations | wc -l) profile $PROFILE retrain_missing=${RETRAIN_MISSING:-0}"
STEPS=${STEPS:-table3 reference,table3 paper,table4 reference,table5 reference,figure1b reference,context-sweep reference}
IFS=',' read -r -a steps <<< "$STEPS"
for step in "${steps[@]}"; do
  read -r table variant <<< "$step"
  ablate "$table" --variant "$variant" --seeds 3
  seeds=$(rule_seeds "$table" "$variant") || { failed=1; continue; }
  log "seed rule: $table, variant $variant: ${seeds:-no more seeds}"
  [ -n "$seeds" ] && ablate "$table" --variant "$variant" --seeds "$seeds"
done
if [ "$failed" -eq 0 ]; then log "done"; else log "done, with failed steps (rerun to resume them)"; fi
exit "$failed"
