//! POST /purchase: run purchase.lua for the code's sale (in the core's next
//! batch of purchases) and answer its outcome (first run or replay). The
//! script itself appends each sale to the sale's outbox stream, so nothing
//! here talks to the writer.

use super::json::{IdList, PurchaseBody};
use super::params::Query;
use super::{Answer, Api, Reject};
use crate::http::ResponseHead;
use crate::http::response::write_json;
use crate::redis_client::batch::{BatchCall, CallReply};
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::{Script, Scripts};
use crate::sale::ITEM_ID_STRIDE;
use crate::sale::code::{Code, CodeIds, parse_code};

/// One purchase for purchase.lua; the layout of KEYS and ARGV is at the top
/// of the script.
pub(super) struct PurchaseCall {
    sale_id: i64,
    /// `sale_id * ITEM_ID_STRIDE`: item number n is item id `first_item + n`.
    first_item: i64,
    /// The code, which names its user: the script reads the user's entry
    /// and answers `unknown` when it is not that user's open code (nor a
    /// purchased one).
    code: Code,
    /// Whether a replayed `200` makes a write of its own, so that the WAIT
    /// behind the batch covers the original purchase (see purchase.lua).
    confirm_replays: bool,
}

impl BatchCall for PurchaseCall {
    const KEYS_PER_CALL: usize = 0;
    const SHARED_KEYS: usize = 5;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.purchase
    }

    fn group(&self) -> i64 {
        self.sale_id
    }

    fn shared_keys(&self, keys: &Keys, cmd: &mut redis::Cmd) {
        cmd.arg(keys.meta(self.sale_id))
            .arg(keys.sold(self.sale_id))
            .arg(keys.outbox(self.sale_id))
            .arg(keys.users(self.sale_id))
            .arg(keys.codes(self.sale_id));
    }

    fn shared_args(&self, _keys: &Keys, fence: &str, cmd: &mut redis::Cmd) {
        cmd.arg(self.first_item)
            .arg(if self.confirm_replays { "1" } else { "0" })
            .arg(fence);
    }

    fn keys(&self, _keys: &Keys, _cmd: &mut redis::Cmd) {}

    fn args(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.code);
    }

    /// A purchase answered `200`, first time or replayed: with replicas to
    /// wait for, it is answered only once they confirmed it.
    fn needs_replicas(reply: &CallReply) -> bool {
        let mut fields = [""; REPLY_FIELDS];
        let n = reply.texts(&mut fields).unwrap_or(0);
        matches!(
            &fields[..n],
            [outcome, _, _, _, status, _] if (*outcome == "done" || *outcome == "replay") && *status == "200"
        )
    }
}

/// The most fields a reply of purchase.lua has (`done` and `replay`).
const REPLY_FIELDS: usize = 6;

const UNKNOWN_CODE: Reject = Reject::new(404, "unknown_code", "no checkout has this code");
const SALE_ENDED: Reject = Reject::new(410, "sale_ended", "the sale of this code is over");

impl Api {
    pub(super) async fn purchase(&self, query: &str, body: &mut Vec<u8>) -> Answer {
        let query = Query::parse(query);
        let code = query.text("code", "code is required")?;
        let CodeIds { sale_id, .. } = parse_code(&code).ok_or(Reject::new(
            400,
            "invalid_params",
            "code is not a checkout code",
        ))?;
        let first_item = sale_id.checked_mul(ITEM_ID_STRIDE).ok_or(UNKNOWN_CODE)?;
        // A well-formed code always fits.
        let code = Code::from_text(&code).ok_or(UNKNOWN_CODE)?;

        let reply = {
            let _slot = self.begin_redis_work()?;
            self.purchases
                .call(PurchaseCall {
                    sale_id,
                    first_item,
                    code,
                    confirm_replays: self.deps.wait_replicas > 0,
                })
                .await
                .map_err(|e| self.redis_failed(e))?
        };
        let mut fields = [""; REPLY_FIELDS];
        let n = reply.texts(&mut fields).ok_or(super::INTERNAL)?;
        match &fields[..n] {
            ["fenced"] => Err(self.fenced(sale_id)),
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
                let purchased = IdList(purchased);
                let unavailable = IdList(unavailable);
                if *outcome == "done" {
                    self.note_sold(sale_id, purchased);
                }
                let ok = *status == "200";
                write_json(
                    body,
                    &PurchaseBody {
                        error: (!ok).then_some("nothing_purchased"),
                        message: (!ok).then_some("none of the checkout's items could be bought"),
                        sale_id,
                        user_id,
                        purchased,
                        unavailable,
                    },
                );
                Ok(ResponseHead::json(if ok { 200 } else { 409 }))
            }
            _ => Err(super::INTERNAL),
        }
    }

    /// Items this core saw bought go into its known-sold map.
    fn note_sold(&self, sale_id: i64, item_ids: IdList<'_>) {
        self.deps.metrics.items_sold(item_ids.iter().count() as u64);
        let mut sold = self.sold.borrow_mut();
        for id in item_ids.iter() {
            if let Some((item_sale, n)) = crate::sale::split_item_id(id)
                && item_sale == sale_id
            {
                sold.mark_sold(sale_id, n);
            }
        }
    }
}
