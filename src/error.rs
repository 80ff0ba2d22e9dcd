//! The one error type of the server: a kind that decides how the failure is
//! reported (status and stable code), plus an optional cause for the logs.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, in terms a client or an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Redis could not be reached in time, or the circuit breaker is open.
    RedisUnavailable,
    /// Redis answered something the server does not understand.
    RedisProtocol,
    /// Postgres failed (writer, rotator, migrations).
    Postgres,
    /// The writer queue is full; the request is shed.
    Overloaded,
    /// Configuration or start-up problem.
    Config,
    /// What was asked for does not exist (a sale to check, say).
    NotFound,
    /// Anything else that is a bug or an unexpected condition.
    Internal,
}

impl ErrorKind {
    /// What failed, in words, as an error message starts.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RedisUnavailable => "redis unavailable",
            ErrorKind::RedisProtocol => "redis protocol error",
            ErrorKind::Postgres => "postgres error",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Config => "configuration error",
            ErrorKind::NotFound => "not found",
            ErrorKind::Internal => "internal error",
        }
    }
}

pub struct Error {
    kind: ErrorKind,
    context: Cow<'static, str>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: None,
        }
    }

    pub fn with_cause(
        kind: ErrorKind,
        context: impl Into<Cow<'static, str>>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: Some(cause.into()),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The same error for one more party (every call of a failed batch):
    /// kind and context kept, the cause carried as its text.
    pub fn shared(&self) -> Error {
        Error {
            kind: self.kind,
            context: self.context.clone(),
            cause: self.cause.as_ref().map(|c| c.to_string().into()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.context)?;
        // The cause and the causes behind it: some errors (postgres's "db
        // error") say what went wrong only in their source. A source whose
        // text its error already showed is not repeated.
        let mut shown = String::new();
        let mut next = self
            .cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static));
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown.push_str(&text);
            }
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::with_cause(ErrorKind::Postgres, "postgres", e)
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Self {
        Error::with_cause(ErrorKind::Postgres, "postgres pool", e)
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::with_cause(ErrorKind::RedisUnavailable, "redis", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("db error")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn display_says_what_failed_and_every_cause_once() {
        let io = || {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "relation \"sales\" does not exist",
            )
        };
        let e = Error::with_cause(ErrorKind::Postgres, "read the sale", Outer(io()));
        assert_eq!(
            e.to_string(),
            "postgres error: read the sale: db error: relation \"sales\" does not exist"
        );
        let e = Error::with_cause(
            ErrorKind::RedisUnavailable,
            format!("redis at {}", "h:1"),
            io(),
        );
        assert_eq!(
            e.to_string(),
            "redis unavailable: redis at h:1: relation \"sales\" does not exist"
        );
        assert_eq!(
            Error::new(ErrorKind::NotFound, "no sale 7").to_string(),
            "not found: no sale 7"
        );
    }
}
