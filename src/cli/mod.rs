//! The command line's larger command groups, one file each; `main.rs` keeps the rest.

pub(crate) mod recipes;
pub(crate) mod workbench;
