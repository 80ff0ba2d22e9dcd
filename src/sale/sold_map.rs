//! What one core knows about sold items of the current sale: a bitmap with a
//! bit per item. Bits are only ever set (an item never becomes unsold), so the
//! map can be stale only in the safe direction: an item it calls sold is sold;
//! an item it calls unsold is asked of Redis, which stays the judge.
//!
//! Every update names its sale: an answer about another sale than the one
//! the map tracks (a late reply of the sale that just ended) is ignored, as
//! item number n of one sale says nothing about item n of the next.

use super::SaleInfo;

#[derive(Debug, Default)]
pub struct SoldMap {
    sale_id: i64,
    items: u32,
    words: Vec<u64>,
    sold: u32,
}

impl SoldMap {
    /// Makes the map track `sale`, forgetting what it knew of another sale.
    pub fn track(&mut self, sale: &SaleInfo) {
        if self.sale_id != sale.id || self.items != sale.items {
            self.sale_id = sale.id;
            self.items = sale.items;
            self.words = vec![0; (sale.items as usize).div_ceil(64)];
            self.sold = 0;
        }
    }

    pub fn sale_id(&self) -> i64 {
        self.sale_id
    }

    /// Whether item number `n` (1-based) is known to be sold.
    pub fn is_sold(&self, n: u32) -> bool {
        if n == 0 || n > self.items {
            return false;
        }
        let i = n as usize - 1;
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Records that item number `n` of sale `sale_id` is sold (nothing when
    /// the map tracks another sale).
    pub fn mark_sold(&mut self, sale_id: i64, n: u32) {
        if sale_id != self.sale_id || n == 0 || n > self.items {
            return;
        }
        let i = n as usize - 1;
        if let Some(w) = self.words.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            if *w & bit == 0 {
                *w |= bit;
                self.sold += 1;
            }
        }
    }

    /// Whether every item of the sale is known to be sold.
    pub fn sold_out(&self) -> bool {
        self.items > 0 && self.sold >= self.items
    }

    /// Merges sale `sale_id`'s Redis bitmap (see `sold_numbers`); nothing
    /// when the map tracks another sale.
    pub fn merge_redis_bitmap(&mut self, sale_id: i64, bytes: &[u8]) {
        if sale_id != self.sale_id {
            return;
        }
        for n in sold_numbers(bytes) {
            self.mark_sold(sale_id, n);
        }
    }
}

/// The item numbers whose bit is set in a sale's Redis bitmap (`SETBIT key
/// n-1`: bit 0 is the high bit of byte 0), in increasing order.
pub fn sold_numbers(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte != 0)
        .flat_map(|(byte_index, &byte)| {
            (0..8)
                .filter(move |bit| byte & (0x80 >> bit) != 0)
                .map(move |bit| u32::try_from(byte_index * 8 + bit + 1).unwrap_or(u32::MAX))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(id: i64, items: u32) -> SaleInfo {
        SaleInfo {
            id,
            starts_at: 0,
            ends_at: 1,
            items,
            user_limit: 1,
        }
    }

    #[test]
    fn marks_and_counts_once() {
        let mut map = SoldMap::default();
        map.track(&sale(1, 3));
        assert!(!map.is_sold(1));
        map.mark_sold(1, 1);
        map.mark_sold(1, 1);
        map.mark_sold(1, 3);
        assert!(map.is_sold(1) && map.is_sold(3) && !map.is_sold(2));
        assert!(!map.sold_out());
        map.mark_sold(1, 2);
        assert!(map.sold_out());
        // out of range numbers are ignored
        map.mark_sold(1, 0);
        map.mark_sold(1, 4);
        assert!(!map.is_sold(0) && !map.is_sold(4));
    }

    #[test]
    fn new_sale_resets() {
        let mut map = SoldMap::default();
        map.track(&sale(1, 10));
        map.mark_sold(1, 5);
        map.track(&sale(1, 10));
        assert!(map.is_sold(5));
        map.track(&sale(2, 10));
        assert!(!map.is_sold(5));
    }

    #[test]
    fn answers_about_another_sale_are_ignored() {
        let mut map = SoldMap::default();
        map.track(&sale(1, 10));
        map.track(&sale(2, 10));
        // A late answer of sale 1: its item 5 is sold, item 5 of sale 2 is not.
        map.mark_sold(1, 5);
        map.merge_redis_bitmap(1, &[0xff, 0xff]);
        assert!((1..=10).all(|n| !map.is_sold(n)));
        assert_eq!(map.sold, 0);
        map.mark_sold(2, 5);
        assert!(map.is_sold(5));
    }

    #[test]
    fn decodes_redis_bit_order() {
        let numbers: Vec<u32> = sold_numbers(&[0x80, 0x00, 0x41]).collect();
        assert_eq!(numbers, vec![1, 18, 24]);
    }

    #[test]
    fn merges_redis_bit_order() {
        let mut map = SoldMap::default();
        map.track(&sale(1, 12));
        // item 1 -> bit 0 (0x80 of byte 0); item 10 -> bit 9 (0x40 of byte 1)
        map.merge_redis_bitmap(1, &[0x80, 0x40, 0xff]);
        assert!(map.is_sold(1) && map.is_sold(10));
        assert!(!map.is_sold(2) && !map.is_sold(9));
        assert_eq!(map.sold, 2);
    }
}
