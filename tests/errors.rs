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
        let too_big = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size) as usize
            + 4096;
        let e = ctx
            .alloc(too_big, "test buffer")
            .err()
            .expect("over-limit allocation must fail")
            .to_string();
        assert!(
            e.contains("test buffer") && e.contains("over the device limit"),
            "{e}"
        );
    }
}
