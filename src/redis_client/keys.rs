//! Redis key names of a sale, built from validated integers (and a validated
//! code) only. Every key of sale S carries the hash tag `{sale:S}`, so one
//! sale lives in one Redis Cluster slot. The layout is described in
//! lua/checkout.lua.

pub fn meta(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:meta")
}

pub fn sold(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:sold")
}

pub fn user(sale_id: i64, user_id: i64) -> String {
    format!("{{sale:{sale_id}}}:user:{user_id}")
}

/// Prefix of user keys, for scripts that find the user from a code.
pub fn user_prefix(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:user:")
}

/// The rotator's index of prepared sales: a hash from a sale's start (Unix
/// s) to `id,ends_at,items,limit`, so that a server starting while Postgres
/// is down can still find the sale it should serve. Not a sale key (no hash
/// tag): only the rotator uses it, never a script.
pub const SALE_INDEX: &str = "flashsale:sales";

/// Key of a code; `code` must have passed `sale::code::parse_code`.
pub fn code(sale_id: i64, code: &str) -> String {
    format!("{{sale:{sale_id}}}:code:{code}")
}

/// Prefix of code keys, for scripts that read the code from its key.
pub fn code_prefix(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:code:")
}

pub fn outbox(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:outbox")
}

/// Where outbox entries that can never be recorded are moved (a stream of
/// the entry's fields plus `reason` and `outbox_id`), for an operator to
/// inspect; the server never deletes it.
pub fn outbox_dead_letter(sale_id: i64) -> String {
    format!("{{sale:{sale_id}}}:outbox:dead")
}

/// The set of sale ids that have (or had) a dead-letter stream, so that the
/// writer can count dead letters without scanning the keyspace. Not a sale
/// key (no hash tag): only the writer uses it, never a script.
pub const DEAD_LETTER_INDEX: &str = "flashsale:dead-letters";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_sale_hash_tag() {
        for key in [meta(5), sold(5), user(5, 9), code(5, "5-ab"), outbox(5)] {
            assert!(key.starts_with("{sale:5}:"), "{key}");
        }
        assert_eq!(user(5, 9), format!("{}9", user_prefix(5)));
        assert_eq!(code(5, "5-ab"), format!("{}5-ab", code_prefix(5)));
    }
}
