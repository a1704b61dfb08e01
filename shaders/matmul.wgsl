// Batched C = A @ B on strided operands, tiled through workgroup memory with register
// blocking: a workgroup computes a BM x BN tile of C, each of its 256 threads a TM x TN
// block held in registers; K advances BK at a time. Edges are bounds-checked, so any M, N,
// K work. A_KFAST / B_NFAST pick the tile load order that walks memory contiguously.
// B may be stored in 16 bits (frozen weights): natively as f16 where the adapter offers
// shader-f16 (B_F16N), else unpacked from u32 words (B_F16U for f16, B_BF16 for bf16).
// Accumulation is always f32.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
    a_off: u32,
    a_sb: u32,
    a_sr: u32,
    a_sc: u32,
    b_off: u32,
    b_sb: u32,
    b_sr: u32,
    b_sc: u32,
    // C's offset, batch and row strides (dense rows unless the matmul is split)
    c_off: u32,
    c_sb: u32,
    c_sr: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
#if B_F16N
@group(0) @binding(2) var<storage, read> B: array<f16>;
fn load_b(i: u32) -> f32 {
    return f32(B[i]);
}
#endif
#if B_F16U
@group(0) @binding(2) var<storage, read> B: array<u32>;
fn load_b(i: u32) -> f32 {
    return unpack2x16float(B[i >> 1u])[i & 1u];
}
#endif
#if B_BF16
@group(0) @binding(2) var<storage, read> B: array<u32>;
fn load_b(i: u32) -> f32 {
    return bitcast<f32>(((B[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu) << 16u);
}
#endif
#if B_F32
@group(0) @binding(2) var<storage, read> B: array<f32>;
fn load_b(i: u32) -> f32 {
    return B[i];
}
#endif
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const A_KFAST: u32 = {{A_KFAST}}u;
const B_NFAST: u32 = {{B_NFAST}}u;
// ACC = 1: add to C instead of overwriting it (the later K blocks of a split matmul)
const ACC: u32 = {{ACC}}u;

// k-major tiles: As[kk * BM + m], Bs[kk * BN + n]
var<workgroup> As: array<f32, BM * BK>;
var<workgroup> Bs: array<f32, BK * BN>;

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tr = lid / (BN / TN);
    let tc = lid % (BN / TN);
    let abase = P.a_off + wid.z * P.a_sb;
    let bbase = P.b_off + wid.z * P.b_sb;
    var acc: array<f32, TM * TN>;
    var a: array<f32, TM>;
    var b: array<f32, TN>;
    for (var k0 = 0u; k0 < P.k; k0 = k0 + BK) {
        for (var e = lid; e < BM * BK; e = e + 256u) {
            var m: u32;
            var kk: u32;
            if (A_KFAST == 1u) {
                m = e / BK;
                kk = e % BK;
            } else {
                kk = e / BM;
                m = e % BM;
            }
            let gm = row0 + m;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < P.m && gk < P.k) {
                v = A[abase + gm * P.a_sr + gk * P.a_sc];
            }
            As[kk * BM + m] = v;
        }
        for (var e = lid; e < BK * BN; e = e + 256u) {
            var nn: u32;
            var kk: u32;
            if (B_NFAST == 1u) {
                kk = e / BN;
                nn = e % BN;
            } else {
                nn = e / BK;
                kk = e % BK;
            }
            let gn = col0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < P.n && gk < P.k) {
                v = load_b(bbase + gk * P.b_sr + gn * P.b_sc);
            }
            Bs[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            // thread (tr, tc) owns rows tr + i * (BM / TM) and columns tc + j * (BN / TN):
            // neighbouring threads read neighbouring words (no bank conflicts) and the
            // final stores are coalesced
            for (var i = 0u; i < TM; i = i + 1u) {
                a[i] = As[kk * BM + tr + i * (BM / TM)];
            }
            for (var j = 0u; j < TN; j = j + 1u) {
                b[j] = Bs[kk * BN + tc + j * (BN / TN)];
            }
            for (var i = 0u; i < TM; i = i + 1u) {
                for (var j = 0u; j < TN; j = j + 1u) {
                    acc[i * TN + j] = fma(a[i], b[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    let cbase = P.c_off + wid.z * P.c_sb;
    for (var i = 0u; i < TM; i = i + 1u) {
        let gm = row0 + tr + i * (BM / TM);
        if (gm >= P.m) {
            continue;
        }
        for (var j = 0u; j < TN; j = j + 1u) {
            let gn = col0 + tc + j * (BN / TN);
            if (gn < P.n) {
                let ci = cbase + gm * P.c_sr + gn;
                if (ACC == 1u) {
                    C[ci] = C[ci] + acc[i * TN + j];
                } else {
                    C[ci] = acc[i * TN + j];
                }
            }
        }
    }
}
