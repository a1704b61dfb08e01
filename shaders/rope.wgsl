// Rotary embedding, HF rotate_half convention, x (B, T, H, HD), tables (1|B, T, HD):
//   y_i = x_i cos_i + rot_i sin_i,  rot = cat(-x[h:], x[:h]),  h = HD / 2
// BWD = 1 applies the transpose: dx_i = g_i cos_i + (i < h ? g_{i+h} sin_{i+h} : -g_{i-h} sin_{i-h})

struct Params {
    b: u32,
    t: u32,
    h: u32,
    hd: u32,
    batched: u32,
    // the dispatch covers positions first .. first + rows of the B x T; X and Y are
    // bound from position `first` (a window when the tensor is over the binding limit)
    first: u32,
    rows: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> COS: array<f32>;
@group(0) @binding(3) var<storage, read> SIN: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

const BWD: u32 = {{BWD}}u;

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.rows * P.h * P.hd) {
        return;
    }
    let e = i % P.hd;
    let pos = P.first + i / (P.h * P.hd);
    let ti = pos % P.t;
    // a shared table (T, HD) is bound whole; a per-batch one (B, T, HD) from `first`
    var tab = ti * P.hd;
    if (P.batched == 1u) {
        tab = (pos - P.first) * P.hd;
    }
    let half = P.hd / 2u;
    let base = i - e;
    let x = X[i] * COS[tab + e];
    if (BWD == 0u) {
        if (e < half) {
            Y[i] = x - X[base + e + half] * SIN[tab + e];
        } else {
            Y[i] = x + X[base + e - half] * SIN[tab + e];
        }
    } else {
        if (e < half) {
            Y[i] = x + X[base + e + half] * SIN[tab + e + half];
        } else {
            Y[i] = x - X[base + e - half] * SIN[tab + e - half];
        }
    }
}
