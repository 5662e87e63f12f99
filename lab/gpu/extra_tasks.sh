#!/usr/bin/env bash
# The runs of issue 24's section 3 as override lines, one run per line, for lab/gpu/protocol_runs.sh:
#   bash lab/gpu/extra_tasks.sh fmnist <attn,...> <seeds>
#   bash lab/gpu/extra_tasks.sh mqar <attn,...> <lengths> <pairs> <widths> <lrs>
#   mapfile -t runs < <(bash lab/gpu/extra_tasks.sh mqar full,sfa 256,1024 16,64 128 1e-3)
#   LRA_SFA_GIT_COMMIT=<commit> bash lab/gpu/protocol_runs.sh "${runs[@]}"
# fmnist: experiment=seq_fmnist on task=fmnist and task=fmnist_perm, every attn and seed, reading the idx files
#   from $FMNIST_DIR (default data/fashion-mnist: copy /usr/share/datasets/fashion-mnist/*.gz there and carry
#   that folder; the GPU machine has no package access).
# mqar: experiment=mqar over attn x length x pairs x width x lr; a (length, pairs) with 4 * pairs > length
#   cannot be generated and is left out (said on stderr).
# An attn may carry its own overrides after colons: sfa:topk=16 -> attn=sfa attn.topk=16.
# EXTRA (optional) is appended to every line, e.g. a smoke test: EXTRA="trainer.max_steps=2".
set -u
attn_args() {
  local out="attn=${1%%:*}"
  if [[ $1 == *:* ]]; then for kv in $(tr ':' ' ' <<< "${1#*:}"); do out="$out attn.$kv"; done; fi
  echo "$out"
}
case ${1:-} in
  fmnist)
    for task in fmnist fmnist_perm; do for spec in ${2//,/ }; do for seed in ${3//,/ }; do
      echo "experiment=seq_fmnist task=$task $(attn_args "$spec") seed=$seed task.data_dir=${FMNIST_DIR:-data/fashion-mnist} ${EXTRA:-}"
    done; done; done ;;
  mqar)
    for spec in ${2//,/ }; do for n in ${3//,/ }; do for p in ${4//,/ }; do
      if (( 4 * p > n )); then echo "left out: L=$n P=$p (needs L >= $((4 * p)))" >&2; continue; fi
      for w in ${5//,/ }; do for lr in ${6//,/ }; do
        echo "experiment=mqar $(attn_args "$spec") task.seq_len=$n task.num_pairs=$p model.d_model=$w trainer.lr=$lr ${EXTRA:-}"
      done; done
    done; done; done ;;
  *) echo "usage: $0 fmnist <attns> <seeds> | mqar <attns> <lengths> <pairs> <widths> <lrs>" >&2; exit 2 ;;
esac
