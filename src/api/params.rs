//! Query-string parameters (form_urlencoded), validated into the integers
//! and codes the API takes. Pure.

use std::borrow::Cow;

/// A parameter is missing, repeated or not of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParams(pub &'static str);

/// The named parameters of a query string, each at most once.
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    pub fn parse(query: &'a str) -> Self {
        Query {
            pairs: form_urlencoded::parse(query.as_bytes()).collect(),
        }
    }

    /// The value of `name`, if given exactly once.
    fn get(&self, name: &str) -> Result<Option<&str>, InvalidParams> {
        let mut found = None;
        for (key, value) in &self.pairs {
            if key == name {
                if found.is_some() {
                    return Err(InvalidParams("a parameter is given twice"));
                }
                found = Some(value.as_ref());
            }
        }
        Ok(found)
    }

    /// A required positive 64-bit integer.
    pub fn positive_id(
        &self,
        name: &'static str,
        message: &'static str,
    ) -> Result<i64, InvalidParams> {
        match self.get(name)? {
            Some(text) => parse_positive(text).ok_or(InvalidParams(message)),
            None => Err(InvalidParams(message)),
        }
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
            Some(text) => parse_digits(text)
                .filter(|v| (min..=max).contains(v))
                .ok_or(InvalidParams(message)),
        }
    }

    /// A required text parameter.
    pub fn text(&self, name: &'static str, message: &'static str) -> Result<&str, InvalidParams> {
        self.get(name)?.ok_or(InvalidParams(message))
    }
}

/// Plain decimal digits (no sign, no spaces, no leading `+`), within i64.
pub fn parse_digits(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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
        assert_eq!(q.text("code", "bad"), Ok("12-abc"));
    }
}
