//! ggml's tensor types and their block layouts: how many values a block holds, how many
//! bytes it takes, and how to turn a run of blocks back into f32 values (dequantization).
//! Q8_0 can also be written (quantized), for `ponder save --dtype q8_0`.
//!
//! Each block stores small integers and one or two f16 (or, for K-quants, packed 6-bit)
//! scales; a value is `scale * q` or `scale * q - min`. The arithmetic below keeps
//! ggml's reference order of float operations (for example `(d * sc) * q - (dmin * m)`),
//! so the f32 values equal llama.cpp's and gguf-py's bit for bit.

use half::f16;

/// The ggml tensor types ponder reads (`GgmlType as u32` is the id stored in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    BF16 = 30,
}

/// Values per K-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// The type with file id `id`; `Err` holds ggml's name for a known type ponder does not
    /// read (or "unknown").
    pub fn from_id(id: u32) -> Result<GgmlType, &'static str> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            4 | 5 => return Err("Q4_2/Q4_3 (removed from ggml in 2023)"),
            9 => return Err("Q8_1"),
            16 => return Err("IQ2_XXS"),
            17 => return Err("IQ2_XS"),
            18 => return Err("IQ3_XXS"),
            19 => return Err("IQ1_S"),
            20 => return Err("IQ4_NL"),
            21 => return Err("IQ3_S"),
            22 => return Err("IQ2_S"),
            23 => return Err("IQ4_XS"),
            24 => return Err("I8"),
            25 => return Err("I16"),
            26 => return Err("I32"),
            27 => return Err("I64"),
            28 => return Err("F64"),
            29 => return Err("IQ1_M"),
            34 => return Err("TQ1_0"),
            35 => return Err("TQ2_0"),
            39 => return Err("MXFP4"),
            _ => return Err("unknown"),
        })
    }

    /// ggml's name for the type, as llama.cpp prints it.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            BF16 => "BF16",
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 2 + 16),
            Q4_1 => (32, 2 + 2 + 16),
            Q5_0 => (32, 2 + 4 + 16),
            Q5_1 => (32, 2 + 2 + 4 + 16),
            Q8_0 => (32, 2 + 32),
            Q2K => (QK_K, 16 + 64 + 2 + 2),
            Q3K => (QK_K, 32 + 64 + 12 + 2),
            Q4K => (QK_K, 2 + 2 + 12 + 128),
            Q5K => (QK_K, 2 + 2 + 12 + 32 + 128),
            Q6K => (QK_K, 128 + 64 + 16 + 2),
            Q8K => (QK_K, 4 + QK_K + 2 * 16),
        }
    }

    /// Bytes of `n` values, or None when `n` is not a whole number of blocks (or overflows).
    pub fn bytes_of(self, n: u64) -> Option<u64> {
        let (per, bytes) = self.block();
        if !n.is_multiple_of(per as u64) {
            return None;
        }
        (n / per as u64).checked_mul(bytes as u64)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantize `bytes` (a whole number of blocks of type `t`) into `out`, whose length is
/// the number of values they hold.
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (per, size) = t.block();
    assert_eq!(
        bytes.len() / size * per,
        out.len(),
        "dequantize: sizes disagree"
    );
    assert_eq!(bytes.len() % size, 0, "dequantize: a partial block");
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(per)) {
        match t {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => {
                y[0] = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            }
            GgmlType::Q4_0 => q4_0(b, y),
            GgmlType::Q4_1 => q4_1(b, y),
            GgmlType::Q5_0 => q5_0(b, y),
            GgmlType::Q5_1 => q5_1(b, y),
            GgmlType::Q8_0 => q8_0(b, y),
            GgmlType::Q2K => q2_k(b, y),
            GgmlType::Q3K => q3_k(b, y),
            GgmlType::Q4K => q4_k(b, y),
            GgmlType::Q5K => q5_k(b, y),
            GgmlType::Q6K => q6_k(b, y),
            GgmlType::Q8K => q8_k(b, y),
        }
    }
}

// Q4_0: d (f16), 16 bytes of nibbles. Value j is the low nibble of byte j, value j + 16
// the high nibble; both offset by 8.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xf) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

// Q4_1: d, m (f16), nibbles as Q4_0, unsigned: y = q * d + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xf) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

// Q5_0: d (f16), qh (32 fifth bits, u32 LE), nibbles as Q4_0; value j's fifth bit is bit j
// of qh, value j + 16's is bit j + 16. Offset by 16.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((qs[j] & 0xf) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

// Q5_1: d, m (f16), qh, nibbles; unsigned: y = q * d + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0xf) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

// Q8_0: d (f16), 32 signed bytes.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

// Q8_K: d (f32), 256 signed bytes, then 16 i16 partial sums (not needed to dequantize).
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        y[j] = d * (b[4 + j] as i8) as f32;
    }
}

// Q2_K: scales[16] (low nibble: scale, high nibble: min, of a 16-value group), qs[64]
// (2-bit values), d, dmin (f16). Two halves of 128 values; in each, four passes over 32
// bytes take successive bit pairs (shift 0, 2, 4, 6), each pass covering two groups of 16.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut out = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xf) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for l in 0..16 {
                    y[out] = dl * ((q[part * 16 + l] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

// Q3_K: hmask[32] (the third bit, one bit-plane per pass), qs[64] (low 2 bits), scales[12]
// (sixteen 6-bit scales packed: the low 4 bits in bytes 0..8, the high 2 bits in bytes
// 8..12), d (f16). A value is d * (scale - 32) * (q - 4 if its hmask bit is clear).
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let packed = &b[96..108];
    let d = f16_at(b, 108);
    let mut sc = [0i8; 16];
    for (i, s) in sc.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0xf
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * sc[is] as f32;
                is += 1;
                for l in 0..16 {
                    let k = part * 16 + l;
                    let low = ((q[k] >> shift) & 3) as i8;
                    let v = low - if hm[k] & m != 0 { 0 } else { 4 };
                    y[out] = dl * v as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from Q4_K/Q5_K's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// (scale, min) as f32 for the two sub-blocks of Q4_K/Q5_K chunk `c`: d * sc, dmin * m.
fn chunk_scales(c: usize, scales: &[u8], d: f32, dmin: f32) -> [(f32, f32); 2] {
    [2 * c, 2 * c + 1].map(|j| {
        let (sc, m) = scale_min_k4(j, scales);
        (d * sc as f32, dmin * m as f32)
    })
}

// Q4_K: d, dmin (f16), scales[12], qs[128]. Four chunks of 64 values over 32 bytes each:
// the low nibbles give 32 values with sub-block scale 2i, the high nibbles 32 with 2i + 1.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let [(d1, m1), (d2, m2)] = chunk_scales(c, scales, d, dmin);
        let q = &qs[c * 32..c * 32 + 32];
        let y = &mut y[c * 64..c * 64 + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0xf) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

// Q5_K: as Q4_K, with qh[32] holding the fifth bits: chunk c's low-nibble values take bit
// 2c of qh[l], its high-nibble values bit 2c + 1.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let [(d1, m1), (d2, m2)] = chunk_scales(c, scales, d, dmin);
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let q = &qs[c * 32..c * 32 + 32];
        let y = &mut y[c * 64..c * 64 + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0xf) + h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d (f16). Two halves
// of 128 values; in each, value l (0..32) and its three partners at +32, +64, +96 take
// their bits from ql[l], ql[l + 32] and the four bit pairs of qh[l]. Offset by 32.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Quantize `x` (a multiple of 32 values) to Q8_0 blocks: per block d = max|x| / 127 and
/// q = round(x / d), rounding halves away from zero, as ggml's reference quantizer does.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(
        x.len() % 32,
        0,
        "quantize_q8_0: not a whole number of blocks"
    );
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for v in blk {
            out.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let b = quantize_q8_0(&x);
        assert_eq!(b.len(), 2 * 34);
        let mut y = vec![f32::NAN; 64];
        dequantize(GgmlType::Q8_0, &b, &mut y);
        for (blk, yb) in x.chunks(32).zip(y.chunks(32)) {
            let step = blk.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for (a, b) in blk.iter().zip(yb) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3 * step, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn block_sizes_are_ggml_s() {
        // bytes per block as ggml's block_* structs declare them
        let want = [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q2K, 84),
            (GgmlType::Q3K, 110),
            (GgmlType::Q4K, 144),
            (GgmlType::Q5K, 176),
            (GgmlType::Q6K, 210),
            (GgmlType::Q8K, 292),
        ];
        for (t, bytes) in want {
            assert_eq!(t.block().1, bytes, "{}", t.name());
            assert_eq!(GgmlType::from_id(t as u32), Ok(t));
        }
    }
}
