//! Background refreshes run in batches without holding a transaction open while the provider answers: a batch
//! leases its grants instead, and an on-demand caller that finds a grant leased uses its current token while it
//! still works, or waits for the batch's answer, so a grant is still refreshed once at a time.

sql_migration!();

// A refresh writes a grant three times (the scheduler's dispatch mark, the batch's lease, the new tokens). The first
// two touch no indexed column: with room left on each page they are HOT updates, which rewrite no index entry.
const UP: &str = r#"
ALTER TABLE grants ADD COLUMN refreshing_until timestamptz;
ALTER TABLE grants SET (fillfactor = 50);
"#;

const DOWN: &str = r#"
ALTER TABLE grants RESET (fillfactor);
ALTER TABLE grants DROP COLUMN refreshing_until;
"#;
