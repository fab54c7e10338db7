#!/usr/bin/env bash
# One migration in 8 shards on several hosts with GNU parallel over SSH, then the collector here.
#
# Before: every host named in hosts.txt (one sshlogin a line) has batch-ingest installed, mounts the
# shared run root at /nfs (NFSv4 or another filesystem with working POSIX advisory locks, flock: each
# run folder's journal is SQLite and its run.lock keeps one process per run folder) and keeps the
# credentials in ~/.config/batch-ingest/env (mode 600, `export SMARTSTREAM_...=` lines: see README.md);
# this host too, for the collector. A Redis that every host reaches holds the shared rate limit.
#
# The rows are assumed to have ref_ids: a shard that finds no folder (its first start, or a run root
# lost) looks its rows' ref_ids up on the platform and adopts the jobs it finds (--adopt-existing is
# implied); rows without ref_id are then not sent (`error`, NO_REF_ID; `batch-ingest retry` sends them).
# For a manifest without ref_ids add --send-without-ref-id to the shard command (a shard that lost its
# folder then sends its rows again); never --skip-existing, which turns the adoption off.
#
# Run it again after a failure: --resume-failed runs again only the shards that did not exit 0 (each
# resumes its run from its journal on /nfs, nothing is sent twice), then the collector resumes too.
set -euo pipefail
cd "$(dirname "$0")"

# {} is the shard index, 0 to 7, put in by parallel before the command goes to a host: the index
# needs no environment variable on the far side, and shows in the joblog and in each line's tag.
#
# A --no-wait shard exits 0 once every row of it was submitted or has ended, rows that failed or were
# rejected included (the collector reports those). Any other exit leaves rows unsent or the shard not
# run: 1 (rows left unsent), 2 (usage or configuration), 3 (API or auth), 4 (internal), 75 (its folder
# in use by another process: run again once that one ends), 130 (stopped), or ssh's 255. Then stop
# here, fix it if need be, and run this script again. parallel exits with the number of failed shards
# (1 to 100) or, above 100, failed itself; the joblog's 7th column is a shard's exit code.
status=0
parallel --sshloginfile hosts.txt --jobs 1 --line-buffer --tagstring 'shard {}' \
  --joblog shards.joblog --resume-failed \
  '. ~/.config/batch-ingest/env && batch-ingest run /nfs/manifest.csv --shard {}/8 --report-dir /nfs/migration --rate-store redis://redis-host:6379/0 --no-wait --quiet' \
  ::: 0 1 2 3 4 5 6 7 || status=$?
if [ "$status" -ne 0 ]; then
  echo "run-shards: some shards did not finish (see $(pwd)/shards.joblog); run this script again" >&2
  exit "$status"
fi

# The collector follows every shard's jobs to their end with one poller and writes each shard's report
# and the merged /nfs/migration/report.parquet and report.csv. It exits 0 when every row succeeded, 1
# when some did not (the reports say which: collecting again says the same), 75 when a shard still
# holds its folder (a shard process left running on a host: run this script again once it ended).
. ~/.config/batch-ingest/env
exec batch-ingest collect /nfs/migration --rate-store redis://redis-host:6379/0
