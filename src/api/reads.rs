//! The read endpoints: GET /sales/active, GET /sales/{id}/items, GET /health
//! and GET /metrics. Item names and images are generated (the same functions
//! filled Postgres), sold flags come from the sale's Redis bitmap.

use redis::Value;

use super::json::{self, ActiveSaleBody, HealthBody, ItemBody, ItemsBody};
use super::params::{Query, parse_positive};
use super::{Answer, Api, NO_ACTIVE_SALE, Reject};
use crate::http::ResponseHead;
use crate::http::response::{PROMETHEUS_TEXT, write_json};
use crate::metrics::sale::CurrentSale;
use crate::metrics::{self, registry};

use crate::sale::{image_url, item_id, item_name};

const SALE_NOT_FOUND: Reject = Reject::new(404, "sale_not_found", "no such sale");
const MAX_PAGE: i64 = 1000;

/// The sale id of a `/sales/{id}/items` path.
pub fn sale_items_path(path: &str) -> Option<&str> {
    path.strip_prefix("/sales/")?.strip_suffix("/items")
}

impl Api {
    pub(super) async fn sales_active(&self, body: &mut Vec<u8>) -> Answer {
        let sale = self.active_sale().ok_or(NO_ACTIVE_SALE)?;
        let sold: Option<u64> = {
            let _slot = self.begin_redis_work()?;
            self.meta_field(sale.id, "sold").await?
        };
        write_json(
            body,
            &ActiveSaleBody {
                sale_id: sale.id,
                starts_at: json::rfc3339(sale.starts_at),
                ends_at: json::rfc3339(sale.ends_at),
                items_total: sale.items,
                items_sold: sold.unwrap_or(0),
            },
        );
        Ok(ResponseHead::json(200))
    }

    pub(super) async fn sale_items(&self, path: &str, query: &str, body: &mut Vec<u8>) -> Answer {
        let sale_id = sale_items_path(path)
            .and_then(parse_positive)
            .ok_or(Reject::new(
                400,
                "invalid_params",
                "sale id must be a positive integer",
            ))?;
        let query = Query::parse(query);
        let offset = query.bounded(
            "offset",
            0,
            0,
            i64::from(u32::MAX),
            "offset must be a non-negative integer",
        )?;
        let limit = query.bounded(
            "limit",
            100,
            1,
            MAX_PAGE,
            "limit must be an integer from 1 to 1000",
        )?;

        let (total, bitmap) = {
            let _slot = self.begin_redis_work()?;
            let total = match self.known_sale(sale_id) {
                Some(sale) => sale.items,
                None => self
                    .meta_field::<u32>(sale_id, "items")
                    .await?
                    .ok_or(SALE_NOT_FOUND)?,
            };
            let first = offset.min(i64::from(total));
            let last = (offset + limit).min(i64::from(total)); // exclusive, item index
            let bitmap = if first < last {
                let cmd = redis::cmd("GETRANGE")
                    .arg(self.deps.keys.sold(sale_id))
                    .arg(first / 8)
                    .arg((last - 1) / 8)
                    .clone();
                match self.redis_query(sale_id, &cmd).await? {
                    Value::BulkString(bytes) => bytes,
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            };
            (total, bitmap)
        };

        let first = offset.min(i64::from(total));
        let last = (offset + limit).min(i64::from(total));
        let base_byte = first / 8;
        let items = (first..last)
            .map(|index| {
                let n = index as u32 + 1;
                let byte = bitmap
                    .get((index / 8 - base_byte) as usize)
                    .copied()
                    .unwrap_or(0);
                let id = item_id(sale_id, n);
                ItemBody {
                    id,
                    name: item_name(sale_id, n),
                    image_url: image_url(id),
                    sold: byte & (0x80 >> (index % 8)) != 0,
                }
            })
            .collect();
        write_json(
            body,
            &ItemsBody {
                sale_id,
                total,
                items,
            },
        );
        Ok(ResponseHead::json(200))
    }

    /// One field of a sale's meta hash (`None` when the sale is unknown to Redis).
    async fn meta_field<T: redis::FromRedisValue>(
        &self,
        sale_id: i64,
        field: &str,
    ) -> Result<Option<T>, Reject> {
        let cmd = redis::cmd("HGET")
            .arg(self.deps.keys.meta(sale_id))
            .arg(field)
            .clone();
        let value = self.redis_query(sale_id, &cmd).await?;
        redis::from_redis_value(value).map_err(|_| super::INTERNAL)
    }

    pub(super) async fn health(&self, body: &mut Vec<u8>) -> ResponseHead {
        let redis_up = self.deps.redis.ping().await.is_ok();
        let postgres_up = self.deps.postgres.is_up();
        let up = |ok: bool| if ok { "ok" } else { "down" };
        let healthy = redis_up && postgres_up;
        write_json(
            body,
            &HealthBody {
                status: if healthy { "ok" } else { "degraded" },
                redis: up(redis_up),
                postgres: up(postgres_up),
                dead_letters: registry().writer.dead_letters(),
            },
        );
        let mut head = ResponseHead::json(if healthy { 200 } else { 503 });
        if !healthy {
            head.retry_after = Some(super::RETRY_AFTER_SECS);
        }
        head
    }

    pub(super) async fn metrics(&self, body: &mut Vec<u8>) -> ResponseHead {
        let current = match self.active_sale() {
            Some(sale) => {
                // Best effort: a scrape still answers while Redis is down or busy.
                let items_sold = match self.begin_redis_work() {
                    Ok(_slot) => self.meta_field(sale.id, "sold").await.ok().flatten(),
                    Err(_) => None,
                };
                Some(CurrentSale { sale, items_sold })
            }
            None => None,
        };
        let mut text = registry().render(self.deps.records.len());
        metrics::sale::render(&mut text, current.as_ref());
        metrics::process::render_process(&mut text);
        metrics::process::render_build_info(&mut text);
        body.extend_from_slice(text.as_bytes());
        let mut head = ResponseHead::json(200);
        head.content_type = PROMETHEUS_TEXT;
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_paths() {
        assert_eq!(sale_items_path("/sales/12/items"), Some("12"));
        assert_eq!(sale_items_path("/sales//items"), Some(""));
        assert_eq!(sale_items_path("/sales/12"), None);
        assert_eq!(sale_items_path("/sales/active"), None);
    }
}
