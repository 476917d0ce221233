-- What pgwarden's monitor role (monitor.user, here `pgwarden`) needs when it
-- is not a superuser, in PostgreSQL 15. Run once on the primary, as a
-- superuser, after CREATE ROLE pgwarden LOGIN (docs/install.md, step 2); it
-- replicates to the standby. Tested: tests/tests/first_install.rs runs a
-- switchover and a rejoin by pg_rewind with exactly these grants.

-- Observe: pg_stat_replication details, pg_stat_wal_receiver, settings,
-- replication slots, and the control data of both nodes.
GRANT pg_monitor TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_control_system() TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_control_checkpoint() TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_control_recovery() TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_control_init() TO pgwarden;

-- Fence: end the sessions of application.db_user that outlive the
-- application (never a superuser's: db_user must not be one).
GRANT pg_signal_backend TO pgwarden;

-- Promote, and reconfigure the nodes after it.
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_reload_conf() TO pgwarden;
GRANT ALTER SYSTEM ON PARAMETER primary_conninfo, primary_slot_name,
      synchronous_standby_names TO pgwarden;
-- Create the replication slot on the new primary.
ALTER ROLE pgwarden REPLICATION;

-- Rejoin by pg_rewind (seconds, instead of a full copy): CHECKPOINT on the
-- primary and reading its files.
GRANT pg_checkpoint TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO pgwarden;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO pgwarden;
