//! Gauges of the sale open now, as this instance sees it: its id, items,
//! items sold (from Redis, shared by every instance) and its window.

use std::fmt::Write as _;

use crate::sale::SaleInfo;

/// The sale open at scrape time; `items_sold` is `None` when Redis could
/// not be asked (the gauge is then left out).
pub struct CurrentSale {
    pub sale: SaleInfo,
    pub items_sold: Option<u64>,
}

pub fn render(out: &mut String, current: Option<&CurrentSale>) {
    let _ = writeln!(
        out,
        "# HELP flashsale_sale_open Whether a sale is open now (1) or not (0).\n\
         # TYPE flashsale_sale_open gauge\n\
         flashsale_sale_open {}",
        u8::from(current.is_some())
    );
    let Some(current) = current else {
        return;
    };
    let sale = &current.sale;
    let mut gauges: Vec<(&str, &str, i64)> = vec![
        ("flashsale_sale_id", "Id of the sale open now.", sale.id),
        (
            "flashsale_sale_items",
            "Items of the sale open now.",
            i64::from(sale.items),
        ),
        (
            "flashsale_sale_start_time_seconds",
            "Start of the sale open now, Unix seconds.",
            sale.starts_at,
        ),
        (
            "flashsale_sale_end_time_seconds",
            "End of the sale open now, Unix seconds.",
            sale.ends_at,
        ),
    ];
    if let Some(sold) = current.items_sold {
        gauges.push((
            "flashsale_sale_items_sold",
            "Items of the sale open now sold so far (all instances, from Redis).",
            sold as i64,
        ));
    }
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_open_sale_or_says_there_is_none() {
        let mut out = String::new();
        render(&mut out, None);
        assert!(out.contains("flashsale_sale_open 0"));
        assert!(!out.contains("flashsale_sale_id"));
        let current = CurrentSale {
            sale: SaleInfo {
                id: 7,
                starts_at: 3600,
                ends_at: 7200,
                items: 100,
                user_limit: 10,
            },
            items_sold: Some(42),
        };
        let mut out = String::new();
        render(&mut out, Some(&current));
        for line in [
            "flashsale_sale_open 1",
            "flashsale_sale_id 7",
            "flashsale_sale_items 100",
            "flashsale_sale_items_sold 42",
            "flashsale_sale_start_time_seconds 3600",
            "flashsale_sale_end_time_seconds 7200",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
