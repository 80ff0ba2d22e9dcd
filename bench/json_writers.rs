//! simd-json's serde serializer against serde_json's, on the server's real
//! response types (`flashsale::api::json`, `flashsale::http::response`), each
//! writing into one reused `Vec<u8>` as a connection does.
//!
//!     cargo bench --bench json_writers                 # timing, both writers alternating
//!     cargo bench --bench json_writers -- count W CASE N   # N bodies of CASE with writer W
//!
//! Timing: for every case, ROUNDS rounds; each round times BATCH bodies with
//! one writer, then with the other (the order flips every round, so neither
//! always runs second), and keeps ns per body. It prints the median of each
//! writer, and the median and quartiles of the per-round ratios (a round
//! the scheduler interrupted gives an outlier, which the quartiles ignore).
//!
//! `count` writes N bodies inside `measured_loop` and nothing else, for
//! `valgrind --tool=callgrind --toggle-collect='*measured_loop*'`: instructions
//! per body, which do not depend on what else the machine runs
//! (`bench/json_callgrind.sh` runs every writer and case).

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use flashsale::api::json::{
    ActiveSaleBody, CheckoutBody, IdList, ItemBody, ItemsBody, PurchaseBody,
};
use flashsale::http::response::ErrorBody;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 101;
/// Each timed batch takes about this long, so the clock's cost disappears.
const BATCH_NANOS: u128 = 1_000_000;

/// A serializer, called as `http::response::write_json` calls it.
trait JsonWriter {
    const NAME: &'static str;
    fn write<T: Serialize>(out: &mut Vec<u8>, value: &T);
}

struct SimdJson;
struct SerdeJson;

impl JsonWriter for SimdJson {
    const NAME: &'static str = "simd-json";
    #[inline(always)]
    fn write<T: Serialize>(out: &mut Vec<u8>, value: &T) {
        let _ = simd_json::to_writer(&mut *out, value);
    }
}

impl JsonWriter for SerdeJson {
    const NAME: &'static str = "serde_json";
    #[inline(always)]
    fn write<T: Serialize>(out: &mut Vec<u8>, value: &T) {
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// Realistic values: sale ids in the hundreds of thousands (one a period
/// since the epoch would be ~500,000), item ids `sale * 1e6 + n`, codes
/// `<sale>-<32 hex>`.
struct Fixtures {
    code: String,
    first_item: i64,
    /// Item id lists as the scripts answer them: comma-separated.
    one_item: String,
    ten_items: String,
    purchased: String,
    unavailable: String,
    page: ItemsBody,
}

const SALE: i64 = 493_912;

fn item(n: i64) -> i64 {
    SALE * 1_000_000 + n
}

impl Fixtures {
    fn new() -> Fixtures {
        let ten_items: Vec<i64> = [
            17, 342, 1_009, 2_718, 3_141, 4_660, 5_555, 7_001, 8_192, 9_999,
        ]
        .into_iter()
        .map(item)
        .collect();
        let page = ItemsBody {
            sale_id: SALE,
            total: 10_000,
            items: (101..=200)
                .map(|n| {
                    let id = item(n);
                    ItemBody {
                        id,
                        // The shapes of sale::item_name and sale::image_url.
                        name: format!("Crimson Compass #{SALE}-{n}"),
                        image_url: format!("https://img.flashsale.example/items/{id}.jpg"),
                        sold: n % 3 == 0,
                    }
                })
                .collect(),
        };
        let csv = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        Fixtures {
            code: format!("{SALE}-9f86d081884c7d659a2feaa0c55ad015"),
            first_item: ten_items[0],
            one_item: csv(&ten_items[..1]),
            purchased: csv(&ten_items[..3]),
            unavailable: csv(&ten_items[3..4]),
            ten_items: csv(&ten_items),
            page,
        }
    }
}

/// The cases measured: one response each.
const CASES: [&str; 7] = [
    "checkout-1",
    "checkout-10",
    "purchase-200",
    "purchase-409",
    "error",
    "active-sale",
    "items-100",
];

/// Writes `iterations` bodies of `case` with `W` into `out`, cleared before
/// each body as a connection's body buffer is. The value is built once,
/// outside the loop: only the serializer is measured.
fn run_case<W: JsonWriter>(case: &str, fx: &Fixtures, out: &mut Vec<u8>, iterations: u64) {
    match case {
        "checkout-1" | "checkout-10" => {
            let items = if case == "checkout-1" {
                &fx.one_item
            } else {
                &fx.ten_items
            };
            let body = CheckoutBody {
                code: &fx.code,
                sale_id: SALE,
                item_id: fx.first_item,
                items: IdList(items),
            };
            measured_loop::<W, _>(out, &body, iterations)
        }
        "purchase-200" => {
            let body = PurchaseBody {
                error: None,
                message: None,
                sale_id: SALE,
                user_id: 734_221,
                purchased: IdList(&fx.purchased),
                unavailable: IdList(&fx.unavailable),
            };
            measured_loop::<W, _>(out, &body, iterations)
        }
        "purchase-409" => {
            let body = PurchaseBody {
                error: Some("nothing_purchased"),
                message: Some("none of the checkout's items could be bought"),
                sale_id: SALE,
                user_id: 734_221,
                purchased: IdList(""),
                unavailable: IdList(&fx.purchased),
            };
            measured_loop::<W, _>(out, &body, iterations)
        }
        "error" => {
            let body = ErrorBody {
                error: "item_sold",
                message: "the item is already sold",
            };
            measured_loop::<W, _>(out, &body, iterations)
        }
        "active-sale" => {
            let body = ActiveSaleBody {
                sale_id: SALE,
                starts_at: flashsale::api::json::rfc3339(1_778_083_200),
                ends_at: flashsale::api::json::rfc3339(1_778_086_800),
                items_total: 10_000,
                items_sold: 4_242,
            };
            measured_loop::<W, _>(out, &body, iterations)
        }
        "items-100" => measured_loop::<W, _>(out, &fx.page, iterations),
        _ => panic!("unknown case {case}; cases: {CASES:?}"),
    }
}

/// The loop itself; the only code `count` runs under callgrind's toggle.
#[inline(never)]
fn measured_loop<W: JsonWriter, T: Serialize>(out: &mut Vec<u8>, body: &T, iterations: u64) {
    for _ in 0..iterations {
        out.clear();
        W::write(out, black_box(body));
        black_box(&mut *out);
    }
}

/// Nanoseconds per body over one batch.
fn time_batch<W: JsonWriter>(case: &str, fx: &Fixtures, out: &mut Vec<u8>, batch: u64) -> f64 {
    let start = Instant::now();
    run_case::<W>(case, fx, out, batch);
    start.elapsed().as_nanos() as f64 / batch as f64
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn bench(fx: &Fixtures) {
    let mut out = Vec::with_capacity(16 * 1024);
    println!("{ROUNDS} rounds per case, writers alternating (order flips each round); ns per body");
    println!(
        "{:<13} {:>6} {:>11} {:>11} {:>26}",
        "case", "bytes", "simd-json", "serde_json", "simd/serde (med, p25..p75)"
    );
    for case in CASES {
        // Same bytes from both writers, or the comparison means nothing.
        let mut reference = Vec::new();
        run_case::<SimdJson>(case, fx, &mut reference, 1);
        run_case::<SerdeJson>(case, fx, &mut out, 1);
        assert_eq!(
            String::from_utf8_lossy(&reference),
            String::from_utf8_lossy(&out),
            "{case}: the writers disagree"
        );
        // Calibrate a batch to about BATCH_NANOS, warming both up.
        let mut batch = 1_000u64;
        for warm_up in [time_batch::<SimdJson>, time_batch::<SerdeJson>] {
            let per = warm_up(case, fx, &mut out, batch);
            batch = (BATCH_NANOS as f64 / per.max(1.0)).clamp(100.0, 1e7) as u64;
        }
        let mut simd = Vec::with_capacity(ROUNDS);
        let mut serde = Vec::with_capacity(ROUNDS);
        let mut ratios = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let (s, j) = if round % 2 == 0 {
                let s = time_batch::<SimdJson>(case, fx, &mut out, batch);
                (s, time_batch::<SerdeJson>(case, fx, &mut out, batch))
            } else {
                let j = time_batch::<SerdeJson>(case, fx, &mut out, batch);
                (time_batch::<SimdJson>(case, fx, &mut out, batch), j)
            };
            simd.push(s);
            serde.push(j);
            ratios.push(s / j);
        }
        println!(
            "{:<13} {:>6} {:>11.1} {:>11.1} {:>10.3} ({:.3}..{:.3})",
            case,
            reference.len(),
            quantile(&mut simd, 0.5),
            quantile(&mut serde, 0.5),
            quantile(&mut ratios, 0.5),
            quantile(&mut ratios, 0.25),
            quantile(&mut ratios, 0.75)
        );
    }
}

fn main() {
    let fx = Fixtures::new();
    // cargo bench passes `--bench`; anything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [] => bench(&fx),
        [count, writer, case, n] if count == "count" => {
            assert!(CASES.contains(&case.as_str()), "cases: {CASES:?}");
            let n: u64 = n.parse().expect("N: a number of bodies");
            let mut out = Vec::with_capacity(16 * 1024);
            match writer.as_str() {
                SimdJson::NAME => run_case::<SimdJson>(case, &fx, &mut out, n),
                SerdeJson::NAME => run_case::<SerdeJson>(case, &fx, &mut out, n),
                _ => panic!("writer: simd-json or serde_json"),
            }
            println!("{writer} {case}: {} bytes", out.len());
        }
        _ => {
            eprintln!("usage: json_writers [count simd-json|serde_json CASE N]; cases: {CASES:?}");
            std::process::exit(2);
        }
    }
}
