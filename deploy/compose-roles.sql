-- docker-compose.yml's `roles` step, run by psql as the superuser after `olps migrate` (which
-- created the NOLOGIN group roles): the LOGIN roles the service and the worker connect as, with
-- the passwords from the env file. Safe to run again (it resets the passwords to the env file's).
-- Variables: service_password, worker_password.
SELECT 'CREATE ROLE olps_serve_login LOGIN IN ROLE olps_service'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'olps_serve_login') \gexec
SELECT 'CREATE ROLE olps_worker_login LOGIN IN ROLE olps_worker'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'olps_worker_login') \gexec
SET password_encryption = 'scram-sha-256';
ALTER ROLE olps_serve_login PASSWORD :'service_password';
ALTER ROLE olps_worker_login PASSWORD :'worker_password';
