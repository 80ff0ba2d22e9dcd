//! The one error type of the server: a kind that decides how the failure is
//! reported (status and stable code), plus an optional cause for the logs.

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
    /// Anything else that is a bug or an unexpected condition.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RedisUnavailable => "redis_unavailable",
            ErrorKind::RedisProtocol => "redis_protocol",
            ErrorKind::Postgres => "postgres",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
        }
    }
}

pub struct Error {
    kind: ErrorKind,
    context: &'static str,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, context: &'static str) -> Self {
        Error {
            kind,
            context,
            cause: None,
        }
    }

    pub fn with_cause(
        kind: ErrorKind,
        context: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            context,
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
            context: self.context,
            cause: self.cause.as_ref().map(|c| c.to_string().into()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.context)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
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
