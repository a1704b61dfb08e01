//! GGUF in and out on models and blocks made for the purpose (the real checkpoint is in
//! tests/real_model.rs): every ggml block type against gguf-py's dequantizer, Llama (GQA,
//! q/k interleave) and Qwen2 (biases, tied head) through HF -> GGUF -> model with
//! identical logits, a GGUF input to training, a LoRA run's merged model as GGUF, files
//! read back by gguf-py, and damaged files refused with errors that name what is wrong.

mod common;

use std::path::{Path, PathBuf};

use ponder::model::gguf::{GgmlType, GgufFile};
use ponder::model::{LoadOpts, Model};
use ponder::Device;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> common::Scratch {
    common::scratch(&format!("gguf-{name}"))
}

fn ponder(args: &[&str]) -> (bool, String) {
    common::ponder_cli(args)
}

fn ok(args: &[&str]) -> String {
    let (ok, out) = ponder(args);
    assert!(ok, "ponder {args:?} failed:\n{out}");
    out
}

/// `ponder save --model SRC --out OUT --dtype DT`, which must succeed.
fn save(src: &Path, out: &Path, dtype: &str) {
    ok(&[
        "save",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
}

fn load(p: &Path) -> Model {
    Model::load(
        p,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap()
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let mut all = Vec::new();
    m.net
        .logits_in_chunks(ids, 64, |_, rows| {
            all.extend(rows);
            Ok(())
        })
        .unwrap();
    all
}

/// `a` and `b` give bit-identical logits on `n` ids spread over the vocabulary.
fn same_logits(a: &Model, b: &Model, n: u32, what: &str) {
    let ids: Vec<u32> = (0..n)
        .map(|i| (i * 37 + 5) % a.cfg.vocab_size as u32)
        .collect();
    let (la, lb) = (logits(a, &ids), logits(b, &ids));
    assert!(
        la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()),
        "{what}: logits differ"
    );
}

#[test]
fn every_block_type_dequantizes_as_gguf_py_does() {
    let g = GgufFile::open(&root().join("models/fixtures/gguf/quant_types.gguf")).unwrap();
    let want = ponder::model::weights::open_file(
        &root().join("models/fixtures/gguf/quant_types.safetensors"),
    )
    .unwrap();
    let mut seen = Vec::new();
    for t in &g.header.tensors {
        let got = g.dequantize(t).unwrap();
        let w = want.load_any(&t.name).unwrap();
        assert_eq!(w.shape(), t.shape().as_slice(), "{}", t.name);
        let w = w.to_vec_f32().unwrap();
        let bad = got
            .iter()
            .zip(&w)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        if let Some(i) = bad {
            panic!(
                "{} value {i}: ponder {} vs gguf-py {}",
                t.name, got[i], w[i]
            );
        }
        assert_eq!(t.ty.name(), t.name);
        seen.push(t.ty);
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        assert!(seen.contains(&ty), "{} not covered", ty.name());
    }
}

/// HF -> GGUF (f32) -> model gives the very same logits, and GGUF -> HF gives back the
/// very same tensors, for Llama with grouped kv heads (the q/k interleave), Llama with
/// Llama 3.1 rope scaling (and its config), and Qwen2 with biases and a tied head.
#[test]
fn hf_gguf_hf_keeps_every_tensor_and_logit() {
    // llama3-rope: Llama 3.1 rope scaling, written as llama.cpp's rope_freqs tensor
    for fx in [
        "llama-gqa",
        "qwen2-tied",
        "llama3-rope",
        "../ponder-tiny/base",
    ] {
        let src = root().join("models/fixtures").join(fx);
        let d = tmp(&fx.replace(['/', '.'], "_"));
        let g = d.join("model.gguf");
        save(&src, &g, "f32");
        let (a, b) = (load(&src), load(&g));
        assert_eq!(a.cfg.arch, b.cfg.arch);
        assert_eq!(a.cfg.rope_scaling, b.cfg.rope_scaling, "{fx}");
        same_logits(&a, &b, 13, &format!("{fx}: HF -> GGUF"));
        // tokenizer and template survive
        let (ta, tb) = (a.tokenizer().unwrap(), b.tokenizer().unwrap());
        let text = "Question: what is 12 plus 30? Answer: 42.";
        assert_eq!(
            ta.encode(text, true).unwrap(),
            tb.encode(text, true).unwrap(),
            "{fx}"
        );
        assert_eq!(ta.chat_template, tb.chat_template, "{fx}");
        assert_eq!(ta.eos_ids, tb.eos_ids, "{fx}");
        // and back to a directory, tensor for tensor
        let back = d.join("back");
        save(&g, &back, "f32");
        let c = load(&back);
        assert_eq!(
            a.net.named_parameters().len(),
            c.net.named_parameters().len(),
            "{fx}"
        );
        for ((n1, t1), (n2, t2)) in a
            .net
            .named_parameters()
            .iter()
            .zip(c.net.named_parameters())
        {
            assert_eq!(n1, &n2);
            assert_eq!(
                t1.to_vec_f32().unwrap(),
                t2.to_vec_f32().unwrap(),
                "{fx}: {n1}"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Where gguf-py is importable (`.ci/run` vendors it into target/pyvendor), the files ponder
/// writes read back in llama.cpp's own reader to the same tensors, tokenizer and template.
#[test]
fn gguf_py_reads_back_what_ponder_writes() {
    let d = tmp("gguf_py");
    for fx in ["llama-gqa", "qwen2-tied", "llama3-rope"] {
        let src = root().join("models/fixtures").join(fx);
        for dt in ["f32", "f16", "q8_0"] {
            let g = d.join(format!("{fx}.{dt}.gguf"));
            save(&src, &g, dt);
            // f16 weights are compared at f16's resolution; f32 and Q8_0 bit for bit
            let tol = if dt == "f16" { "2e-3" } else { "0" };
            if common::check_with_gguf_py(&g, &src, tol).is_none() {
                return;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A GGUF model trains like a directory, and a LoRA run's merged model goes out as GGUF.
#[test]
fn training_takes_a_gguf_model_and_a_merged_lora_run_saves_as_gguf() {
    let d = tmp("train");
    let g = d.join("base.gguf");
    let src = root().join("models/fixtures/llama-gqa");
    save(&src, &g, "f32");
    let data = root().join("models/fixtures/train/pairs.jsonl");
    let out = d.join("dpo");
    ok(&[
        "dpo",
        "--model",
        g.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--lora-r",
        "4",
        "--merge-lora",
        "--quiet",
        "--device",
        "cpu",
    ]);
    let merged = load(&out);
    let back = d.join("merged.gguf");
    save(&out, &back, "f32");
    let again = load(&back);
    let ids = [3u32, 17, 42, 9, 100];
    let (a, b) = (logits(&merged, &ids), logits(&again, &ids));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "merged model differs as GGUF"
    );
    // training moved the weights away from the GGUF base
    let base = logits(&load(&g), &ids);
    let moved = a
        .iter()
        .zip(&base)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-5, "training from a GGUF model changed nothing");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn save_refuses_an_existing_gguf_file_and_q8_0_for_a_directory() {
    let d = tmp("refuse");
    let src = root().join("models/fixtures/llama-gqa");
    let g = d.join("x.gguf");
    std::fs::write(&g, b"user data").unwrap();
    let (okay, out) = ponder(&[
        "save",
        "--model",
        src.to_str().unwrap(),
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(!okay && out.contains("already exists"), "{out}");
    assert_eq!(std::fs::read(&g).unwrap(), b"user data");
    let (okay, out) = ponder(&[
        "save",
        "--model",
        src.to_str().unwrap(),
        "--out",
        d.join("dir").to_str().unwrap(),
        "--dtype",
        "q8_0",
    ]);
    assert!(!okay && out.contains("GGUF output only"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A small valid GGUF file made by ponder, to damage.
fn sample(d: &Path) -> Vec<u8> {
    let g = d.join("s.gguf");
    save(&root().join("models/fixtures/llama-gqa"), &g, "f32");
    std::fs::read(&g).unwrap()
}

fn open_err(d: &Path, name: &str, bytes: &[u8]) -> String {
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    match Model::load(
        &p,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    ) {
        Ok(_) => panic!("{name}: a damaged file loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_files_are_errors_that_name_what_is_wrong() {
    let d = tmp("damaged");
    let good = sample(&d);
    // truncated inside the data: the error names a tensor
    let e = open_err(&d, "trunc.gguf", &good[..good.len() - 100]);
    assert!(e.contains("truncated") && e.contains("tensor `"), "{e}");
    // truncated inside the header
    let e = open_err(&d, "short.gguf", &good[..40]);
    assert!(e.contains("truncated"), "{e}");
    // a tensor count no file could hold: refused before anything is allocated
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = open_err(&d, "count.gguf", &huge);
    assert!(e.contains("tensor count"), "{e}");
    // a string length past the end
    let mut long = good.clone();
    long[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = open_err(&d, "strlen.gguf", &long);
    assert!(e.contains("bytes left"), "{e}");
    // version 1, big-endian, and not GGUF at all
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(open_err(&d, "v1.gguf", &v1).contains("version 1"));
    let mut be = good.clone();
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(open_err(&d, "be.gguf", &be).contains("big-endian"));
    assert!(open_err(&d, "text.gguf", b"not a model at all").contains("not a GGUF file"));
    // an architecture and a tensor type ponder does not read are named
    let arch = String::from_utf8_lossy(&good).find("llama").unwrap();
    let mut other = good.clone();
    other[arch..arch + 5].copy_from_slice(b"gemma");
    let e = open_err(&d, "arch.gguf", &other);
    assert!(e.contains("`gemma`") && e.contains("not supported"), "{e}");
    let g = GgufFile::open(&d.join("s.gguf")).unwrap();
    let first = &g.header.tensors[0];
    let name = first.name.as_bytes();
    let at = good.windows(name.len()).position(|w| w == name).unwrap();
    // the type id follows the name, the dim count and the dims
    let ty_at = at + name.len() + 4 + 8 * first.dims.len();
    let mut iq = good.clone();
    iq[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let e = open_err(&d, "iq.gguf", &iq);
    assert!(e.contains("IQ2_XXS") && e.contains(&first.name), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Random damage anywhere in a file never panics or aborts: every case is Ok or an error.
#[test]
fn random_damage_never_panics() {
    let d = tmp("fuzz");
    let good = sample(&d);
    let p = d.join("f.gguf");
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // half the cases hit the metadata, half the tensor table (names, dims, types, offsets)
    let g = GgufFile::open(&d.join("s.gguf")).unwrap();
    let first = g.header.tensors[0].name.as_bytes();
    let table = good.windows(first.len()).position(|w| w == first).unwrap() - 8;
    let data = g.header.data_start as usize;
    for case in 0..400 {
        let mut b = good.clone();
        let (lo, hi) = if case % 2 == 0 {
            (0, table)
        } else {
            (table, data)
        };
        for _ in 0..(1 + next() % 4) {
            let i = lo + (next() as usize) % (hi - lo);
            b[i] = next() as u8;
        }
        if next() % 5 == 0 {
            b.truncate((next() as usize) % b.len());
        }
        std::fs::write(&p, &b).unwrap();
        let _ = Model::load(
            &p,
            LoadOpts {
                device: Device::Cpu,
                keep_16bit: false,
                trainable: false,
            },
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A finite f32 weight beyond f16's range is refused, not written as inf; the same weight
/// saves as f32. A tokenizer larger than the embedding cannot go to GGUF.
#[test]
fn values_beyond_f16_are_refused_when_saving_f16_or_q8_0() {
    use ponder::model::gguf::write::{gguf_bytes, WeightType};
    let m = load(&root().join("models/fixtures/llama-gqa"));
    let (name, p) = m.net.named_parameters()[2].clone();
    let n = p.shape().iter().product::<usize>();
    let big: Vec<f32> = (0..n)
        .map(|i| {
            if i == 7 {
                1.0e7
            } else {
                0.01 * (i % 13) as f32
            }
        })
        .collect();
    p.assign_(
        &ponder::Tensor::from_cpu_data(ponder::tensor::CpuData::F32(big), p.shape()).unwrap(),
    )
    .unwrap();
    for wt in [WeightType::F16, WeightType::Q8_0] {
        let e = gguf_bytes(&m.net, m.tok.as_ref(), wt)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&name) && e.contains("overflow"), "{wt:?}: {e}");
    }
    assert!(gguf_bytes(&m.net, m.tok.as_ref(), WeightType::F32).is_ok());
}

/// Every pre-tokenizer name ponder maps splits text the way its tokenizer.json says, and
/// writing the tokenizer back names the same pre-tokenizer.
#[test]
fn pre_tokenizer_names_round_trip() {
    let d = tmp("pre");
    let src = root().join("models/fixtures/llama-gqa");
    let g = d.join("m.gguf");
    save(&src, &g, "f32");
    let f = GgufFile::open(&g).unwrap();
    // the fixture's plain ByteLevel tokenizer is llama.cpp's `gpt-2`
    assert_eq!(
        f.meta("tokenizer.ggml.pre").and_then(|v| v.as_str()),
        Some("gpt-2")
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A GGUF whose tokenizer ponder cannot build (here llama.cpp's `llama` SentencePiece
/// model) still loads for what needs no tokenizer: saving its weights, logits from ids. A
/// command that needs the tokenizer stops and says why.
#[test]
fn an_unreadable_tokenizer_costs_only_the_commands_that_need_it() {
    let d = tmp("spm");
    let good = sample(&d);
    let key = b"tokenizer.ggml.model";
    let at = good.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // after the key: the value type (u32) and the string's length (u64), then "gpt2"
    let v = at + 4 + 8;
    assert_eq!(&good[v..v + 4], b"gpt2");
    let mut spm = good.clone();
    spm[v..v + 4].copy_from_slice(b"lama");
    let p = d.join("spm.gguf");
    std::fs::write(&p, &spm).unwrap();
    let out = d.join("weights");
    let (okay, log) = ponder(&[
        "save",
        "--model",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(okay, "{log}");
    assert!(
        log.contains("tokenizer model `lama`") && log.contains("not supported"),
        "{log}"
    );
    assert!(out.join("model.safetensors").is_file() && !out.join("tokenizer.json").exists());
    let (okay, log) = ponder(&["logits", "--model", p.to_str().unwrap(), "--ids", "3,17,42"]);
    assert!(okay && log.contains("\"shape\":[3,"), "{log}");
    let (okay, log) = ponder(&[
        "generate",
        "--model",
        p.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(!okay && log.contains("tokenizer"), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A GGUF file from llama.cpp's converter carries Llama 3.1 rope scaling as the
/// `rope_freqs.weight` divisors alone: ponder finds the parameters they follow (the same
/// config and logits as the directory), and names the tensor when they follow none it can
/// resolve. Files from ponder lose their own parameter key here (its bytes renamed).
#[test]
fn llama3_rope_factors_without_their_parameters_read_back() {
    let d = tmp("llama3_rope_foreign");
    let src = root().join("models/fixtures/llama3-rope");
    // three blended frequencies (wavelengths 38, 94 and 232 between 256/16 and 256)
    let hf = d.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, hf.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = hf.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rope_parameters"]["original_max_position_embeddings"] = 256.into();
    cfg["rope_parameters"]["high_freq_factor"] = 16.0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let foreign = |from: &Path, name: &str| -> PathBuf {
        let g = d.join(name);
        save(from, &g, "f32");
        let mut bytes = std::fs::read(&g).unwrap();
        let key = ponder::model::gguf::LLAMA3_KEY.as_bytes();
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("ponder's rope key in the file");
        bytes[at..at + key.len()].copy_from_slice(&b"x".repeat(key.len()));
        std::fs::write(&g, bytes).unwrap();
        g
    };
    let g = foreign(&hf, "three.gguf");
    let (a, b) = (load(&hf), load(&g));
    assert_eq!(a.cfg.rope_scaling, b.cfg.rope_scaling);
    same_logits(&a, &b, 40, "a file without ponder's rope key");
    // the fixture's own config blends one frequency only: two parameters, one equation
    let g = foreign(&src, "one.gguf");
    let (ok, out) = ponder(&["logits", "--model", g.to_str().unwrap(), "--ids", "3,4"]);
    assert!(!ok && out.contains("rope_freqs.weight"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A GGUF file with llama.cpp's `llama` tokenizer model (SentencePiece BPE: Llama 2,
/// Mistral, TinyLlama) loads with a tokenizer that puts a space before the text, merges
/// the best-scoring pieces first, spells a character without a piece as its bytes, adds
/// the BOS, and decodes back to the text.
#[test]
fn a_sentencepiece_tokenizer_reads_from_gguf() {
    use ponder::model::gguf::{format, Value};
    let d = tmp("sentencepiece");
    let src = d.join("llama.gguf");
    save(&root().join("models/fixtures/llama-gqa"), &src, "f32");
    let g = GgufFile::open(&src).unwrap();
    // <unk> <s> </s>, the 256 bytes, then pieces with their scores
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let (mut scores, mut types) = (vec![0.0f32; 3], vec![2i32, 3, 3]);
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for (p, s) in [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -3.0),
        ("c", -4.0),
        ("ab", -0.5),
        ("▁ab", -0.25),
    ] {
        tokens.push(p.into());
        scores.push(s);
        types.push(1);
    }
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let (abs, space, c, c3, a9) = (id("▁ab"), id("▁"), id("c"), id("<0xC3>"), id("<0xA9>"));
    let mut meta: Vec<(String, Value)> = g
        .header
        .meta
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.extend([
        ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::Str(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
    ]);
    let tensors: Vec<format::OutTensor> = g
        .header
        .tensors
        .iter()
        .map(|t| format::OutTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: g.bytes(t).to_vec(),
        })
        .collect();
    let spm = d.join("spm.gguf");
    std::fs::write(&spm, format::serialize(&meta, &tensors)).unwrap();
    let m = load(&spm);
    let tok = m.tokenizer().unwrap();
    // "ab cé" -> "▁ab▁cé": a+b (-0.5), then ▁+ab (-0.25); ▁c is no piece; é is C3 A9
    let ids = tok.encode("ab cé", true).unwrap();
    assert_eq!(ids, [1, abs, space, c, c3, a9]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "ab cé");
    // and the model runs on them, as on any ids
    assert_eq!(logits(&m, &ids).len(), ids.len() * m.cfg.vocab_size);
    // out to a Hugging Face directory, whose tokenizer.json tokenizes the same; back to
    // GGUF it is refused, naming why (ponder writes only `gpt2` tokenizers)
    let hf = d.join("hf");
    save(&spm, &hf, "f32");
    let back = load(&hf);
    assert_eq!(
        back.tokenizer().unwrap().encode("ab cé", true).unwrap(),
        ids
    );
    let (ok, out) = ponder(&[
        "save",
        "--model",
        spm.to_str().unwrap(),
        "--out",
        d.join("again.gguf").to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("SentencePiece"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}
