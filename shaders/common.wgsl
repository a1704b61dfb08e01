// Prelude shared by every ponder shader (prepended before compilation).
// 1-D kernels run 256 threads per workgroup; grids are split over x and y so that neither
// exceeds 65535 workgroups, and `linear_id` rebuilds the flat thread index.

const WG: u32 = 256u;

fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

// Flat workgroup index for row kernels (one workgroup per row).
fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Most negative finite f32: the identity of max (kernels avoid infinities).
const NEG_BIG: f32 = -3.4028235e38;

var<workgroup> red_f: array<f32, 256>;

// With SG = 1 (the adapter offers subgroups) the row reductions combine each subgroup in
// registers with subgroupAdd/subgroupMax and only the per-subgroup partials go through
// workgroup memory. Entry points that reduce set these from their subgroup builtins.
#if SG
var<private> sg_lane: u32;
var<private> sg_index: u32;
var<private> sg_count: u32;
#endif

// The builtins of a row kernel (one 256-thread workgroup per row), as one entry-point
// parameter; with SG, also the subgroup ids the reductions need.
struct RowIds {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SG
    @builtin(subgroup_invocation_id) sg_l: u32,
    @builtin(subgroup_id) sg_i: u32,
    @builtin(num_subgroups) sg_n: u32,
#endif
}

// Set up a row kernel: record the subgroup ids for wg_sum/wg_max; return the row.
fn row_begin(ids: RowIds) -> u32 {
#if SG
    sg_lane = ids.sg_l;
    sg_index = ids.sg_i;
    sg_count = ids.sg_n;
#endif
    return group_id(ids.wid, ids.nwg);
}

// Sum of one value per thread over a 256-thread workgroup.
fn wg_sum(v: f32, lid: u32) -> f32 {
#if SG
    let part = subgroupAdd(v);
    if (sg_lane == 0u) {
        red_f[sg_index] = part;
    }
    workgroupBarrier();
    var r = 0.0;
    for (var i = 0u; i < sg_count; i = i + 1u) {
        r = r + red_f[i];
    }
    workgroupBarrier();
    return r;
#else
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
#endif
}

// Max of one value per thread over a 256-thread workgroup.
fn wg_max(v: f32, lid: u32) -> f32 {
#if SG
    let part = subgroupMax(v);
    if (sg_lane == 0u) {
        red_f[sg_index] = part;
    }
    workgroupBarrier();
    var r = NEG_BIG;
    for (var i = 0u; i < sg_count; i = i + 1u) {
        r = max(r, red_f[i]);
    }
    workgroupBarrier();
    return r;
#else
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
#endif
}

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}
