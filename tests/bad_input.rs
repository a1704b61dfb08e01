//! Bad model directories and inputs: each gets an error naming the file and the tensor or
//! field and what was expected, never a panic, and a lying header never makes ponder
//! allocate what it claims.

mod common;

use std::path::{Path, PathBuf};

use ponder::model::{LoadOpts, Model, Tok};
use ponder::Device;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// A scratch copy of a fixture directory.
fn copy_of(name: &str, tag: &str) -> common::Scratch {
    let d = common::scratch(&format!("bad-{tag}"));
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

fn load_err(d: &Path) -> String {
    match Model::load(
        d,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: true,
            trainable: false,
        },
    ) {
        Ok(_) => panic!("loading {} should fail", d.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(d: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = d.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrite the safetensors header (JSON) of model.safetensors, keeping the data.
fn edit_header(d: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut h);
    let mut hs = serde_json::to_vec(&h).unwrap();
    while !hs.len().is_multiple_of(8) {
        hs.push(b' ');
    }
    let mut out = (hs.len() as u64).to_le_bytes().to_vec();
    out.extend(hs);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn missing_and_truncated_weights() {
    let d = copy_of("llama-gqa", "missing");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains(&d.display().to_string()) && e.contains("no model.safetensors"),
        "{e}"
    );

    let d = copy_of("llama-gqa", "truncated");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors file"),
        "{e}"
    );

    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors file"),
        "{e}"
    );
}

#[test]
fn lying_headers() {
    // offsets that overlap / do not cover the data
    let d = copy_of("llama-gqa", "offsets");
    edit_header(&d, |h| {
        h["model.norm.weight"]["data_offsets"] = serde_json::json!([0, 4]);
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("invalid safetensors file"),
        "{e}"
    );

    // a shape that claims 2^40 x 2^40 elements: rejected, nothing allocated
    let d = copy_of("llama-gqa", "huge");
    edit_header(&d, |h| {
        h["model.norm.weight"]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
    });
    let e = load_err(&d);
    assert!(e.contains("invalid safetensors file"), "{e}");

    // a header length far past the end of the file
    let d = copy_of("llama-gqa", "hdrlen");
    let p = d.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = load_err(&d);
    assert!(e.contains("invalid safetensors file"), "{e}");

    // an unknown dtype
    let d = copy_of("llama-gqa", "dtype");
    edit_header(&d, |h| {
        h["model.norm.weight"]["dtype"] = serde_json::json!("Q4");
    });
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("Q4"), "{e}");

    // a valid but unsupported dtype
    let d = copy_of("llama-gqa", "i8");
    edit_header(&d, |h| {
        let off = h["model.norm.weight"]["data_offsets"].clone();
        let (a, b) = (off[0].as_u64().unwrap(), off[1].as_u64().unwrap());
        h["model.norm.weight"]["dtype"] = serde_json::json!("I8");
        h["model.norm.weight"]["shape"] = serde_json::json!([b - a]);
    });
    let e = load_err(&d);
    assert!(e.contains("model.norm.weight") && e.contains("I8"), "{e}");
}

#[test]
fn shapes_and_tensors_must_match_the_config() {
    let d = copy_of("llama-gqa", "shape");
    edit_config(&d, |c| {
        c.insert("intermediate_size".into(), 96.into());
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[128, 64]")
            && e.contains("[96, 64]")
            && e.contains("intermediate_size=96"),
        "{e}"
    );

    let d = copy_of("llama-gqa", "missing-tensor");
    edit_header(&d, |h| {
        h.as_object_mut()
            .unwrap()
            .remove("model.layers.1.self_attn.o_proj.weight");
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.layers.1.self_attn.o_proj.weight") && e.contains("missing")
            || e.contains("invalid safetensors"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_and_rope() {
    let d = copy_of("llama-gqa", "arch");
    edit_config(&d, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["MistralForCausalLM"]),
        );
    });
    let e = load_err(&d);
    assert!(
        e.contains("config.json")
            && e.contains("architectures")
            && e.contains("MistralForCausalLM")
            && e.contains("Qwen2ForCausalLM"),
        "{e}"
    );

    let d = copy_of("llama-gqa", "rope");
    edit_config(&d, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        );
    });
    let e = load_err(&d);
    assert!(
        e.contains("config.json")
            && e.contains("rope_scaling")
            && e.contains("unsupported rope type 'yarn'"),
        "{e}"
    );

    let d = copy_of("llama-gqa", "field");
    edit_config(&d, |c| {
        c.remove("hidden_size");
    });
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("`hidden_size`") && e.contains("missing"),
        "{e}"
    );

    let d = copy_of("llama-gqa", "json");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer_and_out_of_range_ids() {
    let d = copy_of("qwen2-tied", "tok");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = Tok::load(&d).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
    // the model loads without it, but a command that needs it says so
    let m = Model::load(
        &d,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: true,
            trainable: false,
        },
    )
    .unwrap();
    let e = m.tokenizer().err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");

    let m = Model::load(
        &fixture("qwen2-tied"),
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: true,
            trainable: false,
        },
    )
    .unwrap();
    let e = m
        .net
        .forward(&[1, 2, 384], 1, 3, Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("token id 384 is out of range") && e.contains("384 tokens"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    // split llama-gqa into two shards plus model.safetensors.index.json
    let d = copy_of("llama-gqa", "shards");
    let ck = ponder::model::weights::Checkpoint::open(&d).unwrap();
    let mut names: Vec<String> = ck.names().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let ts: Vec<(String, ponder::Tensor)> = part
            .iter()
            .map(|n| (n.clone(), ck.load_any(n).unwrap()))
            .collect();
        std::fs::write(
            d.join(file),
            ponder::model::save::safetensors_bytes(&ts, ponder::DType::F32).unwrap(),
        )
        .unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    drop(ck);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let opts = LoadOpts {
        device: Device::Cpu,
        keep_16bit: true,
        trainable: false,
    };
    let sharded = Model::load(&d, opts).unwrap();
    let single = Model::load(&fixture("llama-gqa"), opts).unwrap();
    let ids = [5u32, 9, 200, 13];
    let x = sharded
        .net
        .forward(&ids, 1, 4, Default::default())
        .unwrap()
        .logits
        .to_vec_f32()
        .unwrap();
    let y = single
        .net
        .forward(&ids, 1, 4, Default::default())
        .unwrap()
        .logits
        .to_vec_f32()
        .unwrap();
    assert_eq!(x, y);
    // an index naming a missing shard
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn config_review_regressions() {
    let d = copy_of("llama-gqa", "act");
    edit_config(&d, |c| {
        c.insert("hidden_act".into(), "gelu".into());
    });
    let e = load_err(&d);
    assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
    let d = copy_of("llama-gqa", "emptymap");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        "{\"weight_map\": {}}",
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("lists no tensors"),
        "{e}"
    );
}
