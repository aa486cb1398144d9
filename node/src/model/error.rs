//! The one error type of the configuration model.

use std::fmt::Display;

/// Input that does not parse or breaks a rule of the model.
///
/// The message is written for a person: it names the object ("service tcp/192.0.2.1:80",
/// "vip_group web") or the field path ("services[2].reals[0].address") and says what to change.
/// Every model error is the caller's fault, so the API maps it to `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    message: String,
}

impl ModelError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// Prefixes the message with where it happened: `"{at}: {message}"`.
    #[must_use]
    pub fn at(self, at: impl Display) -> Self {
        Self {
            message: format!("{at}: {}", self.message),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Shorthand for returning a [`ModelError`] built with `format!`.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::model::ModelError::new(format!($($arg)*)))
    };
}
pub(crate) use invalid;
