#!/bin/bash
# The nightly run: `pipeline run all` on the run dir; up-to-date stages are skipped, a killed run
# resumes. Exit 0 success; 1 a stage failed at run time (retry); 2 bad usage, config or input (do
# not retry: alert). The crontab line and the systemd service both call this.
#
# SIMCLR_REFRESH=student (e.g. on weekdays, with the default `teacher` at the weekend): keep the
# fine-tuned teachers; ingest the folder incrementally, then `run all --from distill`, so only the
# new images' teacher logits are computed and the students learn on the grown set. A teacher
# refresh (the default) reruns everything the new images change, pretraining included (set
# pretrain.init_from in the config to start it from a copy of the last encoder).
set -uo pipefail
cd "${SIMCLR_REPO:?set SIMCLR_REPO to the pipeline checkout}"
common=(--config "${SIMCLR_CONFIG:?}" --run-dir "${SIMCLR_RUN_DIR:?}")
case "${SIMCLR_REFRESH:-teacher}" in
  teacher) node bin/pipeline.mjs run all "${common[@]}" ${SIMCLR_ARGS:-} ;;
  student) node bin/pipeline.mjs run ingest "${common[@]}" && node bin/pipeline.mjs run all "${common[@]}" --from distill ${SIMCLR_ARGS:-} ;;
  *) echo "simclr-nightly: SIMCLR_REFRESH must be teacher or student, got '${SIMCLR_REFRESH}'" >&2; exit 2 ;;
esac
code=$?
case $code in
  0) ;;
  2) echo "simclr-nightly: bad usage, config or input (exit 2): not retrying; fix it and start again" >&2 ;;
  *) echo "simclr-nightly: a stage failed at run time (exit $code): the next attempt resumes" >&2 ;;
esac
exit $code
