// Casts. 16-bit values are packed two per u32 word, element e in the low half when e is
// even. f32 -> bf16 rounds to nearest even; f32 -> f16 uses pack2x16float.

struct Params {
    n: u32,
    off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<u32>;
@group(0) @binding(2) var<storage, read_write> D: array<u32>;

fn half_bits(e: u32) -> u32 {
    return (S[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
}

@compute @workgroup_size(256)
fn f16_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    D[i] = bitcast<u32>(unpack2x16float(half_bits(P.off + i)).x);
}

@compute @workgroup_size(256)
fn bf16_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    D[i] = half_bits(P.off + i) << 16u;
}

fn f32_at(i: u32) -> f32 {
    if (i < P.n) {
        return bitcast<f32>(S[P.off + i]);
    }
    return 0.0;
}

fn to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u; // NaN stays a (quiet) NaN
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// One thread per output word (two elements).
@compute @workgroup_size(256)
fn f32_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = linear_id(gid, nwg);
    if (2u * w >= P.n) {
        return;
    }
    D[w] = pack2x16float(vec2<f32>(f32_at(2u * w), f32_at(2u * w + 1u)));
}

@compute @workgroup_size(256)
fn f32_to_bf16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = linear_id(gid, nwg);
    if (2u * w >= P.n) {
        return;
    }
    D[w] = to_bf16(f32_at(2u * w)) | (to_bf16(f32_at(2u * w + 1u)) << 16u);
}

@compute @workgroup_size(256)
fn u32_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    D[i] = bitcast<u32>(f32(S[P.off + i]));
}

@compute @workgroup_size(256)
fn i32_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    D[i] = bitcast<u32>(f32(bitcast<i32>(S[P.off + i])));
}
