//! The FUSE driver (placeholder until it lands).

use std::path::PathBuf;

pub struct MountArgs {
    pub ring: String,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("not implemented yet")]
    Unimplemented,
}

pub fn run(_args: MountArgs) -> Result<(), MountError> {
    Err(MountError::Unimplemented)
}
