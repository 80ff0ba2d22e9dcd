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
    if sale.is_empty()
        || sale.len() > 18
        || sale.starts_with('0')
        || !sale.bytes().all(|b| b.is_ascii_digit())
    {
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

/// Bounded fuzzing of `parse_code` (proptest): it never panics and accepts
/// exactly the format `new_code` produces.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// `^[1-9][0-9]{0,17}-[0-9a-f]{32}$`: a canonical sale id (no sign, no
    /// leading zero, at most 18 digits), a dash, 32 lowercase hex digits.
    fn canonical(code: &str) -> Option<i64> {
        let (sale, random) = code.split_once('-')?;
        let sale_ok = (1..=18).contains(&sale.len())
            && sale.bytes().all(|b| b.is_ascii_digit())
            && !sale.starts_with('0');
        let random_ok = random.len() == 32
            && random
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if sale_ok && random_ok {
            sale.parse().ok()
        } else {
            None
        }
    }

    fn near_code() -> impl Strategy<Value = String> {
        let sale = prop_oneof![
            4 => "[1-9][0-9]{0,17}",
            1 => "0{1,3}[0-9]{0,5}",
            1 => "[0-9]{18,21}",
            1 => "-?[+ ]?[0-9]{0,3}",
            1 => "[ -~]{0,4}",
        ];
        let random = prop_oneof![
            4 => "[0-9a-f]{32}",
            1 => "[0-9a-f]{30,34}",
            1 => "[0-9a-fA-F]{32}",
            1 => "[0-9a-g-]{32}",
            1 => "\\PC{0,34}",
        ];
        (sale, "-|--|_|", random).prop_map(|(s, d, r)| format!("{s}{d}{r}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(2000)
        })]

        #[test]
        fn parse_code_accepts_exactly_canonical_codes(code in near_code()) {
            prop_assert_eq!(parse_code(&code), canonical(&code), "{:?}", code);
        }

        #[test]
        fn arbitrary_strings_never_panic(code in "\\PC{0,60}") {
            prop_assert_eq!(parse_code(&code), canonical(&code), "{:?}", code);
        }

        #[test]
        fn new_codes_are_canonical(sale in 1i64..=999_999_999_999_999_999) {
            let code = new_code(sale);
            prop_assert_eq!(canonical(&code), Some(sale));
            prop_assert_eq!(parse_code(&code), Some(sale));
            prop_assert_eq!(code.len(), sale.to_string().len() + 1 + RANDOM_HEX_LEN);
        }

        #[test]
        fn one_altered_digit_is_another_code(sale in 1i64..1_000_000, pos in 0usize..32, to in 0u8..16) {
            // Altering the random part keeps the format (so the server must
            // look it up and find nothing), and no two fresh codes collide.
            let code = new_code(sale);
            let at = code.len() - RANDOM_HEX_LEN + pos;
            let mut bytes = code.clone().into_bytes();
            bytes[at] = b"0123456789abcdef"[to as usize];
            let altered = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(parse_code(&altered), Some(sale));
            prop_assert_ne!(new_code(sale), code);
        }
    }

    #[test]
    fn leading_zeros_in_the_sale_id_are_not_a_code() {
        // `new_code` never writes them, so such a code was never issued; it
        // should be refused as malformed (400), like every other non-code.
        assert_eq!(parse_code("012-0123456789abcdef0123456789abcdef"), None);
    }
}
