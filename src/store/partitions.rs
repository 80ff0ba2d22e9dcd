//! The daily partitions of `checkouts`: created ahead of the clock and
//! dropped past the retention. Partitions are named by the UTC day they
//! cover, `checkouts_YYYYMMDD` for `[day, day + 1)`; a table converted from
//! the unpartitioned schema holds its old rows in `checkouts_before_YYYYMMDD`
//! (everything before that day). `checkouts_default` catches a row whose day
//! has no partition, so no row is ever refused; creating that day's
//! partition later moves such rows into it. Instances serialize this work on
//! an advisory lock, so several may run it at once.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;

use super::PgPool;
use crate::error::Result;

const DAY_SECS: i64 = 86_400;
/// Days after today that get their partition in advance.
pub const DAYS_AHEAD: i64 = 2;
/// How often the partitions are looked after (and retried after a failure).
const EVERY: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(10);
/// Key of the advisory lock that serializes partition work ("flashprt").
const LOCK_KEY: i64 = 0x666c_6173_6870_7274;
const DAILY_PREFIX: &str = "checkouts_";
const OLD_PREFIX: &str = "checkouts_before_";
pub const DEFAULT_PARTITION: &str = "checkouts_default";

/// A UTC day, as days since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub i64);

impl Day {
    pub fn of_unix_ms(ms: i64) -> Day {
        Day(ms.div_euclid(DAY_SECS * 1000))
    }

    fn start(self) -> SystemTime {
        let secs = self.0 * DAY_SECS;
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }

    /// `YYYYMMDD`.
    pub fn compact(self) -> String {
        let iso = humantime::format_rfc3339_seconds(self.start()).to_string();
        iso[..10].replace('-', "")
    }

    /// `YYYY-MM-DDT00:00:00Z`, as a literal for DDL (built from an integer,
    /// never from input).
    fn literal(self) -> String {
        humantime::format_rfc3339_seconds(self.start()).to_string()
    }

    fn parse_compact(s: &str) -> Option<Day> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iso = format!("{}-{}-{}T00:00:00Z", &s[..4], &s[4..6], &s[6..]);
        let t = humantime::parse_rfc3339(&iso).ok()?;
        let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        Some(Day(secs / DAY_SECS))
    }

    /// The daily partition of this day.
    pub fn partition(self) -> String {
        format!("{DAILY_PREFIX}{}", self.compact())
    }
}

/// A partition of `checkouts` this module manages, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partition {
    /// `checkouts_YYYYMMDD`: that day.
    Daily(Day),
    /// `checkouts_before_YYYYMMDD`: everything before that day.
    Before(Day),
}

impl Partition {
    fn parse(name: &str) -> Option<Partition> {
        if let Some(day) = name.strip_prefix(OLD_PREFIX) {
            return Day::parse_compact(day).map(Partition::Before);
        }
        name.strip_prefix(DAILY_PREFIX)
            .and_then(Day::parse_compact)
            .map(Partition::Daily)
    }

    /// The first day after its range.
    fn end(self) -> Day {
        match self {
            Partition::Daily(day) => Day(day.0 + 1),
            Partition::Before(day) => day,
        }
    }
}

/// What one pass decided, from the partitions that exist.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    create: Vec<Day>,
    drop: Vec<String>,
}

/// Days `today..=today + DAYS_AHEAD` that neither have their partition nor
/// lie inside an old table's range; partitions that end on or before
/// `today - retention_days` (none when `retention_days` is 0).
fn plan(existing: &[String], today: Day, retention_days: u32) -> Plan {
    let parsed: Vec<(&String, Partition)> = existing
        .iter()
        .filter_map(|name| Partition::parse(name).map(|p| (name, p)))
        .collect();
    let covered_until = parsed
        .iter()
        .filter_map(|(_, p)| match p {
            Partition::Before(day) => Some(*day),
            Partition::Daily(_) => None,
        })
        .max();
    let create = (today.0..=today.0 + DAYS_AHEAD)
        .map(Day)
        .filter(|day| covered_until.is_none_or(|until| *day >= until))
        .filter(|day| !parsed.contains(&(&day.partition(), Partition::Daily(*day))))
        .collect();
    let drop = if retention_days == 0 {
        Vec::new()
    } else {
        let cutoff = Day(today.0 - i64::from(retention_days));
        parsed
            .iter()
            .filter(|(_, p)| p.end() <= cutoff)
            .map(|(name, _)| (*name).clone())
            .collect()
    };
    Plan { create, drop }
}

/// Names of the partitions of `checkouts`.
fn partitions(client: &mut Client) -> std::result::Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'checkouts'::regclass",
        &[],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Opens a transaction that holds the partition lock and gives up on a
/// table lock after a few seconds rather than queue the writer behind it.
fn locked_transaction(
    client: &mut Client,
) -> std::result::Result<postgres::Transaction<'_>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    Ok(tx)
}

/// Creates the partition of `day` (a no-op if it exists). It is built on its
/// own and then attached, which does not block inserts into `checkouts`;
/// rows the default partition caught for that day move into it first.
pub fn create_day(client: &mut Client, day: Day) -> std::result::Result<bool, postgres::Error> {
    let name = day.partition();
    let (from, to) = (day.literal(), Day(day.0 + 1).literal());
    let mut tx = locked_transaction(client)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])?
        .get(0);
    if exists {
        return Ok(false);
    }
    tx.batch_execute(&format!(
        "CREATE TABLE {name} (LIKE checkouts INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE {name} ADD CONSTRAINT {name}_range
             CHECK (created_at >= '{from}' AND created_at < '{to}');
         LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE;
         WITH moved AS (
             DELETE FROM {DEFAULT_PARTITION}
              WHERE created_at >= '{from}' AND created_at < '{to}'
             RETURNING *)
         INSERT INTO {name} SELECT * FROM moved;
         ALTER TABLE checkouts ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}');
         ALTER TABLE {name} DROP CONSTRAINT {name}_range;"
    ))?;
    tx.commit()?;
    Ok(true)
}

/// Drops one partition (a no-op if it is gone).
fn drop_partition(client: &mut Client, name: &str) -> std::result::Result<(), postgres::Error> {
    let mut tx = locked_transaction(client)?;
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))?;
    tx.commit()
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Rows deleted from the default partition for being past the retention.
    pub expired_strays: u64,
}

/// Creates the partitions of today and the next days, and drops those past
/// the retention (`retention_days` 0: none), as of `now_ms`.
pub fn maintain(client: &mut Client, now_ms: i64, retention_days: u32) -> Result<Done> {
    let today = Day::of_unix_ms(now_ms);
    let plan = plan(&partitions(client)?, today, retention_days);
    let mut done = Done::default();
    for day in plan.create {
        if create_day(client, day)? {
            done.created.push(day.partition());
        }
    }
    for name in plan.drop {
        drop_partition(client, &name)?;
        done.dropped.push(name);
    }
    if retention_days > 0 {
        let cutoff = Day(today.0 - i64::from(retention_days)).start();
        done.expired_strays = client.execute(
            &format!("DELETE FROM {DEFAULT_PARTITION} WHERE created_at < $1"),
            &[&cutoff],
        )?;
    }
    Ok(done)
}

/// Runs `maintain` on a schedule, from the rotator's tick: at once, then
/// every ten minutes (ten seconds after a failure).
pub struct PartitionKeeper {
    retention_days: u32,
    next: Instant,
    failing: bool,
}

impl PartitionKeeper {
    pub fn new(retention_days: u32) -> Self {
        PartitionKeeper {
            retention_days,
            next: Instant::now(),
            failing: false,
        }
    }

    /// Does the work if it is due. Errors are logged here and retried.
    pub fn tick(&mut self, pool: &PgPool, now_ms: i64) {
        if Instant::now() < self.next {
            return;
        }
        let outcome = pool
            .get()
            .map_err(Into::into)
            .and_then(|mut client| maintain(&mut client, now_ms, self.retention_days));
        match outcome {
            Ok(done) => {
                for name in &done.created {
                    tracing::info!(partition = %name, "checkouts partition created");
                }
                for name in &done.dropped {
                    tracing::info!(
                        partition = %name,
                        retention_days = self.retention_days,
                        "checkouts partition dropped: past the retention"
                    );
                }
                if done.expired_strays > 0 {
                    tracing::info!(
                        rows = done.expired_strays,
                        "old checkouts rows deleted from the default partition"
                    );
                }
                if self.failing {
                    tracing::info!("checkouts partitions maintained again");
                }
                self.failing = false;
                self.next = Instant::now() + EVERY;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "could not maintain checkouts partitions; retrying");
                }
                self.failing = true;
                self.next = Instant::now() + RETRY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn days_are_named_by_their_utc_date() {
        let day = Day::of_unix_ms(1_764_633_600_000 + 5_000); // 2025-12-02T00:00:05Z
        assert_eq!(day.compact(), "20251202");
        assert_eq!(day.partition(), "checkouts_20251202");
        assert_eq!(day.literal(), "2025-12-02T00:00:00Z");
        assert_eq!(Day::parse_compact("20251202"), Some(day));
        assert_eq!(Day::of_unix_ms(1_764_633_600_000 - 1).compact(), "20251201");
        assert_eq!(Day::parse_compact("2025120"), None);
        assert_eq!(Day::parse_compact("2025x202"), None);
    }

    #[test]
    fn partitions_are_known_by_name() {
        let day = Day::parse_compact("20251202").unwrap();
        assert_eq!(
            Partition::parse("checkouts_20251202"),
            Some(Partition::Daily(day))
        );
        assert_eq!(
            Partition::parse("checkouts_before_20251202"),
            Some(Partition::Before(day))
        );
        assert_eq!(Partition::parse("checkouts_default"), None);
        assert_eq!(Partition::parse("checkouts_2025"), None);
    }

    #[test]
    fn plans_today_and_the_next_days() {
        let today = Day::parse_compact("20251202").unwrap();
        let p = plan(&names(&["checkouts_default"]), today, 30);
        let created: Vec<String> = p.create.iter().map(|d| d.partition()).collect();
        assert_eq!(
            created,
            names(&[
                "checkouts_20251202",
                "checkouts_20251203",
                "checkouts_20251204"
            ])
        );
        assert!(p.drop.is_empty());
        let p = plan(
            &names(&["checkouts_20251202", "checkouts_20251204"]),
            today,
            30,
        );
        assert_eq!(p.create, vec![Day(today.0 + 1)]);
    }

    #[test]
    fn days_inside_the_old_table_get_no_partition() {
        let today = Day::parse_compact("20251202").unwrap();
        let p = plan(&names(&["checkouts_before_20251204"]), today, 30);
        assert_eq!(p.create, vec![Day(today.0 + 2)]);
    }

    #[test]
    fn drops_what_ends_before_the_retention() {
        let today = Day::parse_compact("20251202").unwrap();
        let existing = names(&[
            "checkouts_20251130",
            "checkouts_20251201",
            "checkouts_before_20251201",
            "checkouts_before_20251202",
            "checkouts_default",
            "checkouts_20251202",
        ]);
        let p = plan(&existing, today, 1);
        assert_eq!(
            p.drop,
            names(&["checkouts_20251130", "checkouts_before_20251201"])
        );
        assert!(plan(&existing, today, 0).drop.is_empty());
        assert!(plan(&existing, today, 3).drop.is_empty());
    }
}
