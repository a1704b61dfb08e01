//! Shader modules and pipelines: the prelude, specialisation constants, the pipeline and
//! bind-group caches, and each kernel's binding layout read from its WGSL.

#[allow(unused_imports)]
use super::*;

/// Whether each storage binding of a specialised source is read-only, from its
/// declaration `@group(0) @binding(N) var<storage, read>` (or `read_write`). The explicit
/// bind-group layouts need it: wgpu requires a layout's access to equal the shader's.
pub(super) fn storage_access(src: &str) -> HashMap<u32, bool> {
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

impl GpuContext {
    pub(super) fn pipeline(
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
    pub(super) fn compile(
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
    pub(super) fn bind_group(
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
}
