//! Training: data, losses, the reference log-prob cache, optimizer and schedules, LoRA
//! checkpoints, metrics, and the SFT and DPO trainers.

pub mod arena;
pub mod args;
pub mod checkpoint;
pub mod data;
pub mod fit;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod pack;
pub mod parquet;
pub mod refcache;
pub mod reference;
pub mod report;
pub mod step;
pub mod trainer;
