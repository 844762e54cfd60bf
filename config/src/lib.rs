//! rehydrator's configuration, in three stages (as zincati does it): `raw` is the TOML as
//! written, every field optional and unknown fields refused; `validate` turns it into typed
//! `Settings`, collecting every error with the field at fault; `load` layers the file and the
//! `REHYDRATOR_*` environment. The binary's `run` and `check-config` are its callers.

pub mod error;
pub mod go_duration;
pub mod load;
pub mod raw;
pub mod settings;
mod suggest;
pub mod validate;

pub use error::{ConfigError, FieldError};
pub use load::{load, load_text, load_with_env};
pub use settings::*;
pub use validate::{consul_from_env, normalize_address};
