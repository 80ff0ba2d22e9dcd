//! Sale rows and their items in Postgres, for the rotator thread (and the
//! writer's outbox drain): idempotent creation of one sale per period, its
//! generated items, and the list of sales whose outboxes still need draining.
//! Blocking; never called on a core thread.

use postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::sale::{self, ITEM_ID_STRIDE, SaleInfo};

/// Items inserted per statement.
const ITEM_CHUNK: u32 = 5_000;

/// A row of `sales`; times in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRow {
    pub id: i64,
    pub starts_at: i64,
    pub ends_at: i64,
    pub items_total: u32,
    pub user_limit: u32,
}

impl From<SaleRow> for SaleInfo {
    fn from(row: SaleRow) -> Self {
        SaleInfo {
            id: row.id,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            items: row.items_total,
            user_limit: row.user_limit,
        }
    }
}

const SALE_COLUMNS: &str = "id, extract(epoch FROM starts_at)::bigint, \
     extract(epoch FROM ends_at)::bigint, items_total, user_limit";

/// Makes sure the sale of the period starting at `starts_at` exists, with all
/// its items, and returns its row. When another instance created it first,
/// the row's own values (items, limit, end) win over the arguments.
pub fn ensure_sale(
    client: &mut Client,
    starts_at: i64,
    ends_at: i64,
    items: u32,
    user_limit: u32,
) -> Result<SaleRow> {
    check_items(items)?;
    let items_i32 = to_i32(items, "items per sale")?;
    let limit_i32 = to_i32(user_limit, "user limit")?;

    // Look first, so that the common case (the sale exists) does not burn a
    // value of the id sequence on a conflicting insert.
    let row = match select_sale(client, starts_at)? {
        Some(row) => row,
        None => {
            client.execute(
                "INSERT INTO sales (starts_at, ends_at, items_total, user_limit)
                 VALUES (to_timestamp($1::bigint), to_timestamp($2::bigint), $3, $4)
                 ON CONFLICT (starts_at) DO NOTHING",
                &[&starts_at, &ends_at, &items_i32, &limit_i32],
            )?;
            select_sale(client, starts_at)?.ok_or(Error::new(
                ErrorKind::Postgres,
                "sale row missing right after its insert",
            ))?
        }
    };
    // Item ids are `sale * ITEM_ID_STRIDE + n` for n in 1..=items: more
    // than ITEM_ID_STRIDE items would collide with the next sale's ids,
    // whoever created the row.
    check_items(row.items_total)?;
    ensure_items(client, &row)?;
    Ok(row)
}

fn select_sale(client: &mut Client, starts_at: i64) -> Result<Option<SaleRow>> {
    let sql =
        format!("SELECT {SALE_COLUMNS} FROM sales WHERE starts_at = to_timestamp($1::bigint)");
    client
        .query_opt(sql.as_str(), &[&starts_at])?
        .map(|r| sale_row(&r))
        .transpose()
}

/// Inserts whatever items of the sale are missing, one statement per chunk.
fn ensure_items(client: &mut Client, sale: &SaleRow) -> Result<()> {
    let have: i64 = client
        .query_one("SELECT count(*) FROM items WHERE sale_id = $1", &[&sale.id])?
        .try_get(0)?;
    if have >= i64::from(sale.items_total) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut inserted = 0u64;
    for first in (1..=sale.items_total).step_by(ITEM_CHUNK as usize) {
        let last = first.saturating_add(ITEM_CHUNK - 1).min(sale.items_total);
        let chunk = ItemColumns::build(sale.id, first..=last);
        inserted += client.execute(
            "INSERT INTO items (id, sale_id, name, image_url)
             SELECT i.id, $2::bigint, i.name, i.image_url
             FROM UNNEST($1::bigint[], $3::text[], $4::text[]) AS i (id, name, image_url)
             ON CONFLICT DO NOTHING",
            &[&chunk.ids, &sale.id, &chunk.names, &chunk.urls],
        )?;
    }
    tracing::info!(
        sale_id = sale.id,
        inserted,
        elapsed = %crate::logging::Human(started.elapsed()),
        "sale items created"
    );
    Ok(())
}

/// Columns of a chunk of generated items, from the one source the server
/// also answers item listings from.
#[derive(Debug, Default, PartialEq, Eq)]
struct ItemColumns {
    ids: Vec<i64>,
    names: Vec<String>,
    urls: Vec<String>,
}

impl ItemColumns {
    fn build(sale_id: i64, numbers: std::ops::RangeInclusive<u32>) -> Self {
        let mut cols = ItemColumns::default();
        for n in numbers {
            let id = sale::item_id(sale_id, n);
            cols.ids.push(id);
            cols.names.push(sale::item_name(sale_id, n));
            cols.urls.push(sale::image_url(id));
        }
        cols
    }
}

/// Sales whose Redis outbox may still hold purchases: not yet drained, and
/// starting within the hour (so that a prepared next sale is watched before
/// it opens).
pub fn sales_to_drain(client: &mut Client) -> Result<Vec<SaleRow>> {
    let sql = format!(
        "SELECT {SALE_COLUMNS} FROM sales
         WHERE NOT outbox_drained AND starts_at <= now() + interval '1 hour'
         ORDER BY id"
    );
    client
        .query(sql.as_str(), &[])?
        .iter()
        .map(sale_row)
        .collect()
}

/// A purchase recorded in Postgres: one item, its buyer and their code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPurchase {
    pub item_id: i64,
    pub user_id: i64,
    pub code: String,
}

/// Every purchase recorded for a sale.
pub fn purchases_of(client: &mut Client, sale_id: i64) -> Result<Vec<RecordedPurchase>> {
    Ok(client
        .query(
            "SELECT item_id, user_id, code FROM purchases WHERE sale_id = $1",
            &[&sale_id],
        )?
        .iter()
        .map(|row| RecordedPurchase {
            item_id: row.get(0),
            user_id: row.get(1),
            code: row.get(2),
        })
        .collect())
}

/// The ids of the items Postgres records as sold in a sale (the gap check's
/// read: ids only, not the whole purchase).
pub fn sold_item_ids(client: &mut Client, sale_id: i64) -> Result<Vec<i64>> {
    Ok(client
        .query(
            "SELECT item_id FROM purchases WHERE sale_id = $1",
            &[&sale_id],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Records that every purchase of the sale is in Postgres.
pub fn mark_drained(client: &mut Client, sale_id: i64) -> Result<()> {
    client.execute(
        "UPDATE sales SET outbox_drained = true WHERE id = $1",
        &[&sale_id],
    )?;
    Ok(())
}

fn sale_row(row: &postgres::Row) -> Result<SaleRow> {
    let items: i32 = row.try_get(3)?;
    let limit: i32 = row.try_get(4)?;
    Ok(SaleRow {
        id: row.try_get(0)?,
        starts_at: row.try_get(1)?,
        ends_at: row.try_get(2)?,
        items_total: u32::try_from(items)
            .map_err(|e| Error::with_cause(ErrorKind::Postgres, "sales.items_total", e))?,
        user_limit: u32::try_from(limit)
            .map_err(|e| Error::with_cause(ErrorKind::Postgres, "sales.user_limit", e))?,
    })
}

fn check_items(items: u32) -> Result<()> {
    if items == 0 || i64::from(items) > ITEM_ID_STRIDE {
        return Err(Error::new(
            ErrorKind::Config,
            format!("items per sale must be between 1 and {ITEM_ID_STRIDE}, not {items}"),
        ));
    }
    Ok(())
}

fn to_i32(v: u32, what: &'static str) -> Result<i32> {
    i32::try_from(v).map_err(|e| Error::with_cause(ErrorKind::Config, what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_columns_use_the_sale_functions() {
        let cols = ItemColumns::build(7, 1..=3);
        assert_eq!(cols.ids, vec![7_000_001, 7_000_002, 7_000_003]);
        assert_eq!(cols.names[1], sale::item_name(7, 2));
        assert_eq!(cols.urls[2], sale::image_url(7_000_003));
        assert_eq!(cols.ids.len(), cols.names.len());
        assert_eq!(cols.ids.len(), cols.urls.len());
    }

    #[test]
    fn item_counts_must_fit_the_id_stride() {
        assert!(check_items(0).is_err());
        assert!(check_items(1).is_ok());
        assert!(check_items(10_000).is_ok());
        assert!(check_items(ITEM_ID_STRIDE as u32).is_ok());
        assert!(check_items(ITEM_ID_STRIDE as u32 + 1).is_err());
    }

    #[test]
    fn sale_row_converts_to_info() {
        let row = SaleRow {
            id: 3,
            starts_at: 3600,
            ends_at: 7200,
            items_total: 10,
            user_limit: 2,
        };
        let info: SaleInfo = row.into();
        assert_eq!(info.id, 3);
        assert_eq!(info.items, 10);
        assert_eq!(info.user_limit, 2);
        assert_eq!((info.starts_at, info.ends_at), (3600, 7200));
    }
}
