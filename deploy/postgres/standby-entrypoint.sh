#!/bin/bash
# The streaming-replication standby: on first start, clone the primary with pg_basebackup
# (creating a replication slot, so the primary keeps the WAL the standby has not received yet)
# and write standby.signal + primary_conninfo (-R); afterwards just start as a hot standby.
# Promote it with `pg_ctl promote` (or `SELECT pg_promote()`) when the primary is lost.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready --host="$PRIMARY_HOST" --username=replicator --quiet; do sleep 1; done
  PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup --host="$PRIMARY_HOST" \
    --username=replicator --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf \
    --create-slot --slot="$REPLICATION_SLOT" --checkpoint=fast --progress
  chmod 700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
