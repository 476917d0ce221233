-- The pgwarden probe: everything one poll needs, in ONE statement and ONE
-- round trip, as one JSON document whose keys are the fields of
-- pgwarden_core::snapshot::NodeSnapshot. Works on a primary and a standby:
-- functions that fail during recovery sit behind CASE on pg_is_in_recovery().
WITH node AS (
    SELECT pg_is_in_recovery() AS in_recovery
), wal AS (
    SELECT CASE WHEN in_recovery THEN NULL ELSE pg_current_wal_lsn() END AS current_lsn,
           pg_last_wal_receive_lsn() AS receive_lsn,
           pg_last_wal_replay_lsn() AS replay_lsn
    FROM node
), receiver AS (
    SELECT status, sender_host, sender_port, slot_name, received_tli, flushed_lsn
    FROM pg_stat_wal_receiver
), activity AS (
    SELECT usename, wait_event
    FROM pg_stat_activity
    WHERE backend_type = 'client backend'
)
SELECT json_build_object(
    'server_version', current_setting('server_version_num')::int,
    'in_recovery', node.in_recovery,
    -- On a primary the current WAL file name carries the timeline the node
    -- writes; pg_control_checkpoint() lags behind it until the first
    -- checkpoint after a promotion.
    'timeline', CASE
        WHEN NOT node.in_recovery
            THEN ('x' || substr(pg_walfile_name(wal.current_lsn), 1, 8))::bit(32)::int
        ELSE coalesce((SELECT received_tli FROM receiver), (pg_control_checkpoint()).timeline_id)
    END,
    'system_identifier', (pg_control_system()).system_identifier,
    'current_lsn', wal.current_lsn,
    'receive_lsn', wal.receive_lsn,
    'replay_lsn', wal.replay_lsn,
    'last_replay_at', pg_last_xact_replay_timestamp(),
    'replay_delay_seconds', CASE
        WHEN NOT node.in_recovery THEN NULL
        WHEN wal.receive_lsn IS NOT DISTINCT FROM wal.replay_lsn THEN 0
        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
    END,
    'replication', coalesce((
        SELECT json_agg(json_build_object(
            'pid', pid,
            'application_name', application_name,
            'client_addr', host(client_addr),
            'state', state,
            'sync_state', sync_state,
            'sent_lsn', sent_lsn,
            'write_lsn', write_lsn,
            'flush_lsn', flush_lsn,
            'replay_lsn', replay_lsn,
            'write_lag_seconds', extract(epoch FROM write_lag),
            'flush_lag_seconds', extract(epoch FROM flush_lag),
            'replay_lag_seconds', extract(epoch FROM replay_lag)
        ) ORDER BY application_name, pid)
        FROM pg_stat_replication), '[]'::json),
    'slots', coalesce((
        SELECT json_agg(json_build_object(
            'slot_name', slot_name,
            'slot_type', slot_type,
            'active', active,
            'restart_lsn', restart_lsn,
            'wal_status', wal_status,
            'safe_wal_size', safe_wal_size,
            'retained_bytes', (coalesce(wal.current_lsn, wal.receive_lsn) - restart_lsn)::bigint
        ) ORDER BY slot_name)
        FROM pg_replication_slots), '[]'::json),
    'wal_receiver', (SELECT row_to_json(receiver) FROM receiver),
    'settings', json_build_object(
        'synchronous_standby_names', current_setting('synchronous_standby_names'),
        'synchronous_commit', current_setting('synchronous_commit'),
        'wal_level', current_setting('wal_level'),
        'hot_standby', current_setting('hot_standby'),
        'max_wal_senders', current_setting('max_wal_senders')::int,
        'primary_conninfo', current_setting('primary_conninfo'),
        'primary_slot_name', current_setting('primary_slot_name'),
        'wal_log_hints', current_setting('wal_log_hints'),
        'data_checksums', current_setting('data_checksums')
    ),
    'backends_waiting_sync_rep', (SELECT count(*) FROM activity WHERE wait_event = 'SyncRep'),
    'sessions_by_role', coalesce((
        SELECT json_object_agg(usename, n)
        FROM (SELECT usename, count(*) AS n FROM activity
              WHERE usename IS NOT NULL GROUP BY usename) per_role), '{}'::json)
)::text
FROM node, wal
