//! `cargo bench --bench generate`: prefill and decode tokens/s at batch 1 and 8 for the
//! bundled fixtures and a random Qwen2.5-0.5B-shaped model (bf16 weights), on the CPU and,
//! when an adapter exists, the GPU. Also `ponder bench generate`.

use ponder::model::{Config, LoadOpts, Model, Transformer};
use ponder::{DType, Device};

const GREEDY: ponder::bench::Sampling = ponder::bench::Sampling {
    temperature: 0.0,
    top_k: 0,
    top_p: 1.0,
};

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let mut devices = vec![Device::Cpu];
    if ponder::backend::gpu::context().is_ok() {
        devices.push(Device::Gpu);
    }
    let quick = std::env::var("PONDER_BENCH_QUICK").is_ok();
    for dev in devices {
        for name in ["qwen2-tied", "llama-gqa"] {
            let m = Model::load(
                &root.join(name),
                LoadOpts {
                    device: dev,
                    keep_16bit: true,
                    trainable: false,
                },
            )
            .unwrap();
            for b in [1, 8] {
                let s = ponder::bench::generation(&m.net, b, 64, 64, GREEDY, 1).unwrap();
                println!("{name} batch {b} on {dev}: {}", s.summary());
            }
        }
        if quick {
            continue;
        }
        let cfg = Config::from_json(
            std::path::Path::new("qwen2.5-0.5b"),
            ponder::bench::qwen25_05b_config(),
        )
        .unwrap();
        let net = Transformer::random(&cfg, dev, DType::BF16, 7).unwrap();
        for b in [1, 8] {
            let s = ponder::bench::generation(&net, b, 128, 32, GREEDY, 1).unwrap();
            println!("qwen2.5-0.5b-shaped batch {b} on {dev}: {}", s.summary());
        }
        println!(
            "peak RSS {:.0} MiB",
            ponder::bench::peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
}
