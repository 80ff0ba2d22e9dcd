//! Routes: path and method → a sale operation, and the status codes and
//! JSON shapes of docs/api.md. One `Api` per core; it owns that core's view of the sales,
//! its known-sold map, its Redis client and its end of the writer channel.

mod checkout;
pub mod json;
pub mod params;
mod purchase;
mod reads;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::clock::RedisClock;
use crate::error::{Error, ErrorKind};
use crate::http::request::ParseError;
use crate::http::response::{ResponseHead, error_body};
use crate::http::{Handler, Method, RequestHead};
use crate::metrics::{CoreMetrics, Route};
use crate::reconcile::ReconcileRequests;
use crate::redis_client::batch::{BatchLimits, Batcher};
use crate::redis_client::keys::Keys;
use crate::redis_client::{RedisClient, server_reply};
use crate::sale::SaleInfo;
use crate::sale::schedule::{ScheduleView, SharedSchedule};
use crate::sale::sold_map::SoldMap;
use crate::store::{CoreRecords, PostgresHealth};

/// Seconds a shed client is asked to wait.
const RETRY_AFTER_SECS: u32 = 1;

/// How the handlers reach everything outside the core.
pub struct ApiDeps {
    pub redis: RedisClient,
    /// The connection purchases run on: `redis` itself, or with replicas to
    /// wait for a connection of their own, since a `WAIT` holds up every
    /// later command of its connection until it answers.
    pub purchase_redis: RedisClient,
    /// Replicas that must confirm a purchase before it is answered `200`.
    pub wait_replicas: u32,
    /// Redis key names behind the deployment's prefix.
    pub keys: Arc<Keys>,
    pub schedule: Arc<SharedSchedule>,
    /// Redis's clock, as this instance estimates it: picks the active sale.
    pub clock: Arc<RedisClock>,
    pub records: CoreRecords,
    pub postgres: Arc<PostgresHealth>,
    /// Where a fenced sale is asked to be reconciled (the rotator runs it).
    pub reconcile_requests: Arc<ReconcileRequests>,
    pub metrics: Arc<CoreMetrics>,
    pub max_in_flight: usize,
    pub redis_batching: BatchLimits,
}

/// The API of one core.
pub struct Api {
    deps: ApiDeps,
    schedule: RefCell<ScheduleView>,
    sold: RefCell<SoldMap>,
    in_flight: Cell<usize>,
    checkouts: Batcher<checkout::CheckoutCall>,
    purchases: Batcher<purchase::PurchaseCall>,
}

/// An error answer: status, stable code, human message.
pub struct Reject {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

impl Reject {
    pub const fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        Reject {
            status,
            code,
            message,
        }
    }
}

pub const NO_ACTIVE_SALE: Reject =
    Reject::new(503, "no_active_sale", "no sale is active right now");
pub const ITEM_NOT_FOUND: Reject =
    Reject::new(404, "item_not_found", "not an item of the active sale");
pub const OVERLOADED: Reject = Reject::new(
    503,
    "overloaded",
    "too many requests in progress; retry shortly",
);
pub const WRITER_QUEUE_FULL: Reject =
    Reject::new(503, "overloaded", "the record queue is full; retry shortly");
pub const REDIS_UNAVAILABLE: Reject = Reject::new(
    503,
    "redis_unavailable",
    "the sale store is unavailable; retry shortly",
);
/// The sale's Redis state is fenced: its slot moved to another node (a
/// failover or a migration) and the state is not used until it has been
/// reconciled with what Postgres recorded.
pub const SALE_FENCED: Reject = Reject::new(
    503,
    "redis_unavailable",
    "the sale store moved to another node and is being reconciled; retry shortly",
);
/// Parameters sent in a form body instead of the query string.
pub const PARAMS_IN_BODY: Reject = Reject::new(
    400,
    "invalid_params",
    "parameters go in the query string (POST /checkout?user_id=..&id=.., POST /purchase?code=..), not in the request body",
);
pub const INTERNAL: Reject = Reject::new(500, "internal", "internal error");

impl From<params::InvalidParams> for Reject {
    fn from(e: params::InvalidParams) -> Self {
        Reject::new(400, "invalid_params", e.0)
    }
}

impl From<Error> for Reject {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::RedisUnavailable => REDIS_UNAVAILABLE,
            ErrorKind::Overloaded => OVERLOADED,
            _ => {
                tracing::error!(error = %e, "request failed");
                INTERNAL
            }
        }
    }
}

/// What a handler returns: the response head, the body already written.
type Answer = Result<ResponseHead, Reject>;

impl Api {
    /// Creates a core's API and starts its script batchers on the current runtime.
    pub fn new(deps: ApiDeps) -> Self {
        let schedule = RefCell::new(deps.schedule.view());
        let observer = deps.metrics.clone();
        Api {
            checkouts: Batcher::start(
                deps.redis.clone(),
                deps.keys.clone(),
                deps.redis_batching,
                0,
                observer.clone(),
            ),
            purchases: Batcher::start(
                deps.purchase_redis.clone(),
                deps.keys.clone(),
                deps.redis_batching,
                deps.wait_replicas,
                observer,
            ),
            schedule,
            sold: RefCell::new(SoldMap::default()),
            in_flight: Cell::new(0),
            deps,
        }
    }

    /// The sale open now by Redis's clock (as this instance estimates it),
    /// if any; the scripts decide on Redis's own `TIME`.
    fn active_sale(&self) -> Option<SaleInfo> {
        self.active_sale_at(self.deps.clock.now_ms())
    }

    /// The sale open at `now_ms` (Redis's clock, as estimated), if any.
    fn active_sale_at(&self, now_ms: i64) -> Option<SaleInfo> {
        self.schedule
            .borrow_mut()
            .current()
            .active_at(now_ms)
            .copied()
    }

    /// A sale the rotator has prepared (current or next, or recent).
    fn known_sale(&self, sale_id: i64) -> Option<SaleInfo> {
        self.schedule.borrow_mut().current().get(sale_id).copied()
    }

    /// Takes a slot of the core's in-flight budget for a Redis round trip.
    fn begin_redis_work(&self) -> Result<InFlight<'_>, Reject> {
        let n = self.in_flight.get();
        if n >= self.deps.max_in_flight {
            self.deps.metrics.shed();
            return Err(OVERLOADED);
        }
        self.in_flight.set(n + 1);
        Ok(InFlight(&self.in_flight))
    }

    /// A script refused to run on a node its sale's state was not
    /// reconciled on: asks for the reconcile (at most once a second per
    /// sale, logged only then) and answers 503 meanwhile.
    fn fenced(&self, sale_id: i64) -> Reject {
        if self.deps.reconcile_requests.request(sale_id) {
            tracing::warn!(
                sale_id,
                "sale state fenced on its redis node: asked for a reconcile with postgres"
            );
        }
        SALE_FENCED
    }

    fn redis_failed(&self, e: Error) -> Reject {
        self.deps.metrics.redis_error();
        e.into()
    }

    /// One Redis command on sale `sale_id`'s keys; failures are counted and
    /// become rejections, and an error reply is an error.
    async fn redis_query(&self, sale_id: i64, cmd: &redis::Cmd) -> Result<redis::Value, Reject> {
        let value = self
            .deps
            .redis
            .query(Keys::sale_slot(sale_id), cmd)
            .await
            .map_err(|e| self.redis_failed(e))?;
        server_reply(value).map_err(Reject::from)
    }

    async fn route(
        &self,
        head: &RequestHead<'_>,
        request_body: &[u8],
        body: &mut Vec<u8>,
    ) -> (Route, Answer) {
        let path = head.path;
        let method = head.method;
        let (route, allow) = match path {
            "/checkout" => (Route::Checkout, "POST"),
            "/purchase" => (Route::Purchase, "POST"),
            "/sales/active" => (Route::SalesActive, "GET"),
            "/health" => (Route::Health, "GET"),
            "/metrics" => (Route::Metrics, "GET"),
            _ if reads::sale_items_path(path).is_some() => (Route::SaleItems, "GET"),
            _ => {
                return (
                    Route::Other,
                    Err(Reject::new(404, "not_found", "no such path")),
                );
            }
        };
        let wanted = if allow == "POST" {
            Method::Post
        } else {
            Method::Get
        };
        if method != wanted {
            let mut head = ResponseHead::json(405);
            head.allow = Some(allow);
            error_body(
                body,
                "method_not_allowed",
                "method not allowed on this path",
            );
            return (route, Ok(head));
        }
        let query_params: &[&str] = match route {
            Route::Checkout => &["user_id", "id"],
            Route::Purchase => &["code"],
            _ => &[],
        };
        if !query_params.is_empty()
            && !request_body.is_empty()
            && !params::Query::parse(head.query).has_any(query_params)
        {
            return (route, Err(PARAMS_IN_BODY));
        }
        let answer = match route {
            Route::Checkout => self.checkout(head.query, body).await,
            Route::Purchase => self.purchase(head.query, body).await,
            Route::SalesActive => self.sales_active(body).await,
            Route::SaleItems => self.sale_items(path, head.query, body).await,
            Route::Health => Ok(self.health(body).await),
            Route::Metrics => Ok(self.metrics(body).await),
            Route::Other => unreachable!("matched above"),
        };
        (route, answer)
    }

    /// Hands the records buffered in this turn to the writer now (the core
    /// is stopping; otherwise they go when the turn ends).
    pub fn flush_records(&self) {
        self.deps.records.flush();
    }

    /// Keeps the known-sold map of this core fresh from Redis's bitmap, so
    /// items sold through other cores and instances are answered locally.
    pub async fn refresh_sold_map(&self) {
        let Some(sale) = self.active_sale() else {
            return;
        };
        {
            let mut sold = self.sold.borrow_mut();
            if sold.sold_out() && sold.sale_id() == sale.id {
                return;
            }
            sold.track(&sale);
        }
        let cmd = redis::cmd("GET").arg(self.deps.keys.sold(sale.id)).clone();
        if let Ok(redis::Value::BulkString(bitmap)) =
            self.deps.redis.query(Keys::sale_slot(sale.id), &cmd).await
        {
            // The map may track the next sale by now: then this is ignored.
            self.sold.borrow_mut().merge_redis_bitmap(sale.id, &bitmap);
        }
    }
}

/// A slot of the in-flight budget, given back on drop.
struct InFlight<'a>(&'a Cell<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Handler for Api {
    async fn handle(
        &self,
        head: &RequestHead<'_>,
        request_body: &[u8],
        out: &mut Vec<u8>,
    ) -> ResponseHead {
        // A client's request id goes into every log line about its request.
        match head.request_id {
            Some(id) => {
                let span = tracing::info_span!("request", request_id = id);
                self.answer(head, request_body, out).instrument(span).await
            }
            None => self.answer(head, request_body, out).await,
        }
    }

    fn reject(&self, error: ParseError, out: &mut Vec<u8>) -> ResponseHead {
        let (status, code, message) = crate::http::conn::parse_error_status(error);
        error_body(out, code, message);
        self.deps
            .metrics
            .request(Route::Other, status, Duration::ZERO);
        ResponseHead::json(status)
    }
}

impl Api {
    /// Routes, runs and measures one request; errors become error bodies.
    async fn answer(
        &self,
        head: &RequestHead<'_>,
        request_body: &[u8],
        out: &mut Vec<u8>,
    ) -> ResponseHead {
        let started = Instant::now();
        let (route, answer) = self.route(head, request_body, out).await;
        let response = match answer {
            Ok(response) => response,
            Err(reject) => {
                out.clear();
                error_body(out, reject.code, reject.message);
                let mut response = ResponseHead::json(reject.status);
                if reject.status == 503 {
                    response.retry_after = Some(RETRY_AFTER_SECS);
                }
                response
            }
        };
        self.deps
            .metrics
            .request(route, response.status, started.elapsed());
        if response.status >= 500 {
            tracing::debug!(path = head.path, status = response.status, "request failed");
        }
        response
    }
}

/// Runs `refresh_sold_map` every `every` until `stop` is set.
pub async fn keep_sold_map_fresh(api: Rc<Api>, every: Duration, stop: crate::event::Event) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
        api.refresh_sold_map().await;
    }
}
