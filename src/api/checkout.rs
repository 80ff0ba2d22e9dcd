//! POST /checkout: validate, answer locally what the core already knows
//! (no sale, not an item of it, known sold), else run checkout.lua (in the
//! core's next batch of checkouts); record every well-formed attempt for the
//! writer.

use super::json::{CheckoutBody, IdList};
use super::params::Query;
use super::{Answer, Api, ITEM_NOT_FOUND, NO_ACTIVE_SALE, Reject, WRITER_QUEUE_FULL};
use crate::http::ResponseHead;
use crate::redis_client::batch::BatchCall;
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::{Script, Scripts};
use crate::sale::code::{Code, MAX_CODE_LEN, new_code};
use crate::sale::{CheckoutOutcome, SaleInfo};
use crate::store::{CheckoutRecord, Record};

/// One checkout for checkout.lua; the layout of KEYS and ARGV is at the top
/// of the script.
pub(super) struct CheckoutCall {
    sale_id: i64,
    user_id: i64,
    item_number: u32,
    item_id: i64,
    fresh_code: Code,
}

impl BatchCall for CheckoutCall {
    const KEYS_PER_CALL: usize = 0;
    const SHARED_KEYS: usize = 3;
    const LINE_REPLY: bool = true;

    fn script(scripts: &Scripts) -> &Script {
        &scripts.checkout
    }

    fn group(&self) -> i64 {
        self.sale_id
    }

    fn shared_keys(&self, keys: &Keys, cmd: &mut redis::Cmd) {
        cmd.arg(keys.meta(self.sale_id))
            .arg(keys.sold(self.sale_id))
            .arg(keys.users(self.sale_id));
    }

    fn shared_args(&self, _keys: &Keys, fence: &str, cmd: &mut redis::Cmd) {
        cmd.arg(fence);
    }

    fn keys(&self, _keys: &Keys, _cmd: &mut redis::Cmd) {}

    fn args(&self, cmd: &mut redis::Cmd) {
        // The item's bit in the sold bitmap, and a new user's entry
        // ('0:1:<code>:,<item id>,'), as text the script uses as is.
        let mut entry = [0u8; NEW_ENTRY_LEN];
        let mut len = 0;
        let mut id = itoa::Buffer::new();
        for part in [
            b"0:1:".as_slice(),
            self.fresh_code.as_bytes(),
            b":,",
            id.format(self.item_id).as_bytes(),
            b",",
        ] {
            entry[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        cmd.arg(self.user_id)
            .arg(self.item_number - 1)
            .arg(&entry[..len]);
    }
}

/// The longest new user's entry: '0:1:', a code, ':,', an item id (at most
/// 19 digits) and ','.
const NEW_ENTRY_LEN: usize = 4 + MAX_CODE_LEN + 2 + 19 + 1;

const ITEM_SOLD: Reject = Reject::new(409, "item_sold", "the item is already sold");
const LIMIT_REACHED: Reject = Reject::new(
    409,
    "limit_reached",
    "items bought plus items in the checkout would pass the per-user limit",
);

impl Api {
    pub(super) async fn checkout(&self, query: &str, body: &mut Vec<u8>) -> Answer {
        let query = Query::parse(query);
        let [user_id, item_id] = query.positive_ids([
            ("user_id", "user_id must be a positive integer"),
            ("id", "id must be a positive integer"),
        ])?;
        // The record's time: Redis's clock as this instance tracks it (the
        // same for attempts answered here and by the script), inside the
        // window of the sale it picks.
        let now = self.deps.clock.now_ms();
        let sale = self.active_sale_at(now).ok_or(NO_ACTIVE_SALE)?;
        if !self.deps.records.has_room() {
            self.deps.metrics.writer_queue_full();
            return Err(WRITER_QUEUE_FULL);
        }

        let Some(n) = sale.item_number(item_id) else {
            return self.item_not_found(&sale, user_id, item_id, now);
        };
        let known_sold = {
            let mut sold = self.sold.borrow_mut();
            sold.track(&sale);
            sold.is_sold(n)
        };
        if known_sold {
            self.deps.metrics.answered_from_sold_map();
            self.record(
                &sale,
                user_id,
                item_id,
                None,
                CheckoutOutcome::ItemSold,
                now,
            )?;
            return Err(ITEM_SOLD);
        }

        let fresh_code = new_code(sale.id, user_id);
        let reply = {
            let _slot = self.begin_redis_work()?;
            self.checkouts
                .call(CheckoutCall {
                    sale_id: sale.id,
                    user_id,
                    item_number: n,
                    item_id,
                    fresh_code,
                })
                .await
                .map_err(|e| self.redis_failed(e))?
        };
        let mut fields = [""; 3];
        let mut id = itoa::Buffer::new();
        let (outcome, code, items) = match reply.texts(&mut fields) {
            Some(3) => (fields[0], fields[1], fields[2]),
            // A new checkout: the call's own code and item.
            Some(1) if fields[0] == "new" => ("ok", fresh_code.as_str(), id.format(item_id)),
            _ => return Err(super::INTERNAL),
        };
        match outcome {
            "ok" => {
                self.record(
                    &sale,
                    user_id,
                    item_id,
                    Some(code),
                    CheckoutOutcome::Added,
                    now,
                )?;
                CheckoutBody {
                    code,
                    sale_id: sale.id,
                    item_id,
                    items: IdList(items),
                }
                .write(body);
                Ok(ResponseHead::json(200))
            }
            "sold" => {
                self.sold.borrow_mut().mark_sold(sale.id, n);
                self.record(
                    &sale,
                    user_id,
                    item_id,
                    None,
                    CheckoutOutcome::ItemSold,
                    now,
                )?;
                Err(ITEM_SOLD)
            }
            "limit" => {
                let code = (!code.is_empty()).then_some(code);
                self.record(
                    &sale,
                    user_id,
                    item_id,
                    code,
                    CheckoutOutcome::LimitReached,
                    now,
                )?;
                Err(LIMIT_REACHED)
            }
            // The sale closed between the clock check and the script: the item
            // is not one of the sale that is active now.
            "closed" => self.item_not_found(&sale, user_id, item_id, now),
            "fenced" => Err(self.fenced(sale.id)),
            "no_sale" => {
                tracing::error!(
                    sale_id = sale.id,
                    "sale missing in redis (the rotator will restore it), or created by a server of the per-user-key layout (not served; docs/redis.md)"
                );
                Err(NO_ACTIVE_SALE)
            }
            _ => Err(super::INTERNAL),
        }
    }

    /// Hands one checkout attempt to the writer; a full queue sheds the request.
    /// Records an attempt at an item that is not one of the active sale's
    /// and refuses it with 404.
    fn item_not_found<T>(
        &self,
        sale: &SaleInfo,
        user_id: i64,
        item_id: i64,
        at_ms: i64,
    ) -> Result<T, Reject> {
        let outcome = CheckoutOutcome::ItemNotFound;
        self.record(sale, user_id, item_id, None, outcome, at_ms)?;
        Err(ITEM_NOT_FOUND)
    }

    fn record(
        &self,
        sale: &SaleInfo,
        user_id: i64,
        item_id: i64,
        code: Option<&str>,
        outcome: CheckoutOutcome,
        at_ms: i64,
    ) -> Result<(), Reject> {
        self.deps.metrics.checkout_outcome(outcome.as_str());
        // Every code the script answers was issued by `new_code`, so it fits.
        let code = match code {
            Some(code) => Some(Code::from_text(code).ok_or(super::INTERNAL)?),
            None => None,
        };
        let record = Record::Checkout(CheckoutRecord {
            sale_id: sale.id,
            user_id,
            item_id,
            code,
            outcome: outcome.as_str(),
            at_ms,
        });
        self.deps.records.try_send(record).map_err(|_| {
            self.deps.metrics.writer_queue_full();
            WRITER_QUEUE_FULL
        })
    }
}
