//! Recording and submitting work: the pending encoder and its compute passes, immediates
//! and the uniform ring, staged uploads, copies, readbacks, profiling and dispatch.

#[allow(unused_imports)]
use super::*;

impl GpuContext {
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

    pub(super) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
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
    pub(super) fn flush_locked(&self, p: &mut Pending) {
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
    pub(super) fn map_read(
        &self,
        staging: &wgpu::Buffer,
        skip: usize,
        len: usize,
    ) -> Result<Vec<u8>> {
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
