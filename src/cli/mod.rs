//! The command line's commands, one file per command or group; `main.rs` keeps the parser
//! and the dispatch. The helpers below are shared by several commands.

pub(crate) mod bench;
pub(crate) mod info;
pub(crate) mod model;
pub(crate) mod recipes;
pub(crate) mod train;
pub(crate) mod workbench;

use clap::ValueEnum;
use ponder::model::LoadOpts;
use ponder::{Device, Result};

/// How `generate` and `eval` print their results.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

/// The device a `--device` flag names; without one, `$PONDER_DEVICE`, else auto.
pub(crate) fn device(s: Option<String>) -> Result<Device> {
    match s {
        Some(s) => Device::parse(&s),
        None => Device::from_env(),
    }
}

/// Load options for a model that is only run, never trained (16-bit weights stay 16-bit).
pub(crate) fn frozen(dev: Device) -> LoadOpts {
    LoadOpts {
        device: dev,
        keep_16bit: true,
        trainable: false,
    }
}
