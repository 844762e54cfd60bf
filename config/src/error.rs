//! What a configuration can be wrong with: every problem, each naming its field, for the file.
//! Its own module so that loading and validation both use it without importing each other.

use std::fmt;
use std::path::PathBuf;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `watch[2].type` or `lock.session_ttl`; empty when the file as a whole is at fault.
    pub field: String,
    pub reason: String,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.field.is_empty() {
                write!(f, "{}: {}", self.file.display(), e.reason)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), e.field, e.reason)?;
            }
        }
        Ok(())
    }
}
