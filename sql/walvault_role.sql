-- A least-privilege role for walvault: enough to take base backups
-- (`walvault backup`) and run checks, nothing more. Not a superuser.
--
--   psql -d postgres -f sql/walvault_role.sql
--   then: walvault backup --dbname 'user=walvault dbname=postgres' ...
--
-- Set a password (or use peer/cert authentication in pg_hba.conf):
--   ALTER ROLE walvault PASSWORD '...';
-- walvault reads the data directory itself, so it must also run as the
-- operating-system user that owns it (usually postgres).

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walvault') THEN
    CREATE ROLE walvault LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
END
$$;

-- Read data_directory, archive_mode, archive_command and wal_segment_size.
GRANT pg_read_all_settings TO walvault;

-- The control-file facts: system identifier and checkpoint timeline.
GRANT EXECUTE ON FUNCTION pg_control_system() TO walvault;
GRANT EXECUTE ON FUNCTION pg_control_checkpoint() TO walvault;

-- Start and stop a non-exclusive backup; switch WAL for checks; restore
-- points for planned recovery targets.
DO $$
BEGIN
  IF current_setting('server_version_num')::int >= 150000 THEN
    EXECUTE 'GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO walvault';
    EXECUTE 'GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO walvault';
  ELSE
    EXECUTE 'GRANT EXECUTE ON FUNCTION pg_start_backup(text, boolean, boolean) TO walvault';
    EXECUTE 'GRANT EXECUTE ON FUNCTION pg_stop_backup(boolean, boolean) TO walvault';
  END IF;
END
$$;
GRANT EXECUTE ON FUNCTION pg_switch_wal() TO walvault;
GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO walvault;
