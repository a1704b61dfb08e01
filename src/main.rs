//! The `ponder` command line: thin parsing over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ponder::{Device, Result};

#[derive(Parser)]
#[command(
    name = "ponder",
    version,
    about = "A pure-Rust ML engine for preference-optimised reasoning models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the chosen device (and why), its limits and features, and self-check a few
    /// GPU kernels against the CPU reference.
    Info {
        /// cpu, gpu or auto (default: $PONDER_DEVICE, else auto)
        #[arg(long)]
        device: Option<String>,
    },
    /// Time a kernel: median of repeated runs after a warm-up, in GFLOP/s.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// f32 matmul C (M x N) = A (M x K) @ B (K x N).
    Matmul {
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 1024)]
        m: usize,
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 1024)]
        k: usize,
        /// B is the transpose of a row-major (N, K) weight (x @ W^T).
        #[arg(long)]
        weight_t: bool,
        #[arg(long, default_value_t = 7)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Fused causal attention, forward or forward+backward.
    Attention {
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 1)]
        b: usize,
        #[arg(long, default_value_t = 512)]
        t: usize,
        #[arg(long, default_value_t = 14)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Time the backward pass instead of the forward.
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info { device } => info(device),
        Cmd::Bench { what } => bench(what),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn device(s: Option<String>) -> Result<Device> {
    match s {
        Some(s) => Device::parse(&s),
        None => Device::from_env(),
    }
}

fn info(dev: Option<String>) -> Result<bool> {
    let requested = dev
        .clone()
        .or_else(|| std::env::var("PONDER_DEVICE").ok())
        .unwrap_or_else(|| "auto".into());
    let dev = device(dev)?;
    println!("ponder {}", env!("CARGO_PKG_VERSION"));
    println!("device: {dev} (requested: {requested})");
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    match ponder::backend::gpu::context() {
        Ok(ctx) => {
            println!("gpu adapter: {}", ctx.describe());
            println!("  chosen because: {}", ctx.reason);
            for o in &ctx.others {
                println!("  seen: {o}");
            }
            let l = &ctx.limits;
            println!(
                "  max_storage_buffer_binding_size: {} MiB",
                l.max_storage_buffer_binding_size >> 20
            );
            println!("  max_buffer_size: {} MiB", l.max_buffer_size >> 20);
            println!(
                "  max_compute_workgroup_storage_size: {} B",
                l.max_compute_workgroup_storage_size
            );
            println!(
                "  max_compute_invocations_per_workgroup: {}",
                l.max_compute_invocations_per_workgroup
            );
            println!(
                "  max_storage_buffers_per_shader_stage: {}",
                l.max_storage_buffers_per_shader_stage
            );
            println!(
                "  shader-f16: {}, subgroups: {}",
                ctx.has_f16(),
                ctx.has_subgroups()
            );
        }
        Err(e) => println!("gpu: none ({e})"),
    }
    if dev == Device::Cpu {
        println!(
            "self-check: skipped (the cpu backend is the reference the gpu is checked against)"
        );
        return Ok(true);
    }
    let checks = ponder::selfcheck::run()?;
    let mut ok = true;
    for c in &checks {
        println!(
            "self-check {:<28} max |gpu - cpu| = {:.2e}  {}",
            c.name,
            c.max_diff,
            if c.pass { "ok" } else { "FAIL" }
        );
        ok &= c.pass;
    }
    println!(
        "self-check: {}",
        if ok {
            "all kernels agree with the cpu reference"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

fn bench(what: BenchCmd) -> Result<bool> {
    let r = match what {
        BenchCmd::Matmul {
            device: d,
            m,
            n,
            k,
            weight_t,
            reps,
            warmup,
        } => ponder::bench::matmul(Device::parse(&d)?, m, n, k, weight_t, warmup, reps)?,
        BenchCmd::Attention {
            device: d,
            b,
            t,
            heads,
            kv_heads,
            head_dim,
            backward,
            reps,
            warmup,
        } => ponder::bench::attention(
            Device::parse(&d)?,
            b,
            t,
            heads,
            kv_heads,
            head_dim,
            backward,
            warmup,
            reps,
        )?,
    };
    println!("{r}");
    if r.device == Device::Gpu {
        let ctx = ponder::backend::gpu::context()?;
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            println!(
                "note: {} is a software rasteriser; its figures are for reference only",
                ctx.info.name
            );
        }
    }
    Ok(true)
}
