//! Redis key names, built from validated integers only, behind the deployment's key prefix (`--redis-key-prefix`, possibly
//! empty), so that several deployments can share one Redis. Every key of sale
//! S is `<prefix>{sale:S}:...`: the prefix comes before the hash tag, so it
//! starts every key while the slot of a sale's keys depends on the sale
//! alone, and one sale lives in one Redis Cluster slot. The layout is
//! described in lua/checkout.lua.

/// Why a key prefix is refused.
pub const PREFIX_BRACES: &str = "may not contain '{' or '}': Redis Cluster hashes a key from its first '{' to the next '}', so a brace in the prefix would move every sale into one slot";

/// Checks a key prefix: anything but braces.
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.contains(['{', '}']) {
        Err(PREFIX_BRACES)
    } else {
        Ok(())
    }
}

/// The hash tag of the deployment's keys that belong to no sale: on a Redis
/// Cluster they share one slot, apart from every sale's.
const GLOBAL_TAG: &str = "{flashsale}";

/// The key names of one deployment; built once from the configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    sale_index: String,
    dead_letter_index: String,
}

/// The keys of a deployment without a prefix.
impl Default for Keys {
    fn default() -> Self {
        Keys::new("").expect("the empty prefix is valid")
    }
}

impl Keys {
    /// Keys behind `prefix`, which must have passed `check_prefix`.
    pub fn new(prefix: &str) -> Result<Keys, &'static str> {
        check_prefix(prefix)?;
        Ok(Keys {
            prefix: prefix.to_string(),
            sale_index: format!("{prefix}{GLOBAL_TAG}:sales"),
            dead_letter_index: format!("{prefix}{GLOBAL_TAG}:dead-letters"),
        })
    }

    /// What every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis Cluster hash slot of every key of sale `sale_id` (the slot
    /// of its hash tag `sale:S`).
    pub fn sale_slot(sale_id: i64) -> u16 {
        // "sale:" and the id's digits, on the stack (this runs per call).
        let mut tag = [0u8; 32];
        tag[..5].copy_from_slice(b"sale:");
        let mut digits = [0u8; 20];
        let mut n = sale_id.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut end = 5;
        if sale_id < 0 {
            tag[end] = b'-';
            end += 1;
        }
        for &d in digits[..len].iter().rev() {
            tag[end] = d;
            end += 1;
        }
        super::cluster::key_slot(&tag[..end])
    }

    pub fn meta(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:meta", self.prefix)
    }

    pub fn sold(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:sold", self.prefix)
    }

    /// The sale's users: field = user id, value = the user's bought count
    /// and open checkout (lua/checkout.lua says the format).
    pub fn users(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:users", self.prefix)
    }

    /// The sale's purchased codes: field = code, value = the stored
    /// purchase outcome a retry replays (lua/checkout.lua says the format).
    pub fn codes(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:codes", self.prefix)
    }

    pub fn outbox(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:outbox", self.prefix)
    }

    /// Where outbox entries that can never be recorded are moved (a stream
    /// of the entry's fields plus `reason` and `outbox_id`), for an operator
    /// to inspect; the server never deletes it.
    pub fn outbox_dead_letter(&self, sale_id: i64) -> String {
        format!("{}{{sale:{sale_id}}}:outbox:dead", self.prefix)
    }

    /// The rotator's index of prepared sales: a hash from a sale's start
    /// (Unix s) to `id,ends_at,items,limit`, so that a server starting while
    /// Postgres is down can still find the sale it should serve. Not a sale
    /// key (the deployment's own `{flashsale}` tag): only the rotator uses
    /// it, with single-key commands, never a script.
    pub fn sale_index(&self) -> &str {
        &self.sale_index
    }

    /// The set of sale ids that have (or had) a dead-letter stream, so that
    /// the writer can count dead letters without scanning the keyspace. Not
    /// a sale key (the deployment's own `{flashsale}` tag): only the writer
    /// uses it, with single-key commands, never a script.
    pub fn dead_letter_index(&self) -> &str {
        &self.dead_letter_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_sale_hash_tag() {
        let keys = Keys::default();
        for key in [
            keys.meta(5),
            keys.sold(5),
            keys.users(5),
            keys.codes(5),
            keys.outbox(5),
            keys.outbox_dead_letter(5),
        ] {
            assert!(key.starts_with("{sale:5}:"), "{key}");
        }
        assert_eq!(keys.sale_index(), "{flashsale}:sales");
        assert_eq!(keys.dead_letter_index(), "{flashsale}:dead-letters");
    }

    #[test]
    fn the_prefix_starts_every_key_before_the_hash_tag() {
        let keys = Keys::new("shop-a:").unwrap();
        for key in [
            keys.meta(5),
            keys.sold(5),
            keys.users(5),
            keys.codes(5),
            keys.outbox(5),
            keys.outbox_dead_letter(5),
        ] {
            assert!(key.starts_with("shop-a:{sale:5}:"), "{key}");
        }
        assert_eq!(keys.sale_index(), "shop-a:{flashsale}:sales");
        assert_eq!(keys.dead_letter_index(), "shop-a:{flashsale}:dead-letters");
    }

    #[test]
    fn a_sales_slot_is_its_keys_slot() {
        let keys = Keys::new("shop-a:").unwrap();
        for sale in [1, 42, 493_000, i64::MAX, 0, -7, i64::MIN] {
            let slot = Keys::sale_slot(sale);
            for key in [keys.meta(sale), keys.users(sale), keys.outbox(sale)] {
                assert_eq!(
                    super::super::cluster::key_slot(key.as_bytes()),
                    slot,
                    "{key}"
                );
            }
        }
        assert_eq!(Keys::sale_slot(1), 4774);
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        for bad in ["{", "}", "a{b", "x}", "{t}:"] {
            assert_eq!(Keys::new(bad).err(), Some(PREFIX_BRACES), "{bad}");
        }
        assert!(Keys::new("").is_ok());
        assert!(Keys::new("a:b*c?[d]\\e").is_ok());
    }
}
