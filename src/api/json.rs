//! The JSON shapes of the responses (docs/api.md), serialized with serde straight into
//! the connection's body buffer by `http::response::write_json`.

use serde::Serialize;

#[derive(Serialize)]
pub struct CheckoutBody<'a> {
    pub code: &'a str,
    pub sale_id: i64,
    pub item_id: i64,
    pub items: &'a [i64],
}

#[derive(Serialize)]
pub struct PurchaseBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub sale_id: i64,
    pub user_id: i64,
    pub purchased: &'a [i64],
    pub unavailable: &'a [i64],
}

#[derive(Serialize)]
pub struct ActiveSaleBody {
    pub sale_id: i64,
    pub starts_at: String,
    pub ends_at: String,
    pub items_total: u32,
    pub items_sold: u64,
}

#[derive(Serialize)]
pub struct ItemBody {
    pub id: i64,
    pub name: String,
    pub image_url: String,
    pub sold: bool,
}

#[derive(Serialize)]
pub struct ItemsBody {
    pub sale_id: i64,
    pub total: u32,
    pub items: Vec<ItemBody>,
}

#[derive(Serialize)]
pub struct HealthBody {
    pub status: &'static str,
    pub redis: &'static str,
    pub postgres: &'static str,
    /// Purchases in dead letters (sold in Redis, never recorded in
    /// Postgres): not a reason to take the instance out of rotation, but
    /// an operator must look.
    pub dead_letters: u64,
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(unix_secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Item ids from a Lua reply's comma-separated list.
pub fn parse_id_list(csv: &str) -> Vec<i64> {
    csv.split(',').filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::write_json as write;

    #[test]
    fn checkout_shape() {
        let mut out = Vec::new();
        write(
            &mut out,
            &CheckoutBody {
                code: "1-ab",
                sale_id: 1,
                item_id: 1_000_001,
                items: &[1_000_001, 1_000_002],
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"code":"1-ab","sale_id":1,"item_id":1000001,"items":[1000001,1000002]}"#
        );
    }

    #[test]
    fn purchase_shape_with_and_without_error() {
        let mut out = Vec::new();
        let mut body = PurchaseBody {
            error: None,
            message: None,
            sale_id: 2,
            user_id: 7,
            purchased: &[2_000_001],
            unavailable: &[],
        };
        write(&mut out, &body);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"sale_id":2,"user_id":7,"purchased":[2000001],"unavailable":[]}"#
        );
        out.clear();
        body.error = Some("nothing_purchased");
        body.message = Some("none");
        body.purchased = &[];
        write(&mut out, &body);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with(r#"{"error":"nothing_purchased","message":"none","#)
        );
    }

    #[test]
    fn times_and_lists() {
        assert_eq!(rfc3339(3600), "1970-01-01T01:00:00Z");
        assert_eq!(parse_id_list(""), Vec::<i64>::new());
        assert_eq!(parse_id_list("1,22,333"), vec![1, 22, 333]);
    }
}
