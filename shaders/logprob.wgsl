// Fused token log-probabilities over logits (rows, V):
//   lse_n = log sum_j exp(x_nj),  lp_n = x_{n,t_n} - lse_n   (0 when t_n < 0 or t_n >= V: ignored)
// Backward: dx_nj = g_n ([j == t_n] - exp(x_nj - lse_n)), 0 for ignored rows.

struct Params {
    rows: u32,
    v: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> TG: array<i32>;
@group(0) @binding(3) var<storage, read> G: array<f32>;
@group(0) @binding(4) var<storage, read_write> LP: array<f32>;
@group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
@group(0) @binding(6) var<storage, read_write> DX: array<f32>;

@compute @workgroup_size(256)
fn logprob_fwd(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.rows) {
        return;
    }
    let base = row * P.v;
    var m = NEG_BIG;
    for (var j = lid; j < P.v; j = j + 256u) {
        m = max(m, X[base + j]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < P.v; j = j + 256u) {
        s = s + exp(X[base + j] - m);
    }
    s = wg_sum(s, lid);
    if (lid == 0u) {
        let lse = m + log(s);
        LSE[row] = lse;
        let t = TG[row];
        var lp = 0.0;
        if (t >= 0 && u32(t) < P.v) {
            lp = X[base + u32(t)] - lse;
        }
        LP[row] = lp;
    }
}

@compute @workgroup_size(256)
fn logprob_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.rows * P.v) {
        return;
    }
    let row = i / P.v;
    let j = i % P.v;
    let t = TG[row];
    var d = 0.0;
    if (t >= 0 && u32(t) < P.v) {
        let onehot = select(0.0, 1.0, u32(t) == j);
        d = G[row] * (onehot - exp(X[i] - LSE[row]));
    }
    DX[i] = d;
}
