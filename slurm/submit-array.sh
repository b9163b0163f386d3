#!/usr/bin/env bash
# Submit a survey as a SLURM job array (one task per ObsID, no Dask) plus a catalogue job that runs
# when every array task has ended (afterany: failed ObsIDs are recorded, the catalogue still builds).
#
#   slurm/submit-array.sh survey.yaml obsids.txt [max concurrent tasks] [-- extra sbatch options]
#
# Prints the two job ids. Environment: XMM_SURVEY (command, default xmm-survey).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="${1:?usage: submit-array.sh CONFIG.yaml OBSIDS.txt [MAX_CONCURRENT] [-- sbatch options]}"
LIST="${2:?usage: submit-array.sh CONFIG.yaml OBSIDS.txt [MAX_CONCURRENT] [-- sbatch options]}"
shift 2
MAXC=""
if [[ $# -gt 0 && "$1" != "--" ]]; then MAXC="%$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
CONFIG="$(realpath "$CONFIG")"
LIST="$(realpath "$LIST")"
# ObsIDs = non-blank lines once comments are removed (the same rule as xmm-survey's list reader)
N="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | awk 'NF && !seen[$0]++' | wc -l)"
[[ "$N" -gt 0 ]] || { echo "submit-array.sh: no ObsIDs in $LIST" >&2; exit 2; }
ARRAY_ID="$(sbatch --parsable "${EXTRA[@]}" --array="1-${N}${MAXC}" "$HERE/array.sbatch" "$CONFIG" "$LIST")"
ARRAY_ID="${ARRAY_ID%%;*}"
read -r -a CMD <<< "${XMM_SURVEY:-xmm-survey}"
CAT_ID="$(sbatch --parsable "${EXTRA[@]}" --dependency="afterany:${ARRAY_ID}" --job-name=xmm-survey-catalogue \
    --output="xmm-survey-catalogue-%j.out" \
    --wrap="$(printf '%q ' "${CMD[@]}") run --config $(printf '%q' "$CONFIG") --catalogue-only")"
CAT_ID="${CAT_ID%%;*}"
echo "array job ${ARRAY_ID} (${N} ObsIDs), catalogue job ${CAT_ID}"
