//! Buffers: the size-bucketed pool, the arena's shared buffers, output allocation
//! (poisoned in tests) and views.

#[allow(unused_imports)]
use super::*;

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

/// Round a byte size up to its pool bucket: powers of two below 1 MiB, then steps of an
/// eighth of the enclosing power of two (at most 12.5% waste).
pub(super) fn bucket(size: u64) -> u64 {
    let size = size.max(256);
    let p = size.next_power_of_two();
    if p <= 1 << 20 {
        return p;
    }
    let step = p / 8;
    size.div_ceil(step) * step
}

/// Bytes of device buffers the pool holds from the driver now (in use or idle), and the
/// most it has held: pooled buffers count until [`GpuContext::trim_pool`] releases them,
/// shared ones (the optimizer arena, which lives as long as the run) from their creation.
static HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The most device memory the pool has held at once, in bytes (see [`HELD`]).
pub fn peak_bytes() -> u64 {
    PEAK.load(std::sync::atomic::Ordering::Relaxed)
}

impl GpuContext {
    /// Release every idle pooled buffer to the driver (after a large one-off move, such
    /// as the optimizer's parameters into its arena, whose old buffers would otherwise
    /// stay reserved).
    pub fn trim_pool(&self) {
        let mut pool = self.pool.lock().unwrap();
        let freed: u64 = pool.iter().map(|(size, v)| size * v.len() as u64).sum();
        HELD.fetch_sub(freed, std::sync::atomic::Ordering::Relaxed);
        pool.clear();
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
    pub(super) fn storage_buffer(&self, size: u64, what: &str) -> wgpu::Buffer {
        use std::sync::atomic::Ordering::Relaxed;
        let held = HELD.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(held, Relaxed);
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
}
