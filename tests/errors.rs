//! Bad input gives an error that names the op and the shapes/dtypes/devices, never a panic.

mod common;
use common::*;
use ponder::tensor::CpuData;
use ponder::{AttnOpts, DType, Device, Tensor};

fn msg(r: ponder::Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got {t:?}"),
        Err(e) => e.to_string(),
    }
}

fn z(shape: &[usize]) -> Tensor {
    randn(shape, 1)
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let m = msg(z(&[2, 3]).add(&z(&[4])));
    assert!(
        m.contains("add") && m.contains("[2, 3]") && m.contains("[4]"),
        "{m}"
    );
    let m = msg(z(&[2, 3]).matmul(&z(&[4, 5])));
    assert!(
        m.contains("matmul") && m.contains("inner dimensions differ (3 vs 4)"),
        "{m}"
    );
    let m = msg(z(&[2, 3]).reshape(&[7]));
    assert!(
        m.contains("reshape") && m.contains("element counts differ"),
        "{m}"
    );
    let m = msg(z(&[2, 3]).permute(&[0, 0]));
    assert!(
        m.contains("permute") && m.contains("not a permutation"),
        "{m}"
    );
    let m = msg(z(&[2, 3]).narrow(1, 2, 5));
    assert!(m.contains("narrow") && m.contains("out of bounds"), "{m}");
    let m = msg(z(&[2, 3]).sum(5, false));
    assert!(m.contains("sum") && m.contains("out of range"), "{m}");
    let m = msg(z(&[2, 3]).rms_norm(&z(&[4]), 1e-6));
    assert!(
        m.contains("rms_norm") && m.contains("weight must be (C,)"),
        "{m}"
    );
    let m = msg(z(&[1, 2, 2, 3]).rope(&z(&[2, 3]), &z(&[2, 3])));
    assert!(m.contains("rope") && m.contains("even"), "{m}");
    let m = msg(Tensor::attention(
        &z(&[1, 2, 3, 4]),
        &z(&[1, 2, 2, 4]),
        &z(&[1, 2, 2, 4]),
        &AttnOpts::default(),
    ));
    assert!(
        m.contains("attention") && m.contains("NKV must divide NH"),
        "{m}"
    );
    let m = msg(Tensor::cat(&[&z(&[2, 3]), &z(&[3, 2])], 0));
    assert!(m.contains("cat") && m.contains("shapes differ"), "{m}");
    let m = msg(Tensor::from_vec(vec![1.0; 5], &[2, 3], Device::Cpu));
    assert!(m.contains("5 elements do not fill the shape"), "{m}");
}

#[test]
fn dtype_and_device_errors() {
    let ids = Tensor::from_u32(vec![1, 2], &[2], Device::Cpu).unwrap();
    let m = msg(z(&[2]).add(&ids));
    assert!(m.contains("add") && m.contains("dtype mismatch"), "{m}");
    let f64t = Tensor::from_vec_f64(vec![1.0], &[1]).unwrap();
    let m = msg(f64t.to_device(Device::Gpu));
    assert!(m.contains("f64") || m.contains("no adapter"), "{m}");
    if gpu_ok("device errors") {
        let m = msg(z(&[2]).add(&z(&[2]).to_device(Device::Gpu).unwrap()));
        assert!(m.contains("add") && m.contains("different devices"), "{m}");
    }
    let m = msg(Tensor::from_vec(vec![1.0; 4], &[2, 2], Device::Cpu)
        .unwrap()
        .to_dtype(DType::U32));
    assert!(m.contains("to_dtype"), "{m}");
}

#[test]
fn out_of_range_ids_are_errors() {
    let w = z(&[4, 3]);
    let m = msg(w.embedding(&Tensor::from_u32(vec![1, 4], &[2], Device::Cpu).unwrap()));
    assert!(
        m.contains("embedding") && m.contains("token id 4 is out of range for a vocabulary of 4"),
        "{m}"
    );
    let tg = Tensor::from_cpu_data(CpuData::I32(vec![9]), &[1]).unwrap();
    let m = msg(z(&[1, 4]).token_logprobs(&tg));
    assert!(
        m.contains("token_logprobs") && m.contains("out of range"),
        "{m}"
    );
}

#[test]
fn autograd_errors() {
    let x = z(&[3]).requires_grad_();
    let e = x.exp().unwrap().backward().unwrap_err().to_string();
    assert!(e.contains("needs a scalar") && e.contains("[3]"), "{e}");
    let e = z(&[1]).backward().unwrap_err().to_string();
    assert!(e.contains("does not require grad"), "{e}");
}

#[test]
fn device_parsing_and_limits() {
    let e = Device::parse("tpu").unwrap_err().to_string();
    assert!(e.contains("unknown device 'tpu'"), "{e}");
    if gpu_ok("limits") {
        let ctx = ponder::backend::gpu::context().unwrap();
        // a tensor may pass the binding limit (the kernels bind it in windows), not the
        // largest buffer the device allows
        let too_big = ctx.limits.max_buffer_size as usize + 4096;
        let e = ctx
            .alloc(too_big, "test buffer")
            .err()
            .expect("over-limit allocation must fail")
            .to_string();
        assert!(
            e.contains("test buffer")
                && e.contains("over the device limit")
                && e.contains("max_buffer_size"),
            "{e}"
        );
    }
}

#[test]
fn review_regressions() {
    // an empty batch multiplies to an empty result (no panic in the small-M path)
    let a = Tensor::from_vec(vec![], &[0, 8], Device::Cpu).unwrap();
    let w = randn(&[8, 64], 3);
    assert_eq!(a.matmul(&w).unwrap().shape(), &[0, 64]);
    // narrow with a start that would overflow is an error, not a wrap-around
    let m = msg(z(&[4]).narrow(0, usize::MAX, 2));
    assert!(m.contains("narrow") && m.contains("out of bounds"), "{m}");
    // RMSNorm over an empty dimension is refused
    let m = msg(z(&[2, 0]).rms_norm(&z(&[0]), 1e-6));
    assert!(m.contains("rms_norm") && m.contains("empty"), "{m}");
    // two grad handles of one storage keep separate gradients
    let base = Tensor::from_vec(vec![1.0, 2.0], &[2], Device::Cpu).unwrap();
    let (p, q) = (base.clone().requires_grad_(), base.clone().requires_grad_());
    p.sum_all()
        .unwrap()
        .add(&q.scale(3.0).unwrap().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(p.grad().unwrap().to_vec_f32().unwrap(), vec![1.0, 1.0]);
    assert_eq!(q.grad().unwrap().to_vec_f32().unwrap(), vec![3.0, 3.0]);
    // one storage read twice in one op
    let x = randn(&[3, 3], 4);
    let sq = x.mul(&x).unwrap().to_vec_f32().unwrap();
    let xv = x.to_vec_f32().unwrap();
    assert!(sq.iter().zip(&xv).all(|(s, v)| (s - v * v).abs() < 1e-6));
    assert_eq!(x.matmul(&x.t().unwrap()).unwrap().shape(), &[3, 3]);
    // on the gpu, out-of-range targets are refused too, and a NaN survives a bf16 cast
    if gpu_ok("review regressions") {
        let logits = z(&[1, 4]).to_device(Device::Gpu).unwrap();
        let tg = Tensor::from_cpu_data(CpuData::I32(vec![7]), &[1])
            .unwrap()
            .to_device(Device::Gpu)
            .unwrap();
        let m = msg(logits.cross_entropy(&tg, -100));
        assert!(m.contains("out of range"), "{m}");
        let nan =
            Tensor::from_vec(vec![f32::from_bits(0x7fff_ffff), 1.0], &[2], Device::Gpu).unwrap();
        let back = nan
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert!(back[0].is_nan() && back[1] == 1.0, "{back:?}");
        // an f32 embedding table viewed with an offset
        let t = randn(&[5, 3], 6);
        let ids = Tensor::from_u32(vec![0, 2], &[2], Device::Cpu).unwrap();
        let cpu = t
            .narrow(0, 1, 4)
            .unwrap()
            .embedding(&ids)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let gpu = t
            .to_device(Device::Gpu)
            .unwrap()
            .narrow(0, 1, 4)
            .unwrap()
            .embedding(&ids.to_device(Device::Gpu).unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_eq!(cpu, gpu);
    }
}
