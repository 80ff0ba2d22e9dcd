//! The sale domain, free of HTTP and IO: sale periods, item ids and their
//! generated names, checkout codes, outcomes, and the per-core known-sold map.

pub mod code;
pub mod schedule;
pub mod sold_map;

/// Item ids of sale `s` are `s * ITEM_ID_STRIDE + n` for `n` in `1..=items`
/// (at most ITEM_ID_STRIDE items: the last id, `(s + 1) * ITEM_ID_STRIDE`, is
/// just below the next sale's first), so ids are unique across sales and an
/// id names its sale without a lookup.
pub const ITEM_ID_STRIDE: i64 = 1_000_000;

/// One sale: `[starts_at, ends_at)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleInfo {
    pub id: i64,
    pub starts_at: i64,
    pub ends_at: i64,
    pub items: u32,
    pub user_limit: u32,
}

impl SaleInfo {
    /// Whether `now_ms` (Unix milliseconds) falls in this sale.
    pub fn is_open_at(&self, now_ms: i64) -> bool {
        now_ms >= self.starts_at * 1000 && now_ms < self.ends_at * 1000
    }

    /// The item number (`1..=items`) of `item_id` if it is an item of this sale.
    pub fn item_number(&self, item_id: i64) -> Option<u32> {
        let (sale, n) = split_item_id(item_id)?;
        (sale == self.id && n <= self.items).then_some(n)
    }
}

/// The id of item `n` (1-based) of sale `sale_id`.
pub fn item_id(sale_id: i64, n: u32) -> i64 {
    sale_id * ITEM_ID_STRIDE + i64::from(n)
}

/// Splits an item id into its sale id and item number, if it is well formed.
pub fn split_item_id(item_id: i64) -> Option<(i64, u32)> {
    if item_id <= ITEM_ID_STRIDE {
        return None;
    }
    let sale = (item_id - 1) / ITEM_ID_STRIDE;
    let n = (item_id - 1) % ITEM_ID_STRIDE + 1;
    Some((sale, n as u32))
}

/// Generated, unique name of item `n` of a sale.
pub fn item_name(sale_id: i64, n: u32) -> String {
    const ADJECTIVES: [&str; 8] = [
        "Swift", "Golden", "Silent", "Crimson", "Lucky", "Arctic", "Velvet", "Cosmic",
    ];
    const NOUNS: [&str; 8] = [
        "Falcon",
        "Lantern",
        "Compass",
        "Teapot",
        "Sneaker",
        "Backpack",
        "Watch",
        "Headphones",
    ];
    let i = n as usize;
    format!(
        "{} {} #{}-{}",
        ADJECTIVES[i % ADJECTIVES.len()],
        NOUNS[(i / ADJECTIVES.len()) % NOUNS.len()],
        sale_id,
        n
    )
}

/// Generated image URL of an item.
pub fn image_url(item_id: i64) -> String {
    format!("https://img.flashsale.example/items/{item_id}.jpg")
}

/// The start (Unix seconds) of the period that contains `now_secs`.
pub fn period_start(now_secs: i64, period_secs: i64) -> i64 {
    now_secs - now_secs.rem_euclid(period_secs)
}

/// What a checkout attempt came to; stored in `checkouts.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutOutcome {
    Added,
    ItemSold,
    LimitReached,
    ItemNotFound,
}

impl CheckoutOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutOutcome::Added => "ok",
            CheckoutOutcome::ItemSold => "item_sold",
            CheckoutOutcome::LimitReached => "limit_reached",
            CheckoutOutcome::ItemNotFound => "item_not_found",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_name_their_sale() {
        for (sale, n) in [
            (1, 1),
            (1, 10_000),
            (42, 1),
            (42, 1_000_000),
            (9_000_000, 7),
        ] {
            let id = item_id(sale, n);
            assert_eq!(split_item_id(id), Some((sale, n)));
        }
        assert_eq!(split_item_id(0), None);
        assert_eq!(split_item_id(-5), None);
        assert_eq!(split_item_id(ITEM_ID_STRIDE), None);
        // The last item of a full sale and the first of the next are neighbours.
        assert_eq!(item_id(42, 1_000_000) + 1, item_id(43, 1));
        assert_eq!(split_item_id(item_id(43, 1)), Some((43, 1)));
    }

    #[test]
    fn item_number_only_for_own_items() {
        let sale = SaleInfo {
            id: 7,
            starts_at: 0,
            ends_at: 60,
            items: 100,
            user_limit: 10,
        };
        assert_eq!(sale.item_number(item_id(7, 1)), Some(1));
        assert_eq!(sale.item_number(item_id(7, 100)), Some(100));
        assert_eq!(sale.item_number(item_id(7, 101)), None);
        assert_eq!(sale.item_number(item_id(8, 1)), None);
    }

    #[test]
    fn names_are_unique_within_a_sale() {
        let names: std::collections::HashSet<_> = (1..=10_000).map(|n| item_name(3, n)).collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn periods_align_to_the_epoch() {
        assert_eq!(period_start(7_201, 3600), 7_200);
        assert_eq!(period_start(7_200, 3600), 7_200);
        assert_eq!(period_start(7_199, 3600), 3_600);
        assert_eq!(period_start(17, 5), 15);
    }

    #[test]
    fn open_window_is_half_open() {
        let sale = SaleInfo {
            id: 1,
            starts_at: 10,
            ends_at: 20,
            items: 1,
            user_limit: 1,
        };
        assert!(!sale.is_open_at(9_999));
        assert!(sale.is_open_at(10_000));
        assert!(sale.is_open_at(19_999));
        assert!(!sale.is_open_at(20_000));
    }
}
