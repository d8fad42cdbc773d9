//! Real models' chat templates rendered by our minijinja setup must give what Python's jinja2
//! gives — the renderer transformers and llama-cpp-python use. The templates (from llama.cpp's
//! `models/templates`) and jinja2's renderings are data (`tests/data/chat_templates.json`,
//! made by `bench/reference/chat_templates.py`), so this test needs neither.

use serde::Deserialize;
use wattmesh_engine::EngineError;
use wattmesh_engine::template::{ChatTemplate, TemplateMessage};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    bos_token: String,
    eos_token: String,
    source: String,
    renders: Vec<Render>,
}

#[derive(Deserialize)]
struct Render {
    messages: Vec<TemplateMessage>,
    /// jinja2's output, or
    rendered: Option<String>,
    /// the message of the template's `raise_exception`.
    error: Option<String>,
}

#[test]
fn templates_render_as_jinja2_does() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/chat_templates.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(reference.cases.len() >= 8);
    for case in &reference.cases {
        let template = ChatTemplate::new(&case.source, &case.bos_token, &case.eos_token)
            .unwrap_or_else(|e| panic!("{}: {e}", case.template));
        for (i, render) in case.renders.iter().enumerate() {
            let messages = &render.messages;
            let got = template.render(messages);
            match (&render.rendered, &render.error, got) {
                (Some(want), None, Ok(got)) => {
                    assert_eq!(got, *want, "{} conversation {i}", case.template)
                }
                (None, Some(want), Err(EngineError::InvalidRequest { message, .. })) => {
                    assert!(
                        message.contains(want.as_str()),
                        "{} conversation {i}: {message:?} lacks {want:?}",
                        case.template
                    )
                }
                (_, _, got) => panic!(
                    "{} conversation {i}: got {got:?}, want {:?} / error {:?}",
                    case.template, render.rendered, render.error
                ),
            }
        }
    }
}
