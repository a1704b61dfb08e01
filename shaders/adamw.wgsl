// AdamW in place, PyTorch semantics (decoupled weight decay, bias correction):
//   p -= lr wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1^t,  bc2 = 1 - b2^t

struct Params {
    n: u32,
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    bc2: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> PARAM: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> VV: array<f32>;
#if CLIP
// the gradient-clipping coefficient min(1, max_norm / norm), computed on the device
@group(0) @binding(5) var<storage, read> COEF: array<f32>;
#endif

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
#if CLIP
    let g = G[i] * COEF[0];
#else
    let g = G[i];
#endif
    var p = PARAM[i];
    p = p - P.lr * P.wd * p;
    let m = P.b1 * M[i] + (1.0 - P.b1) * g;
    let v = P.b2 * VV[i] + (1.0 - P.b2) * g * g;
    M[i] = m;
    VV[i] = v;
    PARAM[i] = p - P.lr * (m / P.bc1) / (sqrt(v / P.bc2) + P.eps);
}
