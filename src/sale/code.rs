//! Checkout codes: `<sale id>-<32 hex digits>`, 128 bits from a CSPRNG
//! (rand's thread RNG: ChaCha, seeded and reseeded from the OS). The sale id
//! prefix routes a purchase to its sale's Redis keys; the random part makes
//! the code unguessable.

use rand::RngExt;

const RANDOM_HEX_LEN: usize = 32;

/// A fresh code for `sale_id`.
pub fn new_code(sale_id: i64) -> String {
    let random: u128 = rand::rng().random();
    format!("{sale_id}-{random:032x}")
}

/// The sale id of a well-formed code, or `None` for anything else.
pub fn parse_code(code: &str) -> Option<i64> {
    let (sale, random) = code.split_once('-')?;
    if sale.is_empty() || sale.len() > 18 || !sale.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if random.len() != RANDOM_HEX_LEN
        || !random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let sale_id: i64 = sale.parse().ok()?;
    (sale_id > 0).then_some(sale_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_codes_parse_back_to_their_sale() {
        let code = new_code(123);
        assert_eq!(parse_code(&code), Some(123));
        assert_eq!(code.len(), "123-".len() + RANDOM_HEX_LEN);
    }

    #[test]
    fn codes_differ() {
        let codes: std::collections::HashSet<_> = (0..1000).map(|_| new_code(1)).collect();
        assert_eq!(codes.len(), 1000);
    }

    #[test]
    fn malformed_codes_are_rejected() {
        for bad in [
            "",
            "-",
            "12",
            "12-",
            "x-0123456789abcdef0123456789abcdef",
            "0-0123456789abcdef0123456789abcdef",
            "12-0123456789ABCDEF0123456789abcdef",
            "12-0123456789abcdef0123456789abcde",
            "12-0123456789abcdef0123456789abcdef0",
            "12-0123456789abcdef0123456789abcdeg",
            "1:2-0123456789abcdef0123456789abcdef",
            "99999999999999999999-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parse_code(bad), None, "{bad:?}");
        }
    }
}
