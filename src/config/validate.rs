//! raw -> typed (to be written).
use super::Config;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration")]
pub struct ConfigError {
    /// Every problem found, each starting with its key path.
    pub problems: Vec<String>,
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let _ = path;
    todo!()
}

pub fn parse(yaml: &str) -> Result<Config, ConfigError> {
    let _ = yaml;
    todo!()
}
