//! `cargo bench --bench dpo`: tokens/s and peak memory of a DPO step on the tiny fixture,
//! with the cached reference and with a live reference model. Peak memory is the
//! process's high-water mark so far, so the cached case runs first. The Qwen2.5-0.5B-shaped
//! figures come from `ponder bench dpo --qwen-0.5b [--no-ref-cache]` (one process each).

use ponder::model::{LoadOpts, Model};
use ponder::Device;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/qwen2-tied");
    let mut devices = vec![Device::Cpu];
    if ponder::backend::gpu::context().is_ok() {
        devices.push(Device::Gpu);
    }
    for dev in devices {
        for live in [false, true] {
            let policy = Model::load(
                &dir,
                LoadOpts {
                    device: dev,
                    keep_16bit: false,
                    trainable: true,
                },
            )
            .unwrap()
            .net;
            let reference = live.then(|| {
                Model::load(
                    &dir,
                    LoadOpts {
                        device: dev,
                        keep_16bit: true,
                        trainable: false,
                    },
                )
                .unwrap()
                .net
            });
            let shape = ponder::bench::PairShape {
                pairs: 4,
                prompt_len: 32,
                chosen: (32, 32),
                rejected: (32, 32),
            };
            let data = ponder::bench::synthetic_pairs(shape, policy.cfg.vocab_size).unwrap();
            let r = ponder::bench::dpo_step(policy, reference, &data, 9).unwrap();
            println!(
                "dpo step on {dev} (tiny fixture), reference {}: median {:.4}s, {:.0} tokens/s, peak RSS {:.0} MiB",
                if live { "live" } else { "cached" },
                r.median_step_s,
                r.tokens_per_step as f64 / r.median_step_s,
                r.peak_rss_mib
            );
        }
    }
}
