//! The wgpu backend: one process-wide context (adapter, device, queue), a pipeline cache
//! keyed by (shader, entry point, specialisation), a size-bucketed buffer pool, and one
//! pending command encoder that ops record into. Nothing waits on the GPU except an
//! explicit readback ([`GpuContext::read`]) or [`GpuContext::sync`].

mod attention;
pub mod kernels;
pub mod profile;
pub mod split;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// Submit the pending encoder after this many recorded dispatches.
const MAX_PENDING_DISPATCHES: usize = 256;

/// Shader sources, embedded at compile time. The prelude is prepended to each.
const PRELUDE: &str = include_str!("../../../shaders/common.wgsl");

pub(crate) fn shader_source(name: &str) -> &'static str {
    match name {
        "elementwise" => include_str!("../../../shaders/elementwise.wgsl"),
        "copy" => include_str!("../../../shaders/copy.wgsl"),
        "cast" => include_str!("../../../shaders/cast.wgsl"),
        "reduce" => include_str!("../../../shaders/reduce.wgsl"),
        "matmul" => include_str!("../../../shaders/matmul.wgsl"),
        "softmax" => include_str!("../../../shaders/softmax.wgsl"),
        "rmsnorm" => include_str!("../../../shaders/rmsnorm.wgsl"),
        "rope" => include_str!("../../../shaders/rope.wgsl"),
        "swiglu" => include_str!("../../../shaders/swiglu.wgsl"),
        "embedding" => include_str!("../../../shaders/embedding.wgsl"),
        "attention" => include_str!("../../../shaders/attention.wgsl"),
        "logprob" => include_str!("../../../shaders/logprob.wgsl"),
        "adamw" => include_str!("../../../shaders/adamw.wgsl"),
        other => panic!("unknown shader {other}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    spec: Vec<(&'static str, u32)>,
    /// Compiled with naga's runtime checks (see [`set_shader_checks`]).
    checked: bool,
    /// The storage binding numbers the entry point uses (its explicit layout).
    bindings: Vec<u32>,
    /// Asked for with its shape parameters in immediates rather than the uniform ring.
    immediates: bool,
}

/// A compiled entry point and its explicit bind-group layout. The shape parameters go as
/// immediates, or in the uniform ring (binding 0) at a dynamic offset: either way one bind
/// group serves every dispatch of this kernel over the same buffers, whatever its shapes.
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Bytes of immediates the shape parameters go in; 0: they go in the uniform ring
    /// (binding 0).
    immediate_size: u32,
    /// Index in creation order: part of the bind-group cache key.
    id: usize,
}

/// A bind group is reused when the kernel, the uniform window size and every storage
/// window (buffer, offset, size) are the same.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    kernel: usize,
    uniform_size: u64,
    storage: Vec<(u32, wgpu::Buffer, u64, u64)>,
}

/// Cached bind groups kept at most; past this the cache starts over. A training step
/// meets the same (pooled) buffers in the same order every step, so a few thousand
/// entries cover it.
const MAX_BIND_GROUPS: usize = 16384;

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    /// The compute pass now recording into `encoder`: consecutive dispatches share it
    /// (wgpu orders each dispatch after the writes of the ones before it). It is ended
    /// before anything else is recorded into the encoder, and before the submit.
    pass: Option<wgpu::ComputePass<'static>>,
    dispatches: usize,
    /// Shape parameters of the dispatches recorded since the last submit, each at its
    /// own 256-byte-aligned offset of the uniform ring; uploaded with one write just
    /// before the submit (queue order puts it after the previous submit's reads).
    uniforms: Vec<u8>,
}

/// Bytes of the uniform ring: room for every dispatch of one encoder.
const RING_BYTES: u64 = (MAX_PENDING_DISPATCHES * 512) as u64;

/// The process-wide GPU context.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Why this adapter was chosen, for `ponder info`.
    pub reason: String,
    /// Other adapters that were seen.
    pub others: Vec<String>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// The uniform ring: one buffer for the life of the context (see [`Pending`]).
    ring: wgpu::Buffer,
    /// Free buffers by bucket size. A set, not a stack: a buffer is taken lowest first, so
    /// a step that allocates and frees in the same order as the last one gets the same
    /// buffers, and its bind groups come from the cache.
    pool: Mutex<HashMap<u64, BTreeSet<wgpu::Buffer>>>,
    pending: Mutex<Pending>,
    /// The open profile, if any (locked after `pending` when both are held).
    prof: Mutex<profile::State>,
    error: Arc<Mutex<Option<String>>>,
}

/// One storage binding of a dispatch: (binding number, buffer, window). The window is
/// `Some((byte offset, byte size))` for part of the buffer, `None` for the whole tensor.
pub type Binding<'a> = (u32, &'a GpuBuffer, Option<(u64, u64)>);

/// A storage buffer: a pooled one (dropping it returns it to its size bucket), or a view
/// of `len` bytes from byte `base` of a shared, unpooled buffer (an optimizer arena: see
/// `train::arena`), which every binding, copy, write and read offsets by `base`.
pub struct GpuBuffer {
    buf: Option<wgpu::Buffer>,
    /// Bytes requested (the buffer itself may be larger: its bucket size).
    pub len: u64,
    /// Where this buffer's bytes start in `buf` (0 unless it is a view).
    base: u64,
    pooled: bool,
}

impl GpuBuffer {
    /// The wgpu buffer; this buffer's bytes start at [`base`](Self::base) in it.
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buf.as_ref().unwrap()
    }
    pub fn base(&self) -> u64 {
        self.base
    }
    /// The bytes a kernel may bind: the whole pool bucket, or the view rounded up to words.
    pub fn size(&self) -> u64 {
        if self.pooled {
            self.raw().size()
        } else {
            self.len.max(4).div_ceil(4) * 4
        }
    }
    /// A view of `len` bytes from byte `base` of this unpooled buffer; it keeps the buffer
    /// alive. `base` must be a multiple of the binding alignment so that kernels can bind it.
    pub fn view(&self, base: u64, len: u64) -> Result<GpuBuffer> {
        let align = context()?.binding_align();
        if self.pooled || !base.is_multiple_of(align) || base + len > self.size() {
            return Err(Error::Gpu(format!(
                "view of {len} bytes at {base} of a {}-byte {} buffer (alignment {align})",
                self.size(),
                if self.pooled { "pooled" } else { "shared" }
            )));
        }
        Ok(GpuBuffer {
            buf: self.buf.clone(),
            len,
            base: self.base + base,
            pooled: false,
        })
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if !self.pooled {
            return;
        }
        if let (Some(buf), Some(Ok(ctx))) = (self.buf.take(), CONTEXT.get()) {
            ctx.pool
                .lock()
                .unwrap()
                .entry(buf.size())
                .or_default()
                .insert(buf);
        }
    }
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every fresh kernel output with NaN before the kernel runs (tests turn this on, as
/// does `PONDER_POISON=1`), so an element a kernel forgets to write cannot pass a check.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

pub fn poison_enabled() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// `PONDER_POISON=1`, `PONDER_NO_SUBGROUPS=1` and `PONDER_NO_F16=1`, read once when the
/// context is created (not on every allocation or dispatch).
fn read_env_flags() {
    let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
    if on("PONDER_POISON") {
        POISON.store(true, Ordering::Relaxed);
    }
    if on("PONDER_NO_SUBGROUPS") {
        NO_SUBGROUPS.store(true, Ordering::Relaxed);
    }
    if on("PONDER_NO_F16") {
        NO_F16.store(true, Ordering::Relaxed);
    }
    if on("PONDER_NO_IMMEDIATES") {
        NO_IMMEDIATES.store(true, Ordering::Relaxed);
    }
    if on("PONDER_SHADER_CHECKS") {
        SHADER_CHECKS.store(true, Ordering::Relaxed);
    }
    if on("PONDER_NO_TIMESTAMPS") {
        NO_TIMESTAMPS.store(true, Ordering::Relaxed);
    }
    if let Some(b) = std::env::var("PONDER_BINDING_LIMIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        set_binding_limit(Some(b));
    }
}

/// A lower storage-binding limit than the adapter's (0: none). See [`set_binding_limit`].
static BINDING_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Pretend the adapter's `max_storage_buffer_binding_size` is `bytes` (at least 4 KiB),
/// so that the split paths of [`split`] run on small tensors: the tests use it, as does
/// `PONDER_BINDING_LIMIT=BYTES`. `None` restores the adapter's own limit.
pub fn set_binding_limit(bytes: Option<u64>) {
    BINDING_LIMIT.store(bytes.map_or(0, |b| b.max(4096)), Ordering::Relaxed);
}

static NO_SUBGROUPS: AtomicBool = AtomicBool::new(false);
static NO_F16: AtomicBool = AtomicBool::new(false);
static SHADER_CHECKS: AtomicBool = AtomicBool::new(false);
/// Uploads up to this size go through a staging copy in the pending encoder (no submit).
const STAGED_UPLOAD_MAX: usize = 1 << 20;
/// Profile as on an adapter without timestamp queries: host timings only
/// (`PONDER_NO_TIMESTAMPS=1`, so that path can be seen and tested on any GPU).
static NO_TIMESTAMPS: AtomicBool = AtomicBool::new(false);

/// Compile shader modules with naga's full runtime checks (`PONDER_SHADER_CHECKS=1` does
/// the same). Off by default: see [`runtime_checks`] for why the kernels are safe without
/// them. Turning them on affects pipelines created afterwards (the cache is keyed on it).
pub fn set_shader_checks(on: bool) {
    SHADER_CHECKS.store(on, Ordering::Relaxed);
}

/// Whether new pipelines are compiled with naga's runtime checks.
pub fn shader_checks() -> bool {
    SHADER_CHECKS.load(Ordering::Relaxed)
}

/// The runtime checks ponder's shader modules are compiled with.
///
/// By default none (`ShaderRuntimeChecks::unchecked()`). naga's checks are two:
///
/// - `force_loop_bounding` adds a counter to every loop so that a driver cannot assume it
///   terminates. That counter stops drivers from unrolling the register-blocked loops in
///   matmul and attention, so `acc[]` spills to local memory: measured on an H100 (Vulkan),
///   matmul 4096^3 ran at 0.59 TFLOP/s with it and 24.8 without, and a DPO step 26.5x
///   faster. Every loop in `shaders/` is a counted `for` whose bound is a uniform or a
///   constant and whose step is a positive constant, with bounds far below `u32::MAX` (no
///   buffer holds 2^31 elements, so `j + 256u` cannot wrap). The one `loop {}`, the
///   float atomic add in `embedding.wgsl`, is a compare-exchange retry: each round at
///   least one contending invocation succeeds, so it terminates.
/// - `bounds_checks` clamps every buffer index. Every kernel guards its own indices: an
///   invocation whose linear id is past the element count returns before touching memory,
///   tiled loads test `row < m && k < K` before reading and write zero otherwise, and
///   stores test the same. The host checks each view's offset and strides against its
///   buffer before it dispatches (`Tensor` views, `check_size`). Measured on the same H100,
///   keeping only the bounds checks gains nothing over keeping both, so both go.
///
/// The tests fill every kernel output with NaN before the kernel runs, so an element a
/// kernel skips fails a check, and CI runs the GPU suites a second time with the checks
/// on (`tests/gpu_checked.rs`), so an out-of-bounds access that the checks would clamp
/// still shows up as a mismatch. `PONDER_SHADER_CHECKS=1` turns them back on for debugging.
pub fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    if shader_checks() {
        wgpu::ShaderRuntimeChecks::checked()
    } else {
        wgpu::ShaderRuntimeChecks::unchecked()
    }
}

/// Turn the subgroup (and shader-f16) code paths off even where the adapter offers them,
/// to run and test the fallbacks (`PONDER_NO_SUBGROUPS=1`, `PONDER_NO_F16=1` do the same).
pub fn set_subgroups(on: bool) {
    NO_SUBGROUPS.store(!on, Ordering::Relaxed);
}
pub fn set_f16(on: bool) {
    NO_F16.store(!on, Ordering::Relaxed);
}

static NO_IMMEDIATES: AtomicBool = AtomicBool::new(false);

/// Pass shape parameters as immediates (push constants) where the adapter offers them
/// (the default), or always through the uniform ring (`PONDER_NO_IMMEDIATES=1`), to run
/// and test both paths on one adapter.
pub fn set_immediates(on: bool) {
    NO_IMMEDIATES.store(!on, Ordering::Relaxed);
}

static CONTEXT: OnceLock<std::result::Result<GpuContext, String>> = OnceLock::new();

/// The GPU context, created on first use. Fails with the reason when there is no adapter.
pub fn context() -> Result<&'static GpuContext> {
    CONTEXT
        .get_or_init(|| GpuContext::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::NoAdapter(e.clone()))
}

/// Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid or not set" to the terminal
/// when the variable is missing (containers, cron, CI). Nothing of ponder's uses that
/// directory, so point it at a private per-user one before the instance is created.
fn quiet_mesa_runtime_dir() {
    if !cfg!(target_os = "linux") || std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("ponder-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // use it only if it is ours and private, as the XDG spec asks
    let ok = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if ok {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Round a byte size up to its pool bucket: powers of two below 1 MiB, then steps of an
/// eighth of the enclosing power of two (at most 12.5% waste).
fn bucket(size: u64) -> u64 {
    let size = size.max(256);
    let p = size.next_power_of_two();
    if p <= 1 << 20 {
        return p;
    }
    let step = p / 8;
    size.div_ceil(step) * step
}

impl GpuContext {
    fn new() -> Result<GpuContext> {
        read_env_flags();
        quiet_mesa_runtime_dir();
        // Builds backends/flags from the environment, so WGPU_BACKEND=vulkan etc. work.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(
                "wgpu found no adapter (install a Vulkan/Metal/DX12 driver, e.g. mesa-vulkan-drivers for lavapipe)".into(),
            ));
        }
        let wanted = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .map(|s| s.to_lowercase());
        let describe = |a: &wgpu::Adapter| {
            let i = a.get_info();
            format!(
                "{} ({:?}, {:?}, driver {} {})",
                i.name, i.device_type, i.backend, i.driver, i.driver_info
            )
        };
        let others: Vec<String> = adapters.iter().map(describe).collect();
        let mut ranked: Vec<&wgpu::Adapter> = adapters.iter().collect();
        ranked.sort_by_key(|a| device_type_rank(a.get_info().device_type));
        let (adapter, reason) = match &wanted {
            Some(w) => match ranked.iter().find(|a| a.get_info().name.to_lowercase().contains(w)) {
                Some(a) => (*a, format!("WGPU_ADAPTER_NAME matches '{w}'")),
                None => {
                    return Err(Error::NoAdapter(format!(
                        "WGPU_ADAPTER_NAME='{w}' matches none of: {}",
                        others.join("; ")
                    )))
                }
            },
            None => (
                ranked[0],
                format!(
                    "best device type among {} adapter(s) (discrete > integrated > virtual > other > cpu)",
                    adapters.len()
                ),
            ),
        };
        let info = adapter.get_info();
        let offered = adapter.features();
        // timestamp queries only serve the profiler; asking for them costs nothing else
        let features = offered
            & (wgpu::Features::SHADER_F16
                | wgpu::Features::SUBGROUP
                | wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::IMMEDIATES);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ponder"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("request_device on {}: {e}", info.name)))?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = sink.lock().unwrap();
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform ring"),
            size: RING_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            features,
            reason,
            others,
            pipelines: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(HashMap::new()),
            ring,
            pool: Mutex::new(HashMap::new()),
            prof: Mutex::new(profile::State::default()),
            pending: Mutex::new(Pending {
                encoder: None,
                pass: None,
                dispatches: 0,
                uniforms: Vec::new(),
            }),
            error,
        })
    }

    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }
    /// Bytes of immediates a kernel may take now (0: the uniform ring for every kernel).
    fn immediate_budget(&self) -> u32 {
        if self.features.contains(wgpu::Features::IMMEDIATES)
            && !NO_IMMEDIATES.load(Ordering::Relaxed)
        {
            self.limits.max_immediate_size.min(256) / 4 * 4
        } else {
            0
        }
    }
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }
    /// Whether kernels take their subgroup path now (offered, and not turned off).
    pub fn use_subgroups(&self) -> bool {
        self.has_subgroups() && !NO_SUBGROUPS.load(Ordering::Relaxed)
    }
    /// Whether kernels read f16 natively now (offered, and not turned off).
    pub fn use_f16(&self) -> bool {
        self.has_f16() && !NO_F16.load(Ordering::Relaxed)
    }
    /// Whether the adapter is a software rasteriser (lavapipe, llvmpipe, SwiftShader, WARP):
    /// correct, but slower than the CPU backend.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }
    /// One line describing the adapter.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?} backend, driver {} {})",
            self.info.name,
            self.info.device_type,
            self.info.backend,
            self.info.driver,
            self.info.driver_info
        )
    }

    fn check_error(&self) -> Result<()> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// The most bytes one storage binding may span: the adapter's
    /// `max_storage_buffer_binding_size`, or the lower test limit of [`set_binding_limit`].
    /// A tensor over it lives in one buffer (up to `max_buffer_size`) and the kernels
    /// bind it in windows (see [`split`]).
    pub fn binding_limit(&self) -> u64 {
        let adapter = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        match BINDING_LIMIT.load(Ordering::Relaxed) {
            0 => adapter,
            b => b.min(adapter),
        }
    }

    /// The alignment of a window's start (`min_storage_buffer_offset_alignment`).
    pub fn binding_align(&self) -> u64 {
        (self.limits.min_storage_buffer_offset_alignment as u64).max(4)
    }

    /// Check a buffer request against the device's largest buffer.
    pub fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let lim = self.limits.max_buffer_size;
        if bytes.div_ceil(4) * 4 > lim {
            return Err(Error::DeviceLimit {
                what: what.to_string(),
                requested: bytes,
                limit: lim,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }

    /// The largest buffer the device allows.
    pub fn max_buffer_size(&self) -> u64 {
        self.limits.max_buffer_size
    }

    /// Release every idle pooled buffer to the driver (after a large one-off move, such
    /// as the optimizer's parameters into its arena, whose old buffers would otherwise
    /// stay reserved).
    pub fn trim_pool(&self) {
        self.pool.lock().unwrap().clear();
    }

    /// A storage buffer of at least `bytes` bytes from the pool (contents undefined).
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<GpuBuffer> {
        let bytes = bytes as u64;
        self.check_size(bytes, what)?;
        // the bucket, unless it would pass the largest buffer the device allows
        let size = match bucket(bytes) {
            b if b > self.limits.max_buffer_size => bytes.max(4).div_ceil(4) * 4,
            b => b,
        };
        let reused = self
            .pool
            .lock()
            .unwrap()
            .get_mut(&size)
            .and_then(|v| v.pop_first());
        let buf = match reused {
            Some(b) => b,
            None => self.storage_buffer(size, what),
        };
        Ok(GpuBuffer {
            buf: Some(buf),
            len: bytes,
            base: 0,
            pooled: true,
        })
    }

    /// A new storage buffer that copies may read and write.
    fn storage_buffer(&self, size: u64, what: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A zeroed buffer of exactly `bytes` (rounded up to words) outside the pool, to be
    /// shared by [`GpuBuffer::view`]s: it is freed when the last of them drops.
    pub fn alloc_shared(&self, bytes: usize, what: &str) -> Result<GpuBuffer> {
        let bytes = bytes as u64;
        self.check_size(bytes, what)?;
        let size = bytes.max(4).div_ceil(4) * 4;
        // wgpu zero-initialises a new buffer before its first use
        Ok(GpuBuffer {
            buf: Some(self.storage_buffer(size, what)),
            len: bytes,
            base: 0,
            pooled: false,
        })
    }

    /// A buffer for a kernel's output: from the pool, filled with NaN when poisoning is on.
    pub fn alloc_out(&self, bytes: usize, what: &str) -> Result<GpuBuffer> {
        let buf = self.alloc(bytes, what)?;
        if poison_enabled() && bytes >= 4 {
            kernels::fill_words(&buf, 0, bytes / 4, 0x7fc0_0000)?;
        }
        Ok(buf)
    }

    /// Upload bytes into a fresh pooled buffer. A small upload (ids, masks, a few
    /// scalars) is staged in a buffer of its own and copied in the pending encoder, so it
    /// lands in order with the recorded work and costs no submit. A large one (weights)
    /// submits the pending encoder first, so that the queue write, which executes ahead of
    /// the next submission, cannot overtake earlier recorded work on a recycled buffer.
    pub fn upload(&self, bytes: &[u8], what: &str) -> Result<GpuBuffer> {
        let buf = self.alloc(bytes.len(), what)?;
        let padded4 = bytes.len().next_multiple_of(4);
        if padded4 > 0 && padded4 <= STAGED_UPLOAD_MAX {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ponder upload"),
                size: padded4 as u64,
                usage: wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            {
                let mut view = staging
                    .slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| Error::Gpu(format!("staging an upload of {what}: {e}")))?;
                let mut padded = bytes.to_vec();
                padded.resize(padded4, 0);
                view.copy_from_slice(&padded);
            }
            staging.unmap();
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(&staging, 0, buf.raw(), buf.base, padded4 as u64)
            });
            return Ok(buf);
        }
        let mut p = self.pending.lock().unwrap();
        self.flush_locked(&mut p);
        let padded = bytes.len() & !3;
        if padded > 0 {
            self.queue
                .write_buffer(buf.raw(), buf.base, &bytes[..padded]);
        }
        if padded < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - padded].copy_from_slice(&bytes[padded..]);
            self.queue
                .write_buffer(buf.raw(), buf.base + padded as u64, &tail);
        }
        Ok(buf)
    }

    /// Overwrite a buffer's first bytes (flushes pending work first, as a large `upload`).
    pub fn write(&self, buf: &GpuBuffer, bytes: &[u8]) {
        let mut p = self.pending.lock().unwrap();
        self.flush_locked(&mut p);
        self.queue.write_buffer(buf.raw(), buf.base, bytes);
    }

    /// Record a zero fill of the whole buffer.
    pub fn clear(&self, buf: &GpuBuffer) {
        self.clear_range(buf, 0, buf.size());
    }

    /// Record a zero fill of `size` bytes from byte `off` (multiples of 4).
    pub fn clear_range(&self, buf: &GpuBuffer, off: u64, size: u64) {
        if size > 0 {
            self.with_encoder(|enc| enc.clear_buffer(buf.raw(), buf.base + off, Some(size)));
        }
    }

    /// Record a buffer-to-buffer copy (byte offsets and size multiples of 4).
    pub fn copy(&self, src: &GpuBuffer, src_off: u64, dst: &GpuBuffer, dst_off: u64, size: u64) {
        if size > 0 {
            self.with_encoder(|enc| {
                enc.copy_buffer_to_buffer(
                    src.raw(),
                    src.base + src_off,
                    dst.raw(),
                    dst.base + dst_off,
                    size,
                )
            });
        }
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = self.pending.lock().unwrap();
        // the encoder is locked while a pass is open
        p.pass = None;
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("ponder ops"),
                })
        });
        f(enc)
    }

    /// Submit whatever has been recorded. Does not wait.
    pub fn flush(&self) {
        let mut p = self.pending.lock().unwrap();
        self.flush_locked(&mut p);
    }

    /// Submit under the pending lock, so that no thread can observe "nothing pending"
    /// while another thread's taken encoder is not yet on the queue.
    fn flush_locked(&self, p: &mut Pending) {
        p.pass = None;
        p.dispatches = 0;
        if !p.uniforms.is_empty() {
            // applied before the command buffer below runs, and after the reads of the
            // previous submit (queue order)
            self.queue.write_buffer(&self.ring, 0, &p.uniforms);
        }
        p.uniforms.clear();
        if let Some(mut enc) = p.encoder.take() {
            let mut prof = self.prof.lock().unwrap();
            if prof.on {
                // resolve this encoder's timestamps into a buffer read when the profile closes
                let records = std::mem::take(&mut prof.current);
                let readback = prof
                    .query_set
                    .take()
                    .filter(|_| !records.is_empty())
                    .map(|qs| {
                        let size = (records.len() * 2 * 8) as u64;
                        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("profile resolve"),
                            size,
                            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                            mapped_at_creation: false,
                        });
                        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("profile readback"),
                            size,
                            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        });
                        enc.resolve_query_set(&qs, 0..(records.len() * 2) as u32, &resolve, 0);
                        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, size);
                        read
                    });
                prof.done.push((records, readback));
            }
            drop(prof);
            profile::SUBMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.queue.submit(Some(enc.finish()));
        }
    }

    /// Open a profile: from now on every dispatch is timed (see [`profile`]).
    pub fn profile_start(&self) {
        let mut p = self.pending.lock().unwrap();
        self.flush_locked(&mut p);
        let mut prof = self.prof.lock().unwrap();
        *prof = profile::State {
            on: true,
            timestamps: self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
                && !NO_TIMESTAMPS.load(Ordering::Relaxed),
            started: Some(std::time::Instant::now()),
            counters_at_start: profile::counters(),
            ..Default::default()
        };
    }

    /// Close the open profile: wait for the GPU, read the timestamps, and group them.
    pub fn profile_finish(&self) -> Result<profile::Profile> {
        self.sync()?;
        let st = std::mem::take(&mut *self.prof.lock().unwrap());
        let wall_s = st.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let period = self.queue.get_timestamp_period() as f64;
        let mut records = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0u64);
        for (recs, buf) in st.done {
            let ticks: Option<Vec<u64>> = match &buf {
                Some(b) => Some(bytemuck::pod_collect_to_vec::<u8, u64>(&self.map_read(
                    b,
                    0,
                    b.size() as usize,
                )?)),
                None => None,
            };
            for (i, r) in recs.into_iter().enumerate() {
                let ns = ticks.as_ref().map(|t| {
                    let (a, b) = (t[2 * i], t[2 * i + 1]);
                    first = first.min(a);
                    last = last.max(b);
                    b.saturating_sub(a) as f64 * period
                });
                records.push((r, ns));
            }
        }
        Ok(profile::Profile {
            rows: profile::rows(records),
            timestamps: st.timestamps,
            // the profile's own readbacks are not ponder's
            counts: profile::counters() - st.counters_at_start,
            wall_s,
            gpu_span_ns: if last > first {
                (last - first) as f64 * period
            } else {
                0.0
            },
        })
    }

    /// Submit and wait until the GPU is idle; report any validation error.
    pub fn sync(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        self.check_error()
    }

    /// Explicit readback of `len` bytes starting at byte `offset`.
    pub fn read(&self, buf: &GpuBuffer, offset: usize, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        profile::READBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = (offset & !3) as u64;
        let end = ((offset + len + 3) & !3) as u64;
        let size = end - start;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(buf.raw(), buf.base + start, &staging, 0, size)
        });
        self.flush();
        self.map_read(&staging, offset - start as usize, len)
    }

    /// Wait for the queue, map a `MAP_READ` buffer and copy out `len` bytes from `skip`.
    fn map_read(&self, staging: &wgpu::Buffer, skip: usize, len: usize) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        self.check_error()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("map_async: {e}")))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("map range: {e}")))?;
        let out = data[skip..skip + len].to_vec();
        drop(data);
        staging.unmap();
        Ok(out)
    }

    fn pipeline(
        &self,
        shader: &'static str,
        entry: &'static str,
        spec: &[(&'static str, u32)],
        bindings: &[u32],
        immediates: bool,
    ) -> Result<Arc<Kernel>> {
        let checked = shader_checks();
        let key = PipelineKey {
            shader,
            entry,
            spec: spec.to_vec(),
            checked,
            bindings: bindings.to_vec(),
            immediates,
        };
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let kernel = match immediates {
            true => match self.compile(shader, entry, spec, bindings, self.immediate_budget()) {
                Ok(k) => k,
                // Params larger than the adapter's immediates: this kernel keeps the ring
                Err(_) => self.compile(shader, entry, spec, bindings, 0)?,
            },
            false => self.compile(shader, entry, spec, bindings, 0)?,
        };
        let mut cache = self.pipelines.lock().unwrap();
        // another thread may have compiled the same key meanwhile: keep the first, so
        // that ids (part of the bind-group cache's key) stay one per layout
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let p = Arc::new(Kernel {
            id: cache.len(),
            ..kernel
        });
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// Compile one entry point with an explicit layout: its shape parameters in
    /// `immediate_size` bytes of immediates, or (0) in the uniform ring at binding 0.
    fn compile(
        &self,
        shader: &'static str,
        entry: &'static str,
        spec: &[(&'static str, u32)],
        bindings: &[u32],
        immediate_size: u32,
    ) -> Result<Kernel> {
        let mut src = specialise(shader, entry, spec);
        let access = storage_access(&src);
        let mut entries = Vec::new();
        if immediate_size > 0 {
            let decl = "@group(0) @binding(0) var<uniform> P: Params;";
            assert!(src.contains(decl), "{shader}.wgsl: expected `{decl}`");
            src = src.replace(decl, "var<immediate> P: Params;");
        } else {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        for &b in bindings {
            let read_only = *access.get(&b).unwrap_or_else(|| {
                panic!("{shader}.wgsl:{entry}: binding {b} is not a storage buffer")
            });
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: b,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size,
            });
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // SAFETY: `runtime_checks` argues, kernel by kernel, why every shader in `shaders/`
        // terminates and stays inside its buffers without naga's injected checks; with
        // `PONDER_SHADER_CHECKS=1` the full checks are back.
        let module = unsafe {
            self.device
                .create_shader_module_trusted(desc, runtime_checks())
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "compiling {shader}.wgsl:{entry} {spec:?}: {e}"
            )));
        }
        Ok(Kernel {
            pipeline,
            layout,
            immediate_size,
            id: 0,
        })
    }

    /// The bind group of one dispatch: the uniform ring (at a dynamic offset) and the
    /// storage windows, reused from the cache when this kernel met the same windows before.
    fn bind_group(
        &self,
        kernel: &Kernel,
        uniform_size: u64,
        storage: &[(u32, &wgpu::Buffer, u64, u64)],
    ) -> wgpu::BindGroup {
        let key = BindKey {
            kernel: kernel.id,
            uniform_size,
            storage: storage
                .iter()
                .map(|&(b, buf, o, n)| (b, buf.clone(), o, n))
                .collect(),
        };
        let mut cache = self.bind_groups.lock().unwrap();
        if let Some(g) = cache.get(&key) {
            return g.clone();
        }
        let mut entries = Vec::new();
        if kernel.immediate_size == 0 {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.ring,
                    offset: 0,
                    size: std::num::NonZeroU64::new(uniform_size),
                }),
            });
        }
        for &(b, buf, offset, size) in storage {
            entries.push(wgpu::BindGroupEntry {
                binding: b,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf,
                    offset,
                    size: std::num::NonZeroU64::new(size),
                }),
            });
        }
        let g = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        profile::BIND_GROUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, g.clone());
        g
    }

    /// Record one compute dispatch. `uniform` (the shader's `P: Params`) goes as
    /// immediates where they fit, else to binding 0 from the uniform ring; `bindings` are
    /// (binding number, buffer) pairs for the storage buffers the entry point uses, each
    /// bound whole.
    pub fn dispatch(
        &self,
        shader: &'static str,
        entry: &'static str,
        spec: &[(&'static str, u32)],
        uniform: &[u32],
        bindings: &[(u32, &GpuBuffer)],
        groups: [u32; 3],
    ) -> Result<()> {
        let bound: Vec<Binding> = bindings.iter().map(|&(b, buf)| (b, buf, None)).collect();
        self.dispatch_bound(shader, entry, spec, uniform, &bound, groups)
    }

    /// [`dispatch`](Self::dispatch) with a window per binding: `Some((offset, size))`
    /// binds those bytes of the buffer (offset a multiple of [`binding_align`](Self::binding_align)),
    /// `None` the whole tensor. A tensor over [`binding_limit`](Self::binding_limit) bound
    /// whole is refused with the kernel's name: the kernels that can meet one split it
    /// first ([`split`]).
    pub fn dispatch_bound(
        &self,
        shader: &'static str,
        entry: &'static str,
        spec: &[(&'static str, u32)],
        uniform: &[u32],
        bindings: &[Binding],
        groups: [u32; 3],
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let cost = profile::take_cost();
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!(
                "{shader}:{entry}: grid {groups:?} exceeds {max} workgroups per dimension"
            )));
        }
        let limit = self.binding_limit();
        let mut windows = Vec::with_capacity(bindings.len());
        for &(b, buf, window) in bindings {
            let (offset, size) = match window {
                Some(w) => w,
                // a pool bucket may be larger than the tensor in it: bind the tensor
                None if buf.size() > limit => (0, buf.len.max(4).div_ceil(4) * 4),
                None => (0, buf.size()),
            };
            if size > limit {
                return Err(Error::DeviceLimit {
                    what: format!(
                        "{shader}:{entry} binding {b} (a tensor this kernel does not split)"
                    ),
                    requested: size,
                    limit,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
            windows.push((offset, size));
        }
        let numbers: Vec<u32> = bindings.iter().map(|&(b, _, _)| b).collect();
        let budget = self.immediate_budget() as usize;
        let kernel = self.pipeline(
            shader,
            entry,
            spec,
            &numbers,
            budget > 0 && 4 * uniform.len() <= budget,
        )?;
        // In the ring every uniform is padded to 256 bytes, at least as large as any
        // shader's Params and a multiple of every adapter's uniform offset alignment (at
        // most 256). As immediates, all the layout's bytes are written.
        let mut u = uniform.to_vec();
        match kernel.immediate_size {
            0 => u.resize(uniform.len().div_ceil(64).max(1) * 64, 0),
            n => u.resize(n as usize / 4, 0),
        }
        let ubytes: &[u8] = bytemuck::cast_slice(&u);
        let storage: Vec<(u32, &wgpu::Buffer, u64, u64)> = bindings
            .iter()
            .zip(&windows)
            .map(|(&(b, buf, _), &(offset, size))| (b, buf.raw(), buf.base + offset, size))
            .collect();
        let in_ring = kernel.immediate_size == 0;
        let bind_group = self.bind_group(
            &kernel,
            if in_ring { ubytes.len() as u64 } else { 0 },
            &storage,
        );
        let submit = {
            let mut p = self.pending.lock().unwrap();
            if in_ring && p.uniforms.len() + ubytes.len() > RING_BYTES as usize {
                self.flush_locked(&mut p);
            }
            let offset = p.uniforms.len() as u32;
            if in_ring {
                p.uniforms.extend_from_slice(ubytes);
            }
            let mut prof = self.prof.lock().unwrap();
            if prof.on && prof.timestamps && prof.query_set.is_none() {
                prof.query_set = Some(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (2 * MAX_PENDING_DISPATCHES) as u32,
                }));
            }
            let timed = prof.on && prof.query_set.is_some();
            if timed {
                // a profiled dispatch has a pass of its own, timed at its two ends
                p.pass = None;
            }
            let Pending { encoder, pass, .. } = &mut *p;
            let enc = encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("ponder ops"),
                    })
            });
            let pass = pass.get_or_insert_with(|| {
                let k = prof.current.len() as u32;
                let timestamp_writes = prof.query_set.as_ref().filter(|_| timed).map(|qs| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: qs,
                        beginning_of_pass_write_index: Some(2 * k),
                        end_of_pass_write_index: Some(2 * k + 1),
                    }
                });
                profile::PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("ponder ops"),
                    timestamp_writes,
                })
                .forget_lifetime()
            });
            pass.set_pipeline(&kernel.pipeline);
            if in_ring {
                pass.set_bind_group(0, &bind_group, &[offset]);
            } else {
                profile::IMMEDIATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pass.set_immediates(0, ubytes);
                pass.set_bind_group(0, &bind_group, &[]);
            }
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            if timed {
                p.pass = None;
            }
            if prof.on {
                prof.current.push(profile::Record {
                    kernel: format!("{shader}:{entry}"),
                    host_ns: t0.elapsed().as_nanos() as u64,
                    cost,
                });
            }
            drop(prof);
            profile::DISPATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.dispatches += 1;
            p.dispatches >= MAX_PENDING_DISPATCHES
        };
        if submit {
            self.flush();
        }
        Ok(())
    }
}

/// Whether each storage binding of a specialised source is read-only, from its
/// declaration `@group(0) @binding(N) var<storage, read>` (or `read_write`). The explicit
/// bind-group layouts need it: wgpu requires a layout's access to equal the shader's.
fn storage_access(src: &str) -> HashMap<u32, bool> {
    let mut out = HashMap::new();
    for line in src.lines() {
        let Some(at) = line.find("@binding(") else {
            continue;
        };
        let rest = &line[at + "@binding(".len()..];
        let (Some(end), Some(var)) = (rest.find(')'), rest.find("var<storage")) else {
            continue;
        };
        let Ok(b) = rest[..end].trim().parse::<u32>() else {
            continue;
        };
        let decl = rest[var..].split('>').next().unwrap_or("");
        let read_only = !decl.contains("read_write");
        // a binding declared twice (two entry points) is writable if either says so
        let e = out.entry(b).or_insert(read_only);
        *e &= read_only;
    }
    out
}

/// Build a shader's final source: the prelude, then the shader, with `#if NAME` /
/// `#else` / `#endif` lines resolved against the specialisation (a name that is absent
/// counts as 0) and `{{NAME}}` markers replaced by its value. Specialisations are
/// compile-time constants, so they may size private and workgroup arrays. `F16 = 1` also
/// enables WGSL's f16 extension.
pub(crate) fn specialise(
    shader: &'static str,
    entry: &str,
    spec: &[(&'static str, u32)],
) -> String {
    let value = |name: &str| spec.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    let mut out = String::new();
    if value("F16") == Some(1) {
        out.push_str("enable f16;\n");
    }
    // Each level of the stack: (this branch is taken, the enclosing levels are live).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for line in PRELUDE.lines().chain(shader_source(shader).lines()) {
        let t = line.trim();
        let live = stack
            .last()
            .map(|&(taken, outer)| taken && outer)
            .unwrap_or(true);
        if let Some(name) = t.strip_prefix("#if ") {
            stack.push((value(name.trim()).unwrap_or(0) != 0, live));
        } else if t == "#else" {
            let top = stack
                .last_mut()
                .unwrap_or_else(|| panic!("{shader}.wgsl: #else without #if"));
            top.0 = !top.0;
        } else if t == "#endif" {
            stack
                .pop()
                .unwrap_or_else(|| panic!("{shader}.wgsl: #endif without #if"));
        } else if live {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "{shader}.wgsl: unterminated #if");
    for (name, v) in spec {
        out = out.replace(&format!("{{{{{name}}}}}"), &v.to_string());
    }
    if let Some(at) = out.find("{{") {
        let end = out[at..]
            .find("}}")
            .map(|e| at + e + 2)
            .unwrap_or(out.len());
        panic!(
            "{shader}.wgsl:{entry}: specialisation {} was not given",
            &out[at..end]
        );
    }
    out
}

/// Workgroups for `n` threads of `wg` per group, split over x and y so that neither
/// exceeds 65535 (kernels rebuild the linear index from `num_workgroups`).
pub fn grid_1d(n: usize, wg: usize) -> [u32; 3] {
    let groups = n.div_ceil(wg);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(65535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

/// Uniform builder: u32 words; f32 go in as bits. Vectors of 8 start on 16-byte bounds.
#[derive(Default)]
pub struct Uniform(pub Vec<u32>);

impl Uniform {
    pub fn new() -> Self {
        Uniform(Vec::new())
    }
    pub fn u(mut self, v: usize) -> Self {
        self.0
            .push(u32::try_from(v).expect("uniform value fits u32"));
        self
    }
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    /// Eight u32 (two vec4<u32>), padded with `fill`.
    pub fn v8(mut self, vals: &[usize], fill: usize) -> Self {
        assert!(
            self.0.len().is_multiple_of(4),
            "v8 must start 16-byte aligned"
        );
        assert!(vals.len() <= 8);
        for i in 0..8 {
            self = self.u(*vals.get(i).unwrap_or(&fill));
        }
        self
    }
}
