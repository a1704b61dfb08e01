//! The wgpu backend: one process-wide context (adapter, device, queue), a pipeline cache
//! keyed by (shader, entry point, specialisation), a size-bucketed buffer pool, and one
//! pending command encoder that ops record into. Nothing waits on the GPU except an
//! explicit readback ([`GpuContext::read`]) or [`GpuContext::sync`].

mod context;
mod encoder;
pub mod ops;
mod pipelines;
mod pool;
/// The op dispatches under their former name.
pub use ops as kernels;
pub use pool::peak_bytes;
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
        "sample" => include_str!("../../../shaders/sample.wgsl"),
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

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every fresh kernel output with NaN before the kernel runs (tests turn this on, as
/// does `PONDER_POISON=1`), so an element a kernel forgets to write cannot pass a check.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

pub fn poison_enabled() -> bool {
    POISON.load(Ordering::Relaxed)
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
