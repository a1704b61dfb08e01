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
                let case = ponder::bench::AttentionCase {
                    b: 1,
                    t,
                    past: 0,
                    nh: 14,
                    nkv: 2,
                    hd: 64,
                    backward: bwd,
                    caches: 1,
                    shared: 0,
                    group: 1,
                };
                match ponder::bench::attention(dev, &case, 1, 3) {
                    Ok(r) => println!("{r}"),
                    Err(e) => println!("attention T{t} on {dev}: {e}"),
                }
            }
        }
    }
}
