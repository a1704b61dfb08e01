//! The tensor: a shared storage on one device, a strided [`Layout`] view of it, a dtype,
//! and (when it takes part in autograd) the [`Node`] that produced it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

// Reads take the lock recursively: `x.mul(&x)` reads one storage twice on one thread,
// which must not deadlock behind a waiting writer.
use parking_lot::RwLock;

use half::{bf16, f16};

use crate::backend::gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::{numel, Layout};

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Gpu,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        })
    }
}

impl Device {
    /// Parse `cpu`, `gpu` or `auto`. `auto` is the GPU when a hardware adapter exists and
    /// the CPU otherwise: a software rasteriser such as lavapipe runs the WGSL 10-40x slower
    /// than the CPU backend's loops, so `auto` never picks one (`gpu` still does).
    pub fn parse(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => {
                gpu::context()?;
                Ok(Device::Gpu)
            }
            "auto" | "" => Ok(match gpu::context() {
                Ok(ctx) if !ctx.is_software() => Device::Gpu,
                _ => Device::Cpu,
            }),
            other => Err(Error::invalid(
                "device",
                format!("unknown device '{other}': expected cpu, gpu or auto"),
            )),
        }
    }
    /// The device chosen by `PONDER_DEVICE` (default `auto`).
    pub fn from_env() -> Result<Device> {
        Device::parse(&std::env::var("PONDER_DEVICE").unwrap_or_else(|_| "auto".into()))
    }
}

/// Host memory of a CPU tensor.
#[derive(Debug)]
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

impl CpuData {
    pub fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::U32(_) => DType::U32,
            CpuData::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::F16(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::U32(v) => v.len(),
            CpuData::I32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> &[u8] {
        match self {
            CpuData::F32(v) => bytemuck::cast_slice(v),
            CpuData::F64(v) => bytemuck::cast_slice(v),
            CpuData::F16(v) => bytemuck::cast_slice(v),
            CpuData::BF16(v) => bytemuck::cast_slice(v),
            CpuData::U32(v) => bytemuck::cast_slice(v),
            CpuData::I32(v) => bytemuck::cast_slice(v),
        }
    }
}

pub enum Storage {
    Cpu(RwLock<CpuData>),
    Gpu(gpu::GpuBuffer),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(_) => Device::Gpu,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh tensor id (autograd keys its graph walk on ids).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) node: Option<Arc<Node>>,
    pub(crate) requires_grad: bool,
    pub(crate) grad: Mutex<Option<Tensor>>,
}

/// A strided view of a storage on one device. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {}{})",
            self.shape(),
            self.dtype().name(),
            self.device(),
            if self.requires_grad() { ", grad" } else { "" }
        )
    }
}

impl Tensor {
    pub(crate) fn from_parts(storage: Arc<Storage>, layout: Layout, dtype: DType) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage,
            layout,
            dtype,
            node: None,
            requires_grad: false,
            grad: Mutex::new(None),
        }))
    }

    /// A new contiguous tensor over fresh storage.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_parts(Arc::new(storage), Layout::contiguous(shape), dtype)
    }

    /// Same storage, another layout; keeps autograd linkage to `self` via `op` when needed.
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, self.0.dtype)
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// Size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.shape()[crate::shape::resolve_dim("dim", dim, self.rank())?])
    }

    // ---------------------------------------------------------------- creation

    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_cpu_data(CpuData::F32(data), shape)?.to_device(device)
    }
    pub fn from_slice(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }
    pub fn from_u32(data: Vec<u32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_cpu_data(CpuData::U32(data), shape)?.to_device(device)
    }
    pub fn from_cpu_data(data: CpuData, shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::bad_shape(
                "from_vec",
                format!("{} elements do not fill the shape", data.len()),
                shape,
            ));
        }
        let dtype = data.dtype();
        Ok(Tensor::from_storage(
            Storage::Cpu(RwLock::new(data)),
            shape,
            dtype,
        ))
    }
    pub fn scalar(v: f32, device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![v], &[], device)
    }
    pub fn full(v: f32, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![v; numel(shape)], shape, device)
    }
    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::from_vec(vec![0.0; numel(shape)], shape, device),
            Device::Gpu => {
                let ctx = gpu::context()?;
                let buf = ctx.alloc(numel(shape) * 4, "zeros")?;
                ctx.clear(&buf);
                Ok(Tensor::from_storage(Storage::Gpu(buf), shape, DType::F32))
            }
        }
    }
    pub fn ones(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, device)
    }
    /// Standard-normal values from a seeded generator (Box-Muller over rand's StdRng).
    pub fn randn(shape: &[usize], std: f32, seed: u64, device: Device) -> Result<Tensor> {
        Tensor::from_vec(
            crate::util::randn_vec(numel(shape), std, seed),
            shape,
            device,
        )
    }
    /// Uniform values in [lo, hi).
    pub fn rand_uniform(
        shape: &[usize],
        lo: f32,
        hi: f32,
        seed: u64,
        device: Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(
            crate::util::uniform_vec(numel(shape), lo, hi, seed),
            shape,
            device,
        )
    }

    // ---------------------------------------------------------------- movement between devices

    /// Copy to `device` (a no-op clone when already there). Explicit, never implicit.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let out = match (&**src.storage(), device) {
            (Storage::Cpu(data), Device::Gpu) => {
                if src.dtype() == DType::F64 {
                    return Err(Error::invalid(
                        "to_device",
                        "f64 tensors live on the cpu only",
                    ));
                }
                let data = data.read_recursive();
                let es = src.dtype().size();
                let off = src.layout().offset * es;
                let bytes = &data.bytes()[off..off + src.numel() * es];
                let buf = gpu::context()?.upload(bytes, "to_device")?;
                Tensor::from_storage(Storage::Gpu(buf), src.shape(), src.dtype())
            }
            (Storage::Gpu(buf), Device::Cpu) => {
                let es = src.dtype().size();
                let bytes =
                    gpu::context()?.read(buf, src.layout().offset * es, src.numel() * es)?;
                let data = match src.dtype() {
                    DType::F32 => CpuData::F32(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::F64 => CpuData::F64(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::F16 => CpuData::F16(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::BF16 => CpuData::BF16(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::U32 => CpuData::U32(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::I32 => CpuData::I32(bytemuck::pod_collect_to_vec(&bytes)),
                };
                Tensor::from_cpu_data(data, src.shape())?
            }
            _ => unreachable!("same-device handled above"),
        };
        // Moving between devices is differentiable: the gradient moves back.
        let back = self.device();
        Ok(record(out, "to_device", &[self], move |g| {
            Ok(vec![Some(g.to_device(back)?)])
        }))
    }

    /// Read the values as f32 in row-major order (a GPU readback when on the GPU).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let t = no_grad(|| self.to_device(Device::Cpu)?.contiguous())?;
        let data = match &**t.storage() {
            Storage::Cpu(d) => d,
            Storage::Gpu(_) => unreachable!(),
        };
        let d = data.read_recursive();
        let (o, n) = (t.layout().offset, t.numel());
        Ok(match &*d {
            CpuData::F32(v) => v[o..o + n].to_vec(),
            CpuData::F64(v) => v[o..o + n].iter().map(|&x| x as f32).collect(),
            CpuData::F16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
            CpuData::BF16(v) => v[o..o + n].iter().map(|x| x.to_f32()).collect(),
            CpuData::U32(v) => v[o..o + n].iter().map(|&x| x as f32).collect(),
            CpuData::I32(v) => v[o..o + n].iter().map(|&x| x as f32).collect(),
        })
    }

    /// Read a u32 tensor's values.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        let t = self.to_device(Device::Cpu)?.contiguous()?;
        let Storage::Cpu(data) = &**t.storage() else {
            unreachable!()
        };
        let (o, n) = (t.layout().offset, t.numel());
        let guard = data.read_recursive();
        let out = match &*guard {
            CpuData::U32(v) => Ok(v[o..o + n].to_vec()),
            CpuData::I32(v) => Ok(v[o..o + n].iter().map(|&x| x as u32).collect()),
            other => Err(Error::DTypeMismatch {
                op: "to_vec_u32",
                expected: DType::U32,
                got: other.dtype(),
            }),
        };
        out
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::bad_shape(
                "item",
                "needs exactly one element",
                self.shape(),
            ));
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// The ids of a CPU u32/i32 tensor, contiguous, as u32 (negative i32 stay as huge u32).
    pub(crate) fn cpu_ids(&self, op: &'static str) -> Result<Vec<u32>> {
        if self.device() != Device::Cpu {
            return Err(Error::invalid(op, "expected a cpu tensor"));
        }
        match self.dtype() {
            DType::U32 | DType::I32 => self.to_vec_u32(),
            other => Err(Error::DTypeMismatch {
                op,
                expected: DType::U32,
                got: other,
            }),
        }
    }

    /// Run `f` over the raw CPU data with this tensor's layout (no copy).
    pub(crate) fn with_cpu_data<R>(&self, f: impl FnOnce(&CpuData, &Layout) -> R) -> R {
        let Storage::Cpu(data) = &**self.storage() else {
            panic!("with_cpu_data on a gpu tensor")
        };
        f(&data.read_recursive(), self.layout())
    }

    /// Mutate the raw CPU data in place (optimizer updates).
    pub(crate) fn with_cpu_data_mut<R>(&self, f: impl FnOnce(&mut CpuData, &Layout) -> R) -> R {
        let Storage::Cpu(data) = &**self.storage() else {
            panic!("with_cpu_data_mut on a gpu tensor")
        };
        f(&mut data.write(), self.layout())
    }

    /// The GPU buffer behind this tensor.
    pub(crate) fn gpu_buf(&self) -> &gpu::GpuBuffer {
        match &**self.storage() {
            Storage::Gpu(b) => b,
            Storage::Cpu(_) => panic!("gpu_buf on a cpu tensor"),
        }
    }

    /// f64 values of a CPU tensor (f32 widened), for gradient checks.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let t = no_grad(|| self.to_device(Device::Cpu)?.contiguous())?;
        if t.dtype() == DType::F64 {
            return t.cpu_read("to_vec_f64", |s: &[f64]| s.to_vec());
        }
        Ok(t.to_vec_f32()?.into_iter().map(|x| x as f64).collect())
    }

    /// A CPU f64 tensor (gradient checks; f64 never goes to the GPU).
    pub fn from_vec_f64(data: Vec<f64>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_cpu_data(CpuData::F64(data), shape)
    }

    /// Same shape, dtype and device, filled with `v`.
    pub fn full_like(&self, v: f32) -> Result<Tensor> {
        match self.dtype() {
            DType::F64 => Tensor::from_vec_f64(vec![v as f64; self.numel()], self.shape()),
            _ => Tensor::full(v, self.shape(), self.device()),
        }
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        self.full_like(0.0)
    }

    /// A detached copy of the handle: same storage, no autograd history.
    pub fn detach(&self) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.0.dtype)
    }
}

// ------------------------------------------------------------------ autograd nodes

pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

pub struct Node {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: BackwardFn,
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops record autograd nodes right now on this thread.
pub fn grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Run `f` without recording any autograd node (used for the frozen DPO reference).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Run `f` with gradients recorded even inside a `no_grad` scope or a backward pass
/// (an activation checkpoint's recomputation); the previous mode returns afterwards,
/// also if `f` panics.
pub fn enable_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD_DEPTH.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD_DEPTH.with(|d| d.replace(0)));
    f()
}

/// While alive, ops on this thread record nothing.
pub struct NoGradGuard(());

impl NoGradGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Attach a backward node to `out` when gradients are enabled and an input needs one.
pub(crate) fn record(
    out: Tensor,
    op: &'static str,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    if !grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node {
        op,
        inputs: inputs.iter().map(|t| (*t).clone()).collect(),
        backward: Box::new(backward),
    };
    Tensor(Arc::new(Inner {
        id: out.0.id,
        storage: out.0.storage.clone(),
        layout: out.0.layout.clone(),
        dtype: out.0.dtype,
        node: Some(Arc::new(node)),
        requires_grad: true,
        grad: Mutex::new(None),
    }))
}
