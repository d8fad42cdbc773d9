//! Chat templates as the model ships them: the GGUF's `tokenizer.chat_template`, rendered
//! with minijinja.
//!
//! Hugging Face templates are Jinja2 written against Python objects, so the environment is
//! set up the way `transformers.apply_chat_template` sets up Jinja (`trim_blocks`,
//! `lstrip_blocks`, a `raise_exception` function) and answers the Python string and dict
//! methods those templates call (`.strip()`, `.startswith()`, `.items()`, …). A template that
//! raises on the messages (e.g. roles that do not alternate) is the client's error: a 400.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

const NAME: &str = "chat";

/// One message as templates see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template plus the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; fails on a syntax error.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| EngineError::Artifact(format!("chat template: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders the prompt for `messages`, ending with the assistant's turn opener.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, EngineError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Artifact(format!("chat template: {e}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => EngineError::invalid("messages", e.to_string()),
                _ => EngineError::bad_request(format!("cannot apply the chat template: {e}")),
            })
    }
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// The Python methods HF templates call on strings and dicts, which minijinja lacks.
fn python_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let arg = |i: usize| args.get(i).and_then(Value::as_str);
    match (value.kind(), value.as_str()) {
        (ValueKind::String, Some(s)) => {
            let chars = arg(0);
            let trim = |c: char| chars.map_or(c.is_whitespace(), |set| set.contains(c));
            let out: Value = match method {
                "strip" => s.trim_matches(trim).into(),
                "lstrip" => s.trim_start_matches(trim).into(),
                "rstrip" => s.trim_end_matches(trim).into(),
                "upper" => s.to_uppercase().into(),
                "lower" => s.to_lowercase().into(),
                "startswith" => arg(0).is_some_and(|p| s.starts_with(p)).into(),
                "endswith" => arg(0).is_some_and(|p| s.ends_with(p)).into(),
                "replace" => match (arg(0), arg(1)) {
                    (Some(from), Some(to)) => s.replace(from, to).into(),
                    _ => return Err(Error::from(ErrorKind::MissingArgument)),
                },
                "split" => match arg(0) {
                    Some(sep) => s.split(sep).map(Value::from).collect::<Vec<_>>().into(),
                    None => s
                        .split_whitespace()
                        .map(Value::from)
                        .collect::<Vec<_>>()
                        .into(),
                },
                _ => return Err(Error::from(ErrorKind::UnknownMethod)),
            };
            Ok(out)
        }
        (ValueKind::Map, _) => match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(value.try_iter()?.collect::<Vec<_>>().into()),
            "values" => Ok(value
                .try_iter()?
                .map(|k| value.get_item(&k))
                .collect::<Result<Vec<_>, _>>()?
                .into()),
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                match value.get_item(&key) {
                    Ok(v) if !v.is_undefined() => Ok(v),
                    _ => Ok(args.get(1).cloned().unwrap_or(Value::from(()))),
                }
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        },
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", "hi")]).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_a_bad_request() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[msg("assistant", "x")]).unwrap_err();
        assert!(matches!(err, EngineError::InvalidRequest { .. }), "{err:?}");
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn python_string_and_dict_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'].strip() }}|{{ m.get('role') }}|\
             {{ m.get('missing', 'dflt') }}|{{ m['content'].startswith(' a') }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", " a b ")]).unwrap(),
            "a b|user|dflt|True"
        );
    }
}
