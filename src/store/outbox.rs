//! The per-sale purchase outbox in Redis: `purchase.lua` appends one stream
//! entry per sold item (`XADD {sale:S}:outbox * item I user U code C at MS`,
//! MS by Redis's clock) atomically with the sale; this module reads those
//! entries (XRANGE), parses them, and deletes them (XDEL) once the writer has
//! committed them to Postgres. A sale's outbox is deleted only after the sale
//! is closed in Redis (`close_sale`), when nothing can be appended any more.
//! An entry that can never be recorded is moved to the sale's
//! dead-letter stream (`lua/dead_letter.lua`, indexed in
//! `Keys::dead_letter_index`), which this module also reads and counts.
//! Blocking; runs on the writer thread and in `flashsale check`.

use redis::{ConnectionLike, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::redis_client::blocking::eval;
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::{CLOSE_SALE, Script};

/// One sold item, as appended by `purchase.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The stream entry id (`<ms>-<seq>`), used to XDEL after commit.
    pub stream_id: String,
    pub sale_id: i64,
    pub item_id: i64,
    pub user_id: i64,
    pub code: String,
    /// Unix milliseconds of the purchase.
    pub at_ms: i64,
}

/// What one XRANGE returned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutboxBatch {
    /// The well-formed entries, in stream order.
    pub entries: Vec<OutboxEntry>,
    /// Ids of entries that could not be parsed (logged; left in the stream).
    pub malformed: Vec<String>,
    /// The id of the last entry returned, well formed or not: the cursor for
    /// the next read.
    pub last_id: Option<String>,
    /// How many entries the reply held; fewer than asked means the end.
    pub raw_count: usize,
}

/// Up to `count` entries after the entry id `after` (from the head of the
/// outbox when `None`). Malformed entries do not fail the read: their ids are
/// reported in the batch, for the caller to log and step over.
pub fn read(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    sale_id: i64,
    after: Option<&str>,
    count: usize,
) -> Result<OutboxBatch> {
    let start = match after {
        Some(id) => format!("({id}"),
        None => "-".to_owned(),
    };
    let reply: Value = redis::cmd("XRANGE")
        .arg(keys.outbox(sale_id))
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query(con)?;
    parse_xrange(sale_id, &reply)
}

/// Deletes committed entries from the outbox.
pub fn ack(con: &mut dyn ConnectionLike, keys: &Keys, sale_id: i64, ids: &[String]) -> Result<()> {
    // XDEL takes many ids; keep each command to a sane size.
    for chunk in ids.chunks(1000) {
        let _: i64 = redis::cmd("XDEL")
            .arg(keys.outbox(sale_id))
            .arg(chunk)
            .query(con)?;
    }
    Ok(())
}

/// Closes the sale in Redis if Redis's clock has passed its end (see
/// lua/close_sale.lua; `ends_at` is Postgres's, for a sale Redis does not
/// hold). Returns whether the sale is closed: from then on its outbox only
/// shrinks.
pub fn close_sale(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    sale_id: i64,
    ends_at: i64,
) -> Result<bool> {
    static SCRIPT: std::sync::LazyLock<Script> =
        std::sync::LazyLock::new(|| Script::new("close_sale", CLOSE_SALE));
    let script_keys = [keys.meta(sale_id), keys.users(sale_id), keys.codes(sale_id)];
    let closed: i64 = eval(con, &SCRIPT, &script_keys, |cmd| {
        cmd.arg(ends_at);
    })?;
    Ok(closed == 1)
}

/// Entries still in the outbox.
pub fn len(con: &mut dyn ConnectionLike, keys: &Keys, sale_id: i64) -> Result<u64> {
    let n: u64 = redis::cmd("XLEN").arg(keys.outbox(sale_id)).query(con)?;
    Ok(n)
}

/// Deletes the (empty) outbox of a closed-out sale.
pub fn delete(con: &mut dyn ConnectionLike, keys: &Keys, sale_id: i64) -> Result<()> {
    let _: i64 = redis::cmd("DEL").arg(keys.outbox(sale_id)).query(con)?;
    Ok(())
}

/// Why an outbox entry was moved to the dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Its fields cannot be parsed (not written by `purchase.lua`).
    Malformed,
    /// Postgres refused its values for good.
    Refused,
    /// Postgres records its item as bought with another code.
    DoubleSale,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Malformed => "malformed",
            DeadReason::Refused => "refused",
            DeadReason::DoubleSale => "double_sale",
        }
    }
}

static DEAD_LETTER_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new("dead_letter", include_str!("../../lua/dead_letter.lua"))
});

/// Moves one entry from the outbox to the sale's dead letter, with the
/// reason. Returns false when the entry was no longer in the outbox.
pub fn move_to_dead_letter(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    sale_id: i64,
    stream_id: &str,
    reason: DeadReason,
) -> Result<bool> {
    // Indexed first: an index entry without a stream costs one XLEN, a
    // stream without an index entry would go uncounted.
    let _: i64 = redis::cmd("SADD")
        .arg(keys.dead_letter_index())
        .arg(sale_id)
        .query(con)?;
    let moved: i64 = eval(
        con,
        &DEAD_LETTER_SCRIPT,
        &[keys.outbox(sale_id), keys.outbox_dead_letter(sale_id)],
        |cmd| {
            cmd.arg(stream_id).arg(reason.as_str());
        },
    )?;
    Ok(moved == 1)
}

/// Entries in every sale's dead letter, and how many sales have some.
pub fn dead_letter_totals(con: &mut dyn ConnectionLike, keys: &Keys) -> Result<(u64, u64)> {
    let sales: Vec<i64> = redis::cmd("SMEMBERS")
        .arg(keys.dead_letter_index())
        .query(con)?;
    let (mut entries, mut with_entries) = (0, 0);
    for sale_id in sales {
        let n = dead_letter_len(con, keys, sale_id)?;
        entries += n;
        with_entries += u64::from(n > 0);
    }
    Ok((entries, with_entries))
}

/// Entries in one sale's dead letter.
pub fn dead_letter_len(con: &mut dyn ConnectionLike, keys: &Keys, sale_id: i64) -> Result<u64> {
    let n: u64 = redis::cmd("XLEN")
        .arg(keys.outbox_dead_letter(sale_id))
        .query(con)?;
    Ok(n)
}

/// Up to `count` entries of one sale's dead letter, each as its fields in
/// order, `field=value` (`item`, `user`, `code`, `at`, `reason`,
/// `outbox_id`, or whatever a malformed entry held; bytes that are not
/// UTF-8 shown lossily).
pub fn read_dead_letter(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    sale_id: i64,
    count: usize,
) -> Result<Vec<String>> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(keys.outbox_dead_letter(sale_id))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query(con)?;
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    let lossy = |v: &Value| match v {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => as_str(other).unwrap_or("?").to_owned(),
    };
    Ok(entries
        .iter()
        .map(|entry| match entry {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(flat)) => flat
                    .chunks(2)
                    .map(|kv| {
                        format!(
                            "{}={}",
                            lossy(&kv[0]),
                            kv.get(1).map_or_else(String::new, lossy)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(Value::Map(map)) => map
                    .iter()
                    .map(|(k, v)| format!("{}={}", lossy(k), lossy(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            },
            _ => String::new(),
        })
        .collect())
}

/// Parses an XRANGE reply: an array of `[id, [field, value, ...]]`.
pub fn parse_xrange(sale_id: i64, reply: &Value) -> Result<OutboxBatch> {
    let entries = match reply {
        Value::Array(items) | Value::Set(items) => items.as_slice(),
        Value::Nil => &[],
        Value::ServerError(e) => {
            return Err(Error::with_cause(
                ErrorKind::RedisProtocol,
                "XRANGE",
                format!("{e:?}"),
            ));
        }
        _ => {
            return Err(Error::new(
                ErrorKind::RedisProtocol,
                "XRANGE reply is not an array",
            ));
        }
    };
    let mut batch = OutboxBatch {
        raw_count: entries.len(),
        ..OutboxBatch::default()
    };
    for raw in entries {
        let Value::Array(parts) = raw else {
            // Not even an id to skip past: the reply as a whole is unusable.
            return Err(Error::new(
                ErrorKind::RedisProtocol,
                "XRANGE entry is not an array",
            ));
        };
        let Some(id) = parts.first().and_then(as_str) else {
            return Err(Error::new(
                ErrorKind::RedisProtocol,
                "XRANGE entry has no id",
            ));
        };
        let id = id.to_owned();
        match parts
            .get(1)
            .and_then(|fields| parse_fields(sale_id, &id, fields))
        {
            Some(entry) => batch.entries.push(entry),
            None => batch.malformed.push(id.clone()),
        }
        batch.last_id = Some(id);
    }
    Ok(batch)
}

fn parse_fields(sale_id: i64, id: &str, fields: &Value) -> Option<OutboxEntry> {
    let pairs: Vec<(&str, &str)> = match fields {
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return None;
            }
            flat.chunks_exact(2)
                .map(|kv| Some((as_str(&kv[0])?, as_str(&kv[1])?)))
                .collect::<Option<_>>()?
        }
        Value::Map(map) => map
            .iter()
            .map(|(k, v)| Some((as_str(k)?, as_str(v)?)))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    let field = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let item_id: i64 = field("item")?.parse().ok()?;
    let user_id: i64 = field("user")?.parse().ok()?;
    let code = field("code")?;
    let at_ms: i64 = field("at")?.parse().ok()?;
    // The item must be one of this sale's, or Postgres would refuse the row.
    let (item_sale, _) = crate::sale::split_item_id(item_id)?;
    if item_sale != sale_id || user_id <= 0 || code.is_empty() || at_ms < 0 {
        return None;
    }
    Some(OutboxEntry {
        stream_id: id.to_owned(),
        sale_id,
        item_id,
        user_id,
        code: code.to_owned(),
        at_ms,
    })
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let mut flat = Vec::new();
        for (k, v) in fields {
            flat.push(bulk(k));
            flat.push(bulk(v));
        }
        Value::Array(vec![bulk(id), Value::Array(flat)])
    }

    fn good(id: &str, item: i64) -> Value {
        let item = item.to_string();
        entry(
            id,
            &[
                ("item", &item),
                ("user", "77"),
                ("code", "abc"),
                ("at", "1700000000123"),
            ],
        )
    }

    #[test]
    fn dead_letter_reasons_are_the_metric_labels() {
        let reasons = [
            DeadReason::Malformed,
            DeadReason::Refused,
            DeadReason::DoubleSale,
        ];
        let labels: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, crate::metrics::DEAD_LETTER_REASONS);
    }

    #[test]
    fn key_uses_the_sale_hash_tag() {
        let keys = Keys::default();
        assert_eq!(keys.outbox(42), "{sale:42}:outbox");
        assert_eq!(keys.outbox_dead_letter(42), "{sale:42}:outbox:dead");
    }

    #[test]
    fn parses_well_formed_entries_in_order() {
        let reply = Value::Array(vec![good("1-0", 3_000_001), good("1-1", 3_000_002)]);
        let batch = parse_xrange(3, &reply).unwrap();
        assert_eq!(batch.raw_count, 2);
        assert!(batch.malformed.is_empty());
        assert_eq!(batch.last_id.as_deref(), Some("1-1"));
        assert_eq!(
            batch.entries[0],
            OutboxEntry {
                stream_id: "1-0".into(),
                sale_id: 3,
                item_id: 3_000_001,
                user_id: 77,
                code: "abc".into(),
                at_ms: 1_700_000_000_123,
            }
        );
        assert_eq!(batch.entries[1].item_id, 3_000_002);
    }

    #[test]
    fn field_order_does_not_matter() {
        let reply = Value::Array(vec![entry(
            "5-0",
            &[
                ("at", "9"),
                ("code", "c"),
                ("user", "1"),
                ("item", "2000001"),
            ],
        )]);
        let batch = parse_xrange(2, &reply).unwrap();
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].at_ms, 9);
    }

    #[test]
    fn resp3_map_fields_are_accepted() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("7-0"),
            Value::Map(vec![
                (bulk("item"), bulk("2000005")),
                (bulk("user"), bulk("4")),
                (bulk("code"), bulk("k")),
                (bulk("at"), bulk("10")),
            ]),
        ])]);
        let batch = parse_xrange(2, &reply).unwrap();
        assert_eq!(batch.entries.len(), 1);
        assert_eq!(batch.entries[0].item_id, 2_000_005);
    }

    #[test]
    fn malformed_entries_are_skipped_not_fatal() {
        let reply = Value::Array(vec![
            good("1-0", 3_000_001),
            // not a number
            entry(
                "1-1",
                &[("item", "x"), ("user", "1"), ("code", "c"), ("at", "1")],
            ),
            // missing field
            entry("1-2", &[("item", "3000003"), ("user", "1"), ("at", "1")]),
            // item of another sale
            entry(
                "1-3",
                &[
                    ("item", "4000001"),
                    ("user", "1"),
                    ("code", "c"),
                    ("at", "1"),
                ],
            ),
            // odd field list
            Value::Array(vec![bulk("1-4"), Value::Array(vec![bulk("item")])]),
            // fields not an array
            Value::Array(vec![bulk("1-5"), Value::Int(3)]),
            // no fields at all
            Value::Array(vec![bulk("1-6")]),
            // non-positive user
            entry(
                "1-7",
                &[
                    ("item", "3000004"),
                    ("user", "0"),
                    ("code", "c"),
                    ("at", "1"),
                ],
            ),
            // empty code
            entry(
                "1-8",
                &[
                    ("item", "3000004"),
                    ("user", "2"),
                    ("code", ""),
                    ("at", "1"),
                ],
            ),
            // invalid utf-8
            Value::Array(vec![
                bulk("1-9"),
                Value::Array(vec![bulk("item"), Value::BulkString(vec![0xff, 0xfe])]),
            ]),
            good("2-0", 3_000_009),
        ]);
        let batch = parse_xrange(3, &reply).unwrap();
        assert_eq!(
            batch.entries.iter().map(|e| e.item_id).collect::<Vec<_>>(),
            vec![3_000_001, 3_000_009]
        );
        assert_eq!(
            batch.malformed,
            vec![
                "1-1", "1-2", "1-3", "1-4", "1-5", "1-6", "1-7", "1-8", "1-9"
            ]
        );
        assert_eq!(batch.last_id.as_deref(), Some("2-0"));
        assert_eq!(batch.raw_count, 11);
    }

    #[test]
    fn empty_and_nil_replies_are_empty() {
        let batch = parse_xrange(1, &Value::Array(vec![])).unwrap();
        assert_eq!(batch, OutboxBatch::default());
        assert_eq!(
            parse_xrange(1, &Value::Nil).unwrap(),
            OutboxBatch::default()
        );
    }

    #[test]
    fn unusable_replies_are_errors_not_panics() {
        assert!(parse_xrange(1, &Value::Int(1)).is_err());
        assert!(parse_xrange(1, &Value::Okay).is_err());
        assert!(parse_xrange(1, &Value::Array(vec![Value::Int(1)])).is_err());
        assert!(parse_xrange(1, &Value::Array(vec![Value::Array(vec![])])).is_err());
        assert!(parse_xrange(1, &Value::Array(vec![Value::Array(vec![Value::Nil])])).is_err());
    }
}
