//! `REDIS_URL` as a list of seed nodes (one URL, or several separated by
//! commas) and the mode of the Redis behind them: a single node or a Redis
//! Cluster, as the server itself says (`INFO cluster`). The mode is decided
//! once at startup, from the first seed that answers, and checked against
//! the seeds: several seeds only make sense for a cluster, and a cluster has
//! only database 0.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::RedisTarget;
use crate::error::{Error, ErrorKind, Result};

/// The seed nodes of `REDIS_URL`, in the order given.
#[derive(Debug, Clone)]
pub struct RedisSeeds {
    pub targets: Vec<RedisTarget>,
}

/// What the seeds lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis node (with its database number).
    Single,
    /// A Redis Cluster: keys live on the master that owns their slot.
    Cluster,
}

impl RedisMode {
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
        }
    }
}

impl RedisSeeds {
    /// Parses `REDIS_URL`: one URL or a comma-separated list of them
    /// (blanks around the commas are ignored).
    pub fn parse(urls: &str) -> Result<RedisSeeds> {
        let targets = urls
            .split(',')
            .map(str::trim)
            .map(|url| {
                if url.is_empty() {
                    Err(Error::new(
                        ErrorKind::Config,
                        format!("REDIS_URL: empty entry in the seed list {urls:?}"),
                    ))
                } else {
                    RedisTarget::parse(url)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RedisSeeds { targets })
    }

    /// The first seed (the only one of a single node).
    pub fn first(&self) -> &RedisTarget {
        &self.targets[0]
    }

    /// Checks the seeds against the mode Redis reported.
    pub fn check_mode(&self, mode: RedisMode) -> Result<()> {
        match mode {
            RedisMode::Single if self.targets.len() > 1 => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "REDIS_URL lists {} seed nodes but {} is not a Redis Cluster \
                     (cluster_enabled:0); give one URL for a single Redis node",
                    self.targets.len(),
                    address(self.first()),
                ),
            )),
            RedisMode::Cluster => match self.targets.iter().find(|t| t.db != 0) {
                Some(t) => Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "REDIS_URL: database {} for {} but Redis Cluster has only database 0; \
                         drop the /{} (use REDIS_KEY_PREFIX to share a cluster)",
                        t.db,
                        address(t),
                        t.db
                    ),
                )),
                None => Ok(()),
            },
            RedisMode::Single => Ok(()),
        }
    }

    /// Every seed's connection parameters, for the redis crate.
    pub fn connection_infos(&self) -> Result<Vec<ConnectionInfo>> {
        self.targets.iter().map(connection_info).collect()
    }
}

/// `host:port` of a seed, for messages.
pub fn address(target: &RedisTarget) -> String {
    format!("{}:{}", target.host, target.port)
}

/// A seed's connection parameters (address, database, credentials).
pub fn connection_info(target: &RedisTarget) -> Result<ConnectionInfo> {
    let mut settings = RedisConnectionInfo::default().set_db(target.db);
    if let Some(user) = &target.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &target.password {
        settings = settings.set_password(password);
    }
    let info = ConnectionAddr::Tcp(target.host.clone(), target.port)
        .into_connection_info()
        .map_err(|e| Error::with_cause(ErrorKind::Config, "REDIS_URL", e))?;
    Ok(info.set_redis_settings(settings))
}

/// Asks the seeds in order (`INFO cluster`, each bounded by `timeout`)
/// whether they are a Redis Cluster; the first seed that answers decides,
/// and the seeds are checked against its answer (`RedisSeeds::check_mode`).
pub fn detect_mode(seeds: &RedisSeeds, timeout: Duration) -> Result<RedisMode> {
    let mut failures = Vec::new();
    for target in &seeds.targets {
        match ask_mode(target, timeout) {
            Ok(mode) => {
                seeds.check_mode(mode)?;
                return Ok(mode);
            }
            Err(e) => failures.push(format!("{}: {e}", address(target))),
        }
    }
    Err(Error::new(
        ErrorKind::RedisUnavailable,
        format!(
            "no Redis seed node answered INFO cluster ({})",
            failures.join("; ")
        ),
    ))
}

/// One seed's answer to `INFO cluster`.
fn ask_mode(target: &RedisTarget, timeout: Duration) -> Result<RedisMode> {
    let mut con = server_connection(target, timeout)?;
    let text: String = redis::cmd("INFO").arg("cluster").query(&mut con)?;
    Ok(mode_from_info(&text))
}

/// A blocking connection to the node at `target` for questions about the
/// server rather than a database (its mode, its slot map): the database is
/// not selected, since a cluster node refuses SELECT of anything but 0.
/// Connecting and every read and write are bounded by `timeout`.
pub fn server_connection(target: &RedisTarget, timeout: Duration) -> Result<redis::Connection> {
    let mut info = connection_info(target)?;
    let settings = info.redis_settings().clone().set_db(0);
    info = info.set_redis_settings(settings);
    let client = redis::Client::open(info)?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// The mode an `INFO cluster` reply describes (`cluster_enabled:1`).
pub fn mode_from_info(info: &str) -> RedisMode {
    let enabled = info
        .lines()
        .filter_map(|line| line.trim().strip_prefix("cluster_enabled:"))
        .any(|value| value.trim() == "1");
    if enabled {
        RedisMode::Cluster
    } else {
        RedisMode::Single
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_seed() {
        let seeds = RedisSeeds::parse("redis://127.0.0.1:6380/7").unwrap();
        assert_eq!(seeds.targets.len(), 1);
        let t = seeds.first();
        assert_eq!((t.host.as_str(), t.port, t.db), ("127.0.0.1", 6380, 7));
    }

    #[test]
    fn a_comma_list_is_every_seed_in_order() {
        let seeds =
            RedisSeeds::parse("redis://10.0.0.1:6379, redis://:pw@10.0.0.2:7001 ,redis://h3")
                .unwrap();
        let found: Vec<(&str, u16, i64)> = seeds
            .targets
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.db))
            .collect();
        assert_eq!(
            found,
            [
                ("10.0.0.1", 6379, 0),
                ("10.0.0.2", 7001, 0),
                ("h3", 6379, 0)
            ]
        );
        assert_eq!(seeds.targets[1].password.as_deref(), Some("pw"));
    }

    #[test]
    fn empty_or_bad_entries_are_refused() {
        for bad in [
            "",
            ",",
            "redis://a:1,",
            "redis://a:1,,redis://b:2",
            "redis://a:1,http://b",
        ] {
            let e = RedisSeeds::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn a_single_node_takes_one_seed_with_any_database() {
        let seeds = RedisSeeds::parse("redis://127.0.0.1:6379/3").unwrap();
        assert!(seeds.check_mode(RedisMode::Single).is_ok());
        let seeds = RedisSeeds::parse("redis://a:1,redis://b:2").unwrap();
        let e = seeds.check_mode(RedisMode::Single).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("2 seed nodes"), "{e}");
        assert!(e.to_string().contains("not a Redis Cluster"), "{e}");
    }

    #[test]
    fn a_cluster_takes_database_0_only() {
        let seeds = RedisSeeds::parse("redis://a:1,redis://b:2/0").unwrap();
        assert!(seeds.check_mode(RedisMode::Cluster).is_ok());
        let seeds = RedisSeeds::parse("redis://a:1,redis://b:2/4").unwrap();
        let e = seeds.check_mode(RedisMode::Cluster).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("database 4 for b:2"), "{e}");
        assert!(e.to_string().contains("only database 0"), "{e}");
        let one = RedisSeeds::parse("redis://a:1/1").unwrap();
        assert!(one.check_mode(RedisMode::Cluster).is_err());
    }

    #[test]
    fn the_mode_is_read_from_info_cluster() {
        assert_eq!(
            mode_from_info("# Cluster\r\ncluster_enabled:1\r\n"),
            RedisMode::Cluster
        );
        assert_eq!(
            mode_from_info("# Cluster\r\ncluster_enabled:0\r\n"),
            RedisMode::Single
        );
        assert_eq!(mode_from_info(""), RedisMode::Single);
    }

    #[test]
    fn connection_infos_keep_database_and_credentials() {
        let seeds = RedisSeeds::parse("redis://u:p@h:7/2").unwrap();
        let info = &seeds.connection_infos().unwrap()[0];
        assert_eq!(info.addr().to_string(), "h:7");
        let settings = info.redis_settings();
        assert_eq!(
            (settings.db(), settings.username(), settings.password()),
            (2, Some("u"), Some("p"))
        );
    }
}
