//! The Lua scripts of lua/, embedded at build time, with their SHA1 for
//! EVALSHA. Loaded on every (re)connect; a NOSCRIPT reply (Redis restarted
//! or flushed its script cache) makes the client resend the body with EVAL.

/// One Lua script and its digest.
pub struct Script {
    pub name: &'static str,
    pub body: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(name: &'static str, body: &'static str) -> Self {
        Script {
            name,
            body,
            sha: redis::Script::new(body).get_hash().to_string(),
        }
    }
}

/// lua/close_sale.lua, which the writer runs on its own blocking connection.
pub const CLOSE_SALE: &str = include_str!("../../lua/close_sale.lua");

/// Every script the server runs.
pub struct Scripts {
    pub checkout: Script,
    pub purchase: Script,
    pub init_sale: Script,
    pub close_sale: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            checkout: Script::new("checkout", include_str!("../../lua/checkout.lua")),
            purchase: Script::new("purchase", include_str!("../../lua/purchase.lua")),
            init_sale: Script::new("init_sale", include_str!("../../lua/init_sale.lua")),
            close_sale: Script::new("close_sale", CLOSE_SALE),
        }
    }

    pub fn all(&self) -> [&Script; 4] {
        [
            &self.checkout,
            &self.purchase,
            &self.init_sale,
            &self.close_sale,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha1_hex() {
        for script in Scripts::new().all() {
            assert_eq!(script.sha.len(), 40, "{}", script.name);
            assert!(script.sha.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
