//! `cargo bench --bench matmul`: f32 matmul at LLM shapes on the CPU and, when an adapter
//! exists, the GPU. The same numbers come from `ponder bench matmul`.

fn main() {
    let quick = std::env::var("PONDER_BENCH_QUICK").is_ok();
    let shapes: &[(usize, usize, usize)] = if quick {
        &[(256, 256, 256)]
    } else {
        &[
            (1024, 1024, 1024),
            (2048, 896, 896),
            (2048, 4864, 896),
            (4096, 4096, 4096),
        ]
    };
    let mut devices = vec![ponder::Device::Cpu];
    if ponder::backend::gpu::context().is_ok() {
        devices.push(ponder::Device::Gpu);
    }
    for dev in devices {
        // a software adapter (lavapipe) would take minutes on the largest shape
        let software = dev == ponder::Device::Gpu
            && ponder::backend::gpu::context()
                .is_ok_and(|c| c.info.device_type == wgpu::DeviceType::Cpu);
        for &(m, n, k) in shapes {
            if software && m * n * k > 1 << 32 {
                println!("matmul {m}x{n}x{k} on gpu: skipped on a software adapter");
                continue;
            }
            let reps = if m * n * k > 1 << 33 { 3 } else { 7 };
            for weight_t in [false, true] {
                match ponder::bench::matmul(dev, m, n, k, weight_t, false, 1, 1, reps) {
                    Ok(r) => println!("{r}"),
                    Err(e) => println!("matmul {m}x{n}x{k} on {dev}: {e}"),
                }
            }
        }
    }
}
