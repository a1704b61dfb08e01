// Elementwise unary/binary ops and `where`, on strided (broadcast) inputs, written densely.
// Shapes are padded to 8 dims on the left; a stride of 0 broadcasts. OP selects the op
// (codes as in backend::UnaryOp::code / BinaryOp::code) at pipeline-creation time.

struct Params {
    n: u32,
    p0: f32,
    p1: f32,
    od: u32,
    shape: array<vec4<u32>, 2>,
    sa: array<vec4<u32>, 2>,
    sb: array<vec4<u32>, 2>,
    sc: array<vec4<u32>, 2>,
    oa: u32,
    ob: u32,
    oc: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> C: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

const OP: u32 = {{OP}}u;

// Storage offsets of flat output element i in A, B and C.
fn offsets(i: u32) -> vec3<u32> {
    var rem = i;
    var o = vec3<u32>(P.oa, P.ob, P.oc);
    for (var d = 7; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = P.shape[q][r];
        let c = rem % size;
        rem = rem / size;
        o = o + c * vec3<u32>(P.sa[q][r], P.sb[q][r], P.sc[q][r]);
    }
    return o;
}

// x^p; negative x with an integer p keeps its sign rule.
fn powf(x: f32, p: f32) -> f32 {
    if (x < 0.0 && floor(p) == p) {
        let r = pow(-x, p);
        if (fract(p * 0.5) != 0.0) {
            return -r;
        }
        return r;
    }
    return pow(x, p);
}

fn apply_unary(x: f32) -> f32 {
    switch OP {
        case 0u: { return -x; }
        case 1u: { return exp(x); }
        case 2u: { return log(x); }
        case 3u: { return sqrt(x); }
        case 4u: { return inverseSqrt(x); }
        case 5u: { return x * sigmoid(x); }
        case 6u: { return sigmoid(x); }
        case 7u: { return min(x, 0.0) - log(1.0 + exp(-abs(x))); }
        case 8u: { return max(x, 0.0); }
        case 9u: { return abs(x); }
        case 10u: { return powf(x, P.p0); }
        case 11u: { return P.p0 * x + P.p1; }
        default: { return x; }
    }
}

// f'(x) for the op above.
fn unary_deriv(x: f32) -> f32 {
    switch OP {
        case 0u: { return -1.0; }
        case 1u: { return exp(x); }
        case 2u: { return 1.0 / x; }
        case 3u: { return 0.5 / sqrt(x); }
        case 4u: { return -0.5 / (x * sqrt(x)); }
        case 5u: {
            let s = sigmoid(x);
            return s + x * s * (1.0 - s);
        }
        case 6u: {
            let s = sigmoid(x);
            return s * (1.0 - s);
        }
        case 7u: { return sigmoid(-x); }
        case 8u: { return select(0.0, 1.0, x > 0.0); }
        case 9u: { return sign(x); }
        case 10u: { return P.p0 * powf(x, P.p0 - 1.0); }
        case 11u: { return P.p0; }
        default: { return 1.0; }
    }
}

fn apply_binary(a: f32, b: f32) -> f32 {
    switch OP {
        case 0u: { return a + b; }
        case 1u: { return a - b; }
        case 2u: { return a * b; }
        case 3u: { return a / b; }
        case 4u: { return max(a, b); }
        case 5u: { return min(a, b); }
        case 6u: { return select(0.0, 1.0, a > b); }
        case 7u: { return select(0.0, 1.0, a >= b); }
        case 8u: { return select(0.0, 1.0, a < b); }
        case 9u: { return select(0.0, 1.0, a <= b); }
        case 10u: { return select(0.0, 1.0, a == b); }
        default: { return a; }
    }
}

@compute @workgroup_size(256)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    O[P.od + i] = apply_unary(A[offsets(i).x]);
}

// dx = g * f'(x), both dense (from offsets oa and ob).
@compute @workgroup_size(256)
fn unary_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    O[P.od + i] = B[P.ob + i] * unary_deriv(A[P.oa + i]);
}

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    let o = offsets(i);
    O[P.od + i] = apply_binary(A[o.x], B[o.y]);
}

// out = C != 0 ? A : B
@compute @workgroup_size(256)
fn where3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    let o = offsets(i);
    O[P.od + i] = select(B[o.y], A[o.x], C[o.z] != 0.0);
}
