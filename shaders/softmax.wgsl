// Row-wise softmax / log_softmax over the last axis: one workgroup per row.
//   m = max_j x_j,  s = sum_j exp(x_j - m)
//   softmax_i = exp(x_i - m) / s,  log_softmax_i = x_i - m - log(s)

struct Params {
    rows: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const LOG: u32 = {{LOG}}u;

@compute @workgroup_size(256)
fn softmax_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SG
    @builtin(subgroup_invocation_id) sg_l: u32,
    @builtin(subgroup_id) sg_i: u32,
    @builtin(num_subgroups) sg_n: u32,
#endif
) {
#if SG
    sg_lane = sg_l;
    sg_index = sg_i;
    sg_count = sg_n;
#endif
    let row = group_id(wid, nwg);
    if (row >= P.rows) {
        return;
    }
    let base = row * P.n;
    var m = NEG_BIG;
    for (var j = lid; j < P.n; j = j + 256u) {
        m = max(m, X[base + j]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < P.n; j = j + 256u) {
        s = s + exp(X[base + j] - m);
    }
    s = wg_sum(s, lid);
    let ls = log(s);
    for (var j = lid; j < P.n; j = j + 256u) {
        let x = X[base + j] - m;
        if (LOG == 1u) {
            Y[base + j] = x - ls;
        } else {
            Y[base + j] = exp(x) / s;
        }
    }
}
