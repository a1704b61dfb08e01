// SwiGLU: y = silu(a) * u = a * sigmoid(a) * u.
// Backward: da = g * u * (s + a s (1 - s)),  du = g * a * s,  s = sigmoid(a).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read> G: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
@group(0) @binding(5) var<storage, read_write> O2: array<f32>;

@compute @workgroup_size(256)
fn swiglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    let a = A[i];
    O[i] = a * sigmoid(a) * U[i];
}

@compute @workgroup_size(256)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    let a = A[i];
    let s = sigmoid(a);
    let g = G[i];
    O[i] = g * U[i] * (s + a * s * (1.0 - s));
    O2[i] = g * a * s;
}
