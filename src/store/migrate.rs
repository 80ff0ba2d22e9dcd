//! Schema migrations: every file of `migrations/`, embedded at build time,
//! applied once each and in order, recorded in `schema_migrations`. Each
//! migration runs in its own transaction under a transaction-scoped advisory
//! lock, so several instances starting at once apply it exactly once.

use crate::error::{Error, ErrorKind, Result};

use super::PgPool;

/// `(version, name, sql)`, in order. Add new files here.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_checkouts_bound",
        include_str!("../../migrations/0002_checkouts_bound.sql"),
    ),
    (
        3,
        "0003_checkouts_bound_validate",
        include_str!("../../migrations/0003_checkouts_bound_validate.sql"),
    ),
    (
        4,
        "0004_checkouts_partitioned",
        include_str!("../../migrations/0004_checkouts_partitioned.sql"),
    ),
    (
        5,
        "0005_double_sales",
        include_str!("../../migrations/0005_double_sales.sql"),
    ),
    (
        6,
        "0006_users_backlog",
        include_str!("../../migrations/0006_users_backlog.sql"),
    ),
];

/// Key of the advisory lock that serializes migrations across instances
/// ("flashmig" in ASCII).
const LOCK_KEY: i64 = 0x666c_6173_686d_6967;

/// Applies every migration not yet recorded. Re-running is a no-op.
pub fn migrate(pool: &PgPool) -> Result<()> {
    check_order(MIGRATIONS)?;
    let mut client = pool.get()?;
    for &(version, name, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )?
            .is_some();
        if applied {
            tx.commit()?;
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )?;
        tx.commit()?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

fn check_order(migrations: &[(i32, &str, &str)]) -> Result<()> {
    let ordered = migrations.windows(2).all(|pair| pair[0].0 < pair[1].0);
    if ordered && migrations.iter().all(|m| m.0 > 0) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Internal,
            "migrations must have positive, strictly increasing versions",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_ordered_and_named_by_version() {
        check_order(MIGRATIONS).unwrap();
        for (version, name, sql) in MIGRATIONS {
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
            assert!(!sql.trim().is_empty());
        }
    }

    #[test]
    fn out_of_order_migrations_are_refused() {
        assert!(check_order(&[(2, "b", ""), (1, "a", "")]).is_err());
        assert!(check_order(&[(1, "a", ""), (1, "a", "")]).is_err());
        assert!(check_order(&[(0, "a", "")]).is_err());
        assert!(check_order(&[]).is_ok());
    }
}
