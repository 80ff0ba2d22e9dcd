//! Checkout codes: `<sale id>-<user id>-<32 hex digits>`, 128 bits from a
//! CSPRNG (rand's thread RNG: ChaCha, seeded and reseeded from the OS). The
//! sale id routes a purchase to its sale's Redis keys and the user id names
//! the user's key, so a purchase passes every key it touches to its script;
//! the random part makes the code unguessable. The user part is a claim the
//! script checks against the code's stored user: a code with another user
//! in it is unknown. A code is held inline (`Code`, a fixed-size buffer),
//! so issuing one and handing it to the writer costs no allocation.

use rand::RngExt;

const RANDOM_HEX_LEN: usize = 32;
/// The longest code: an 18-digit sale id, a 19-digit user id, two dashes
/// and the random part.
pub const MAX_CODE_LEN: usize = 18 + 1 + 19 + 1 + RANDOM_HEX_LEN;

/// A code's text, inline: at most `MAX_CODE_LEN` bytes of ASCII.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    len: u8,
    bytes: [u8; MAX_CODE_LEN],
}

impl Code {
    /// `text` as a code, if it fits (a code Redis hands back was issued by
    /// `new_code`, so it always does).
    pub fn from_text(text: &str) -> Option<Code> {
        let mut code = Code {
            len: 0,
            bytes: [0; MAX_CODE_LEN],
        };
        code.push(text.as_bytes())?;
        Some(code)
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are pushed (and ASCII digits), so the bytes are UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("a code is ASCII")
    }

    fn push(&mut self, part: &[u8]) -> Option<()> {
        let start = usize::from(self.len);
        let end = start
            .checked_add(part.len())
            .filter(|&e| e <= MAX_CODE_LEN)?;
        self.bytes[start..end].copy_from_slice(part);
        self.len = end as u8;
        Some(())
    }
}

impl std::ops::Deref for Code {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a well-formed code names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeIds {
    pub sale_id: i64,
    pub user_id: i64,
}

/// A fresh code for `user_id`'s checkout in sale `sale_id` (positive ids:
/// at most 18 and 19 digits).
pub fn new_code(sale_id: i64, user_id: i64) -> Code {
    let random: u128 = rand::rng().random();
    let mut hex = [0u8; RANDOM_HEX_LEN];
    for (i, digit) in hex.iter_mut().enumerate() {
        let nibble = (random >> (4 * (RANDOM_HEX_LEN - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    let mut code = Code {
        len: 0,
        bytes: [0; MAX_CODE_LEN],
    };
    let mut ids = itoa::Buffer::new();
    let fits = code
        .push(ids.format(sale_id).as_bytes())
        .and_then(|()| code.push(b"-"))
        .and_then(|()| code.push(ids.format(user_id).as_bytes()))
        .and_then(|()| code.push(b"-"))
        .and_then(|()| code.push(&hex));
    assert!(fits.is_some(), "sale and user ids are positive i64s");
    code
}

/// The sale and user of a well-formed code, or `None` for anything else.
pub fn parse_code(code: &str) -> Option<CodeIds> {
    let (sale, rest) = code.split_once('-')?;
    let (user, random) = rest.split_once('-')?;
    if random.len() != RANDOM_HEX_LEN
        || !random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(CodeIds {
        sale_id: canonical_id(sale, 18)?,
        user_id: canonical_id(user, 19)?,
    })
}

/// A positive integer of at most `max_digits` digits, without sign or
/// leading zero (the only way `new_code` writes one).
fn canonical_id(text: &str, max_digits: usize) -> Option<i64> {
    if text.is_empty()
        || text.len() > max_digits
        || text.starts_with('0')
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok().filter(|&id: &i64| id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(sale_id: i64, user_id: i64) -> Option<CodeIds> {
        Some(CodeIds { sale_id, user_id })
    }

    #[test]
    fn new_codes_parse_back_to_their_sale_and_user() {
        let code = new_code(123, 45);
        assert_eq!(parse_code(&code), ids(123, 45));
        assert_eq!(code.len(), "123-45-".len() + RANDOM_HEX_LEN);
        assert_eq!(parse_code(&new_code(1, i64::MAX)), ids(1, i64::MAX));
    }

    #[test]
    fn codes_differ() {
        let codes: std::collections::HashSet<_> = (0..1000).map(|_| new_code(1, 1)).collect();
        assert_eq!(codes.len(), 1000);
    }

    #[test]
    fn malformed_codes_are_rejected() {
        for bad in [
            "",
            "-",
            "--",
            "12",
            "12-",
            "12-7-",
            "12-0123456789abcdef0123456789abcdef",
            "x-7-0123456789abcdef0123456789abcdef",
            "0-7-0123456789abcdef0123456789abcdef",
            "12-0-0123456789abcdef0123456789abcdef",
            "12-07-0123456789abcdef0123456789abcdef",
            "12--7-0123456789abcdef0123456789abcdef",
            "12-+7-0123456789abcdef0123456789abcdef",
            "12-x-0123456789abcdef0123456789abcdef",
            "12-7-0123456789ABCDEF0123456789abcdef",
            "12-7-0123456789abcdef0123456789abcde",
            "12-7-0123456789abcdef0123456789abcdef0",
            "12-7-0123456789abcdef0123456789abcdeg",
            "12-7-0123456789abcdef-123456789abcdef",
            "1:2-7-0123456789abcdef0123456789abcdef",
            "99999999999999999999-7-0123456789abcdef0123456789abcdef",
            "12-9223372036854775808-0123456789abcdef0123456789abcdef",
            "12-99999999999999999999-0123456789abcdef0123456789abcdef",
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

    /// `^[1-9][0-9]{0,17}-[1-9][0-9]{0,18}-[0-9a-f]{32}$` with both ids
    /// positive i64s: a canonical sale id and user id (no sign, no leading
    /// zero), dashes, 32 lowercase hex digits.
    fn canonical(code: &str) -> Option<CodeIds> {
        let mut parts = code.splitn(3, '-');
        let (sale, user, random) = (parts.next()?, parts.next()?, parts.next()?);
        let id_ok = |text: &str, max: usize| {
            (1..=max).contains(&text.len())
                && text.bytes().all(|b| b.is_ascii_digit())
                && !text.starts_with('0')
        };
        let random_ok = random.len() == 32
            && random
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if id_ok(sale, 18) && id_ok(user, 19) && random_ok {
            Some(CodeIds {
                sale_id: sale.parse().ok()?,
                user_id: user.parse().ok()?,
            })
        } else {
            None
        }
    }

    fn near_id() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[1-9][0-9]{0,17}",
            1 => "0{1,3}[0-9]{0,5}",
            1 => "[0-9]{18,21}",
            1 => "-?[+ ]?[0-9]{0,3}",
            1 => "[ -~]{0,4}",
        ]
    }

    fn near_code() -> impl Strategy<Value = String> {
        let random = prop_oneof![
            4 => "[0-9a-f]{32}",
            1 => "[0-9a-f]{30,34}",
            1 => "[0-9a-fA-F]{32}",
            1 => "[0-9a-g-]{32}",
            1 => "\\PC{0,34}",
        ];
        (near_id(), "-|--|_|", near_id(), "-|--|_|", random)
            .prop_map(|(s, d, u, e, r)| format!("{s}{d}{u}{e}{r}"))
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
        fn new_codes_are_canonical(sale in 1i64..=999_999_999_999_999_999, user in 1i64..=i64::MAX) {
            let code = new_code(sale, user);
            let expected = Some(CodeIds { sale_id: sale, user_id: user });
            prop_assert_eq!(canonical(&code), expected);
            prop_assert_eq!(parse_code(&code), expected);
            prop_assert_eq!(
                code.len(),
                sale.to_string().len() + 1 + user.to_string().len() + 1 + RANDOM_HEX_LEN
            );
        }

        #[test]
        fn one_altered_digit_is_another_code(sale in 1i64..1_000_000, pos in 0usize..32, to in 0u8..16) {
            // Altering the random part keeps the format (so the server must
            // look it up and find nothing), and no two fresh codes collide.
            let code = new_code(sale, 7);
            let at = code.len() - RANDOM_HEX_LEN + pos;
            let mut bytes = code.as_bytes().to_vec();
            bytes[at] = b"0123456789abcdef"[to as usize];
            let altered = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(parse_code(&altered), Some(CodeIds { sale_id: sale, user_id: 7 }));
            prop_assert_ne!(new_code(sale, 7), code);
        }
    }

    #[test]
    fn leading_zeros_in_an_id_are_not_a_code() {
        // `new_code` never writes them, so such a code was never issued; it
        // should be refused as malformed (400), like every other non-code.
        assert_eq!(parse_code("012-7-0123456789abcdef0123456789abcdef"), None);
        assert_eq!(parse_code("12-07-0123456789abcdef0123456789abcdef"), None);
    }
}
