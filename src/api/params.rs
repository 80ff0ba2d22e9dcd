//! Query-string parameters (form_urlencoded), validated into the integers
//! and codes the API takes. Pure.

use std::borrow::Cow;

/// A parameter is missing, repeated or not of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParams(pub &'static str);

/// The named parameters of a query string, each at most once. Reads the
/// string afresh for each parameter asked for instead of collecting the
/// pairs, so a request's parameters cost no allocation (a value is copied
/// only when it is percent-encoded), and a query without '%' or '+' is only
/// split, not decoded: by a byte scan (`Pairs::Plain`), which for the
/// API's short queries costs a fraction of `str::split`'s char searcher.
pub struct Query<'a> {
    query: &'a str,
    /// No '%' or '+': decoding changes nothing, so the pairs are slices of
    /// the query (the usual case: ids and codes).
    plain: bool,
}

impl<'a> Query<'a> {
    pub fn parse(query: &'a str) -> Self {
        let plain = !query.bytes().any(|b| b == b'%' || b == b'+');
        Query { query, plain }
    }

    fn pairs(&self) -> Pairs<'a> {
        if self.plain {
            Pairs::Plain(self.query)
        } else {
            Pairs::Encoded(form_urlencoded::parse(self.query.as_bytes()))
        }
    }

    /// Whether any of `names` is given (once or more).
    pub fn has_any(&self, names: &[&str]) -> bool {
        self.pairs().any(|(key, _)| names.contains(&key.as_ref()))
    }

    /// The value of `name`, if given exactly once.
    fn get(&self, name: &str) -> Result<Option<Cow<'a, str>>, InvalidParams> {
        let mut found = None;
        for (key, value) in self.pairs() {
            if key == name {
                if found.is_some() {
                    return Err(InvalidParams("a parameter is given twice"));
                }
                found = Some(value);
            }
        }
        Ok(found)
    }

    /// A required positive 64-bit integer: the one-name reading that
    /// `positive_ids` (what the routes call) is checked against.
    #[cfg(test)]
    pub fn positive_id(
        &self,
        name: &'static str,
        message: &'static str,
    ) -> Result<i64, InvalidParams> {
        match self.get(name)? {
            Some(text) => parse_positive(&text).ok_or(InvalidParams(message)),
            None => Err(InvalidParams(message)),
        }
    }

    /// Required positive 64-bit integers, read in one pass over the query:
    /// the same answers (and, of several bad ones, the same first error) as
    /// `positive_id` for each name in turn.
    pub fn positive_ids<const N: usize>(
        &self,
        wanted: [(&'static str, &'static str); N],
    ) -> Result<[i64; N], InvalidParams> {
        let mut found: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
        let mut twice = [false; N];
        for (key, value) in self.pairs() {
            if let Some(i) = wanted.iter().position(|(name, _)| *name == key) {
                if found[i].is_some() {
                    twice[i] = true;
                } else {
                    found[i] = Some(value);
                }
            }
        }
        let mut ids = [0; N];
        for (i, (_, message)) in wanted.iter().enumerate() {
            if twice[i] {
                return Err(InvalidParams("a parameter is given twice"));
            }
            ids[i] = found[i]
                .as_deref()
                .and_then(parse_positive)
                .ok_or(InvalidParams(message))?;
        }
        Ok(ids)
    }

    /// An optional integer in `min..=max`, `default` when absent.
    pub fn bounded(
        &self,
        name: &'static str,
        default: i64,
        min: i64,
        max: i64,
        message: &'static str,
    ) -> Result<i64, InvalidParams> {
        match self.get(name)? {
            None => Ok(default),
            Some(text) => parse_digits(&text)
                .filter(|v| (min..=max).contains(v))
                .ok_or(InvalidParams(message)),
        }
    }

    /// A required text parameter.
    pub fn text(
        &self,
        name: &'static str,
        message: &'static str,
    ) -> Result<Cow<'a, str>, InvalidParams> {
        self.get(name)?.ok_or(InvalidParams(message))
    }
}

/// The `name=value` pairs of a query, as `form_urlencoded::parse` reads
/// them (empty pairs skipped, a pair without '=' has an empty value).
enum Pairs<'a> {
    /// What is left of a query without '%' or '+'.
    Plain(&'a str),
    Encoded(form_urlencoded::Parse<'a>),
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Pairs::Plain(rest) => loop {
                if rest.is_empty() {
                    return None;
                }
                // '&' and '=' are ASCII, so every cut is on a char boundary.
                let (pair, after) = match rest.bytes().position(|b| b == b'&') {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => (*rest, ""),
                };
                *rest = after;
                if pair.is_empty() {
                    continue;
                }
                let (name, value) = match pair.bytes().position(|b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, ""),
                };
                return Some((Cow::Borrowed(name), Cow::Borrowed(value)));
            },
            Pairs::Encoded(parse) => parse.next(),
        }
    }
}

/// Plain decimal digits (no sign, no spaces, no leading `+`), within i64.
pub fn parse_digits(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.bytes().try_fold(0i64, |n, b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

pub fn parse_positive(text: &str) -> Option<i64> {
    parse_digits(text).filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_ids() {
        let q = Query::parse("user_id=42&id=1000001");
        assert_eq!(q.positive_id("user_id", "bad"), Ok(42));
        assert_eq!(q.positive_id("id", "bad"), Ok(1_000_001));
        assert!(q.positive_id("missing", "bad").is_err());
        for bad in [
            "user_id=0",
            "user_id=-1",
            "user_id=abc",
            "user_id=",
            "user_id=+1",
            "user_id=1.5",
            "user_id=99999999999999999999",
            "user_id=1&user_id=2",
            "user_id=%201",
        ] {
            assert!(
                Query::parse(bad).positive_id("user_id", "bad").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bounded_defaults_and_limits() {
        let q = Query::parse("limit=1000&offset=0");
        assert_eq!(q.bounded("limit", 100, 1, 1000, "bad"), Ok(1000));
        assert_eq!(q.bounded("offset", 0, 0, i64::MAX, "bad"), Ok(0));
        assert_eq!(
            Query::parse("").bounded("limit", 100, 1, 1000, "bad"),
            Ok(100)
        );
        assert!(
            Query::parse("limit=1001")
                .bounded("limit", 100, 1, 1000, "bad")
                .is_err()
        );
        assert!(
            Query::parse("limit=0")
                .bounded("limit", 100, 1, 1000, "bad")
                .is_err()
        );
    }

    #[test]
    fn text_is_percent_decoded() {
        let q = Query::parse("code=12-ab%63");
        assert_eq!(q.text("code", "bad").as_deref(), Ok("12-abc"));
    }
}

/// Bounded fuzzing of query parsing (proptest): no input panics, and what
/// is accepted is exactly what the API may use.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 6] = ["user_id", "id", "code", "limit", "offset", "x"];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[0-9]{1,25}",
            1 => "-?[0-9]{1,5}",
            1 => "0+[0-9]{0,3}",
            1 => "%[0-9A-Fa-f]{2}[0-9]{0,3}|[0-9]{1,3}%0[dD]%0[aA]FLUSHALL|1;DROP TABLE users|\\+1|1e3|%2B1",
            2 => "[ -~]{0,20}",
            1 => "\\PC{0,10}",
            1 => Just(i64::MAX.to_string()),
            1 => Just("9223372036854775808".to_string()),
        ]
    }

    /// `name=value` pairs joined by `&`, with names that the API reads.
    fn query() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::collection::vec((0..NAMES.len(), value(), "[=&;]?"), 0..5).prop_map(
                |pairs| {
                    pairs
                        .iter()
                        .map(|(n, v, sep)| format!("{}={v}{sep}", NAMES[*n]))
                        .collect::<Vec<_>>()
                        .join("&")
                }
            ),
            1 => "\\PC{0,40}",
            1 => proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    fn check(q: &str) -> Result<(), TestCaseError> {
        let query = Query::parse(q);
        // The plain path reads exactly the pairs form_urlencoded reads.
        prop_assert_eq!(
            query.pairs().collect::<Vec<_>>(),
            form_urlencoded::parse(q.as_bytes()).collect::<Vec<_>>()
        );
        // Several ids in one pass: what one call per name answers, in turn.
        for (a, b) in [("user_id", "id"), ("id", "user_id"), ("code", "x")] {
            let one_by_one = query
                .positive_id(a, "bad a")
                .and_then(|x| Ok([x, query.positive_id(b, "bad b")?]));
            prop_assert_eq!(query.positive_ids([(a, "bad a"), (b, "bad b")]), one_by_one);
        }
        for name in NAMES {
            if let Ok(id) = query.positive_id(name, "bad") {
                prop_assert!(id > 0);
                prop_assert_eq!(parse_positive(&id.to_string()), Some(id));
                // The accepted text was plain digits naming that number.
                let raw = query.text(name, "bad").expect("accepted, so present once");
                prop_assert!(raw.bytes().all(|b| b.is_ascii_digit()), "{:?}", raw);
                prop_assert_eq!(raw.trim_start_matches('0'), id.to_string());
            }
            if let Ok(v) = query.bounded(name, 100, 1, 1000, "bad") {
                prop_assert!((1..=1000).contains(&v));
            }
            if let Ok(v) = query.bounded(name, 0, 0, i64::MAX, "bad") {
                prop_assert!(v >= 0);
            }
            // A parameter given twice is refused by every accessor.
            let given = form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == name)
                .count();
            if given > 1 {
                prop_assert!(query.text(name, "bad").is_err());
                prop_assert!(query.positive_id(name, "bad").is_err());
                prop_assert!(query.bounded(name, 1, 0, 10, "bad").is_err());
            } else if given == 0 {
                prop_assert!(query.text(name, "bad").is_err());
                prop_assert_eq!(query.bounded(name, 7, 0, 10, "bad"), Ok(7));
            } else {
                prop_assert!(query.text(name, "bad").is_ok());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(2000)
        })]

        #[test]
        fn arbitrary_queries_never_panic(q in query()) {
            check(&q)?;
        }

        #[test]
        fn arbitrary_strings_never_panic(q in "\\PC{0,60}") {
            check(&q)?;
        }

        #[test]
        fn numbers_are_accepted_iff_positive_i64(n in any::<u64>(), zeros in 0usize..3) {
            let text = format!("{}{n}", "0".repeat(zeros));
            let q = format!("user_id={text}");
            let got = Query::parse(&q).positive_id("user_id", "bad");
            let fits = n >= 1 && n <= i64::MAX as u64 && text.len() <= 19;
            if fits {
                prop_assert_eq!(got, Ok(n as i64));
            } else {
                prop_assert!(got.is_err(), "{} accepted as {:?}", q, got);
            }
            // Negative numbers never pass.
            let neg = format!("user_id=-{n}");
            prop_assert!(Query::parse(&neg).positive_id("user_id", "bad").is_err());
        }
    }
}
