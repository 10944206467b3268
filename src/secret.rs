//! A string that must never reach a log, an event, an error or an answer
//! by accident.

use std::fmt;

/// A token, client secret or API key.
///
/// `Debug` and `Display` print `***`, so a secret that slips into a log line
/// or a panic message reveals nothing. Reading the value takes an explicit
/// [`Secret::expose`], which makes every place that does so easy to audit.
/// The value is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself: call only where it is sent upstream, stored, or
    /// handed to the caller who asked for it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an absent token in some import formats).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    // Best effort: copies the allocator or a caller made are out of reach,
    // but the value does not linger in freed memory after its last owner.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("rt_very_secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "rt_very_secret");
    }
}
