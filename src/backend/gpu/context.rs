//! The GPU context's setup: adapter choice, limits, features and the switches that
//! environment flags and tests set.

#[allow(unused_imports)]
use super::*;

/// `PONDER_POISON=1`, `PONDER_NO_SUBGROUPS=1` and `PONDER_NO_F16=1`, read once when the
/// context is created (not on every allocation or dispatch).
pub(super) fn read_env_flags() {
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

/// Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid or not set" to the terminal
/// when the variable is missing (containers, cron, CI). Nothing of ponder's uses that
/// directory, so point it at a private per-user one before the instance is created.
pub(super) fn quiet_mesa_runtime_dir() {
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

pub(super) fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    pub(super) fn new() -> Result<GpuContext> {
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
            None if crate::dist::size() > 1 => {
                // one MPI rank per adapter of the best type: local rank mod their count
                let best = device_type_rank(ranked[0].get_info().device_type);
                let same: Vec<&wgpu::Adapter> = ranked
                    .iter()
                    .copied()
                    .filter(|a| device_type_rank(a.get_info().device_type) == best)
                    .collect();
                let i = crate::dist::local_rank() % same.len();
                (
                    same[i],
                    format!(
                        "MPI local rank {} takes adapter {i} of the {} of the best device type",
                        crate::dist::local_rank(),
                        same.len()
                    ),
                )
            }
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
    pub(super) fn immediate_budget(&self) -> u32 {
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

    pub(super) fn check_error(&self) -> Result<()> {
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
}
