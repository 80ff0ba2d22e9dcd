//! POST /purchase: run purchase.lua for the code's sale and answer its
//! outcome (first run or replay). The script itself appends each sale to the
//! sale's outbox stream, so nothing here talks to the writer.

use super::json::{self, PurchaseBody};
use super::params::Query;
use super::{Answer, Api, Reject};
use crate::http::ResponseHead;
use crate::http::response::write_json;
use crate::redis_client::{keys, texts};
use crate::sale::code::parse_code;
use crate::sale::{ITEM_ID_STRIDE, now_ms};

const UNKNOWN_CODE: Reject = Reject::new(404, "unknown_code", "no checkout has this code");
const SALE_ENDED: Reject = Reject::new(410, "sale_ended", "the sale of this code is over");

impl Api {
    pub(super) async fn purchase(&self, query: &str, body: &mut Vec<u8>) -> Answer {
        let query = Query::parse(query);
        let code = query.text("code", "code is required")?;
        let sale_id = parse_code(code).ok_or(Reject::new(
            400,
            "invalid_params",
            "code is not a checkout code",
        ))?;
        let now = now_ms();
        let first_item = sale_id.checked_mul(ITEM_ID_STRIDE).ok_or(UNKNOWN_CODE)?;

        let reply = {
            let _slot = self.begin_redis_work()?;
            let scripts = self.deps.redis.scripts();
            self.deps
                .redis
                .eval(&scripts.purchase, 4, |cmd| {
                    cmd.arg(keys::meta(sale_id))
                        .arg(keys::sold(sale_id))
                        .arg(keys::code(sale_id, code))
                        .arg(keys::outbox(sale_id))
                        .arg(now)
                        .arg(keys::user_prefix(sale_id))
                        .arg(code)
                        .arg(first_item);
                })
                .await
                .map_err(|e| self.redis_failed(e))?
        };
        let fields = texts(&reply).ok_or(super::INTERNAL)?;
        match fields.as_slice() {
            ["unknown"] => Err(UNKNOWN_CODE),
            ["ended", _user] => Err(SALE_ENDED),
            [
                outcome @ ("done" | "replay"),
                user,
                purchased,
                unavailable,
                status,
                _sold_total,
            ] => {
                let user_id: i64 = user.parse().map_err(|_| super::INTERNAL)?;
                let purchased = json::parse_id_list(purchased);
                let unavailable = json::parse_id_list(unavailable);
                if *outcome == "done" {
                    self.note_sold(sale_id, &purchased);
                }
                let ok = *status == "200";
                write_json(
                    body,
                    &PurchaseBody {
                        error: (!ok).then_some("nothing_purchased"),
                        message: (!ok).then_some("none of the checkout's items could be bought"),
                        sale_id,
                        user_id,
                        purchased: &purchased,
                        unavailable: &unavailable,
                    },
                );
                Ok(ResponseHead::json(if ok { 200 } else { 409 }))
            }
            _ => Err(super::INTERNAL),
        }
    }

    /// Items this core saw bought go into its known-sold map.
    fn note_sold(&self, sale_id: i64, item_ids: &[i64]) {
        self.deps.metrics.items_sold(item_ids.len() as u64);
        let mut sold = self.sold.borrow_mut();
        if sold.sale_id() != sale_id {
            return;
        }
        for &id in item_ids {
            if let Some((_, n)) = crate::sale::split_item_id(id) {
                sold.mark_sold(n);
            }
        }
    }
}
