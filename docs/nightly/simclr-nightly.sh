#!/bin/bash
# The nightly run: `pipeline run all` on the run dir; up-to-date stages are skipped, a killed run
# resumes. Exit 0 success; 1 a stage failed at run time (retry); 2 bad usage, config or input (do
# not retry: alert). The crontab line and the systemd service both call this.
set -uo pipefail
cd "${SIMCLR_REPO:?set SIMCLR_REPO to the pipeline checkout}"
node bin/pipeline.mjs run all --config "${SIMCLR_CONFIG:?}" --run-dir "${SIMCLR_RUN_DIR:?}" ${SIMCLR_ARGS:-}
code=$?
case $code in
  0) ;;
  2) echo "simclr-nightly: bad usage, config or input (exit 2): not retrying; fix it and start again" >&2 ;;
  *) echo "simclr-nightly: a stage failed at run time (exit $code): the next attempt resumes" >&2 ;;
esac
exit $code
