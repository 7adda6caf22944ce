//! Row-level security as a second wall between tenants (see `core/src/tenant_wall.rs`).
//!
//! The API and the worker switch to the role `postbridge_app`, which owns nothing, so the policies apply to them.
//! Every table with a `tenant_id` (and `tenants` itself) shows a row only to a session whose `postbridge.tenant`
//! is that tenant, or to the explicit operator-wide scope (`postbridge.scope = 'all'`); the same check applies to
//! rows written. A later migration that adds a tenant-owned table must add its policy too (the test
//! `tenant_wall::every_tenant_owned_table_has_the_policy` fails otherwise).

sql_migration!();

const UP: &str = r#"
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'postbridge_app') THEN
        CREATE ROLE postbridge_app NOLOGIN;
    END IF;
-- Roles belong to the whole cluster: databases migrated at the same moment (parallel tests on a fresh server)
-- race to create it, and the loser finds it made.
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
-- The migrating user may switch to the role (a superuser always may).
DO $$
BEGIN
    EXECUTE format('GRANT postbridge_app TO %I', current_user);
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'could not grant postbridge_app to %: %', current_user, SQLERRM;
END
$$;
GRANT USAGE ON SCHEMA public TO postbridge_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO postbridge_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO postbridge_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO postbridge_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO postbridge_app;

DO $$
DECLARE
    owned record;
BEGIN
    FOR owned IN
        SELECT c.table_name FROM information_schema.columns c
          JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', owned.table_name);
        EXECUTE format(
            'CREATE POLICY tenant_wall ON %I USING (current_setting(''postbridge.scope'', true) = ''all'' '
            'OR tenant_id = nullif(current_setting(''postbridge.tenant'', true), '''')::uuid)',
            owned.table_name);
    END LOOP;
END
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON tenants USING (current_setting('postbridge.scope', true) = 'all'
    OR id = nullif(current_setting('postbridge.tenant', true), '')::uuid);
"#;

const DOWN: &str = r#"
DO $$
DECLARE
    walled record;
BEGIN
    FOR walled IN SELECT tablename FROM pg_policies WHERE schemaname = 'public' AND policyname = 'tenant_wall'
    LOOP
        EXECUTE format('DROP POLICY tenant_wall ON %I', walled.tablename);
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', walled.tablename);
    END LOOP;
END
$$;
"#;
