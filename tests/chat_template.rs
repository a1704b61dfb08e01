//! Chat templates rendered by minijinja against what transformers' apply_chat_template
//! produced (models/fixtures/chat_template_cases.json): Qwen2.5's ChatML template, tool
//! calls included, and a Llama-2-style template with BOS/EOS tokens.

use std::path::Path;

use ponder::model::chat::Message;
use ponder::model::Tok;

#[test]
fn matches_transformers_apply_chat_template() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("chat_template_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let tok = Tok::load(&root.join(case["model"].as_str().unwrap())).unwrap();
        let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&msgs, agp).unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "template text differs for {}",
            case["messages"]
        );
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode_chat(&msgs, agp).unwrap(),
            ids,
            "template ids differ for {}",
            case["messages"]
        );
    }
}

#[test]
fn template_errors_are_reported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let tok = Tok::load(&root.join("llama-gqa")).unwrap();
    // the Llama-2 template raises for unknown roles
    let e = tok
        .apply_chat_template(&[Message::new("tool", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Only user, system and assistant roles are supported"),
        "{e}"
    );
}

#[test]
fn tojson_keeps_key_order_as_python_json_dumps() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let tok = Tok::load(&root.join("qwen2-tied")).unwrap();
    let msgs: Vec<Message> = serde_json::from_str(r#"[{"role": "user", "content": "w?"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"unit": "C", "city": "Paris"}}}]}]"#).unwrap();
    let text = tok.apply_chat_template(&msgs, false).unwrap();
    assert!(
        text.contains(r#"{"name": "f", "arguments": {"unit": "C", "city": "Paris"}}"#),
        "{text}"
    );
}
