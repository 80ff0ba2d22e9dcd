//! The JSON shapes of the responses (docs/api.md), serialized with serde straight into
//! the connection's body buffer by `http::response::write_json`; the checkout's
//! 200 is written directly (`CheckoutBody::write`), the same bytes.

use serde::Serialize;

#[derive(Serialize)]
pub struct CheckoutBody<'a> {
    pub code: &'a str,
    pub sale_id: i64,
    pub item_id: i64,
    pub items: IdList<'a>,
}

impl CheckoutBody<'_> {
    /// Appends the body to `out`: the bytes `write_json` writes for it
    /// (tested), without serde's per-field work on the most frequent 200.
    /// The code still goes through simd-json's string writer (escaping);
    /// the names and the numbers need none.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"code\":");
        crate::http::response::write_json(out, self.code);
        out.extend_from_slice(b",\"sale_id\":");
        out.extend_from_slice(num.format(self.sale_id).as_bytes());
        out.extend_from_slice(b",\"item_id\":");
        out.extend_from_slice(num.format(self.item_id).as_bytes());
        out.extend_from_slice(b",\"items\":[");
        for (i, id) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(num.format(id).as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
}

#[derive(Serialize)]
pub struct PurchaseBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    pub sale_id: i64,
    pub user_id: i64,
    pub purchased: IdList<'a>,
    pub unavailable: IdList<'a>,
}

/// Item ids as a Lua reply lists them, comma-separated, serialized as a JSON
/// array of numbers straight from the text (no list is built); a part that
/// is not a number is left out.
#[derive(Debug, Clone, Copy)]
pub struct IdList<'a>(pub &'a str);

impl<'a> IdList<'a> {
    pub fn iter(self) -> impl Iterator<Item = i64> + 'a {
        // Cut at the byte: ',' is ASCII (so every cut is on a char
        // boundary), and a byte scan costs less than `str::split`'s char
        // searcher on these short lists.
        let mut rest = Some(self.0);
        std::iter::from_fn(move || {
            loop {
                let text = rest?;
                let (part, after) = match text.bytes().position(|b| b == b',') {
                    Some(i) => (&text[..i], Some(&text[i + 1..])),
                    None => (text, None),
                };
                rest = after;
                if let Ok(id) = part.parse() {
                    return Some(id);
                }
            }
        })
    }
}

impl Serialize for IdList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
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
                items: IdList("1000001,1000002"),
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
            purchased: IdList("2000001"),
            unavailable: IdList(""),
        };
        write(&mut out, &body);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"sale_id":2,"user_id":7,"purchased":[2000001],"unavailable":[]}"#
        );
        out.clear();
        body.error = Some("nothing_purchased");
        body.message = Some("none");
        body.purchased = IdList("");
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
        let ids = |csv| IdList(csv).iter().collect::<Vec<_>>();
        assert_eq!(ids(""), Vec::<i64>::new());
        assert_eq!(ids("1,22,333"), vec![1, 22, 333]);
        // Empty parts and parts that are not numbers are left out.
        assert_eq!(ids(",1,,22,x,"), vec![1, 22]);
        assert_eq!(ids("7"), vec![7]);
        let mut out = Vec::new();
        write(&mut out, &IdList("1,x,22"));
        assert_eq!(out, b"[1,22]");
    }
}

/// The checkout body written directly is the body serde writes.
#[cfg(test)]
mod checkout_body {
    use proptest::prelude::*;

    use super::*;

    fn both(body: &CheckoutBody<'_>) -> (Vec<u8>, Vec<u8>) {
        let mut serde = Vec::new();
        crate::http::response::write_json(&mut serde, body);
        let mut direct = Vec::new();
        body.write(&mut direct);
        (serde, direct)
    }

    #[test]
    fn a_checkout_body_is_the_serde_body() {
        let body = CheckoutBody {
            code: "7-0123456789abcdef0123456789abcdef",
            sale_id: 7,
            item_id: 7_000_042,
            items: IdList("7000001,7000042"),
        };
        let (serde, direct) = both(&body);
        assert_eq!(
            String::from_utf8(direct.clone()).unwrap(),
            r#"{"code":"7-0123456789abcdef0123456789abcdef","sale_id":7,"item_id":7000042,"items":[7000001,7000042]}"#
        );
        assert_eq!(direct, serde);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(2000)
        })]

        #[test]
        fn any_checkout_body_is_the_serde_body(
            code in "\\PC{0,40}|[\"\\\\\\x00-\\x1f]{0,5}",
            sale_id in any::<i64>(),
            item_id in any::<i64>(),
            items in "[0-9,x-]{0,40}",
        ) {
            let body = CheckoutBody { code: &code, sale_id, item_id, items: IdList(&items) };
            let (serde, direct) = both(&body);
            prop_assert_eq!(direct, serde);
        }
    }
}
