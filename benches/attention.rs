//! `cargo bench --bench attention`: fused causal attention forward and backward at T=512
//! and T=2048 (Qwen2.5-0.5B-like heads: 14 query heads, 2 kv heads, head dim 64).

fn main() {
    let quick = std::env::var("PONDER_BENCH_QUICK").is_ok();
    let ts: &[usize] = if quick { &[128] } else { &[512, 2048] };
    let mut devices = vec![ponder::Device::Cpu];
    if ponder::backend::gpu::context().is_ok() {
        devices.push(ponder::Device::Gpu);
    }
    for dev in devices {
        for &t in ts {
            for bwd in [false, true] {
                match ponder::bench::attention(dev, 1, t, 0, 14, 2, 64, bwd, 1, 3) {
                    Ok(r) => println!("{r}"),
                    Err(e) => println!("attention T{t} on {dev}: {e}"),
                }
            }
        }
    }
}
