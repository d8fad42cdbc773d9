//! The chat model of a replica: a llama-family GGUF with its tokenizer and chat template, and
//! the translation of chat and completion requests into token prompts plus parameters.
//!
//! Usable context: the GGUF states the trained context (`llama.context_length`, 8192 for
//! SmolLM2), but a CPU replica gains nothing from very long prompts and every stream of the
//! batch shares one KV-cache budget, so the usable context of one request is capped at
//! [`MAX_CONTEXT`] tokens. For SmolLM2 a token takes 30 layers × 3 KV heads × 64 × 2 × f16 =
//! 23 KiB of cache: a full 2048-token context is 46 MiB.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use tokio::sync::mpsc;
use wattmesh_proto::openai::{
    COMPLETIONS_DEFAULT_MAX_TOKENS, ChatCompletionRequest, CompletionRequest, Prompt,
};

use crate::error::EngineError;
use crate::generate::{GenEvent, GenParams, Generator, Priority, SamplingRequest};
use crate::llama::LlamaModel;
use crate::metrics::Metrics;
use crate::options::EngineOptions;
use crate::template::{ChatTemplate, TemplateMessage};
use crate::tokenizer::{GgufTokenizer, string_meta};

/// The most tokens (prompt + completion) one request may use; see the module doc.
pub const MAX_CONTEXT: usize = 2048;

/// End-of-generation tokens by text, as llama.cpp recognises them besides the GGUF's eos id.
const EOG_TOKENS: [&str; 3] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"];

/// A prompt ready to generate from.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub tokens: Vec<u32>,
    pub params: GenParams,
}

/// A loaded chat model.
pub struct ChatModel {
    tokenizer: Arc<GgufTokenizer>,
    template: ChatTemplate,
    generator: Generator,
    context: usize,
}

impl ChatModel {
    /// Loads the single `*.gguf` file in `dir` and starts its batching worker. Blocking.
    pub fn load(
        name: &str,
        dir: &Path,
        metrics: Arc<Metrics>,
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let path = single_gguf(dir)?;
        let io = |source| EngineError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        let content = gguf_file::Content::read(&mut file)?;
        let md = &content.metadata;

        let tokenizer = Arc::new(GgufTokenizer::from_gguf(&content)?);
        let token_name = |key: &str| -> Option<String> {
            let id = md.get(key)?.to_u32().ok()?;
            tokenizer.token_text(id).map(str::to_owned)
        };
        let bos = token_name("tokenizer.ggml.bos_token_id").unwrap_or_default();
        let eos = token_name("tokenizer.ggml.eos_token_id").unwrap_or_default();
        let template = ChatTemplate::new(string_meta(md, "tokenizer.chat_template")?, &bos, &eos)?;

        let mut eos_ids: Vec<u32> = EOG_TOKENS
            .iter()
            .filter_map(|t| tokenizer.special_id(t))
            .collect();
        if let Some(id) = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            eos_ids.push(id);
        }
        let model = LlamaModel::from_gguf(&content, &mut file, MAX_CONTEXT)?;
        let context = model.config.trained_context.min(MAX_CONTEXT);
        let generator =
            crate::worker::spawn(name, model, tokenizer.clone(), eos_ids, metrics, options)?;
        Ok(Self {
            tokenizer,
            template,
            generator,
            context,
        })
    }

    /// Renders, tokenizes and validates a chat request.
    pub fn prepare_chat(&self, req: &ChatCompletionRequest) -> Result<PreparedPrompt, EngineError> {
        if req.messages.is_empty() {
            return Err(EngineError::invalid(
                "messages",
                "messages must not be empty",
            ));
        }
        let messages: Vec<TemplateMessage> = req
            .messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.template_name().to_owned(),
                content: m.text(),
            })
            .collect();
        let prompt = self.template.render(&messages)?;
        // No BOS added: the template writes it if the model wants one, as with
        // llama-cpp-python's chat handler (see `GgufTokenizer::prompt_bos`).
        let tokens = self.tokenizer.encode(&prompt)?;
        let sampling = SamplingRequest {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            seed: req.seed,
            stop: req.stop.clone(),
            max_tokens: req.max_new_tokens(),
        };
        let params = GenParams::validate(&sampling, tokens.len(), self.context, None)?;
        Ok(PreparedPrompt { tokens, params })
    }

    /// Tokenizes and validates a text completion request (no template).
    pub fn prepare_completion(
        &self,
        req: &CompletionRequest,
    ) -> Result<PreparedPrompt, EngineError> {
        if req.echo == Some(true) {
            return Err(EngineError::invalid("echo", "echo is not supported"));
        }
        let one = || EngineError::invalid("prompt", "exactly one prompt per request is supported");
        let tokens = match &req.prompt {
            Prompt::Text(t) => self.encode_text_prompt(t)?,
            Prompt::Texts(ts) => match ts.as_slice() {
                [t] => self.encode_text_prompt(t)?,
                _ => return Err(one()),
            },
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::TokenBatches(batches) => match batches.as_slice() {
                [ids] => ids.clone(),
                _ => return Err(one()),
            },
        };
        let vocab = self.tokenizer.vocab_size();
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::invalid(
                "prompt",
                format!("token id {bad} is out of range"),
            ));
        }
        let sampling = SamplingRequest {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            seed: req.seed,
            stop: req.stop.clone(),
            max_tokens: req.max_tokens,
        };
        let params = GenParams::validate(
            &sampling,
            tokens.len(),
            self.context,
            Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
        )?;
        Ok(PreparedPrompt { tokens, params })
    }

    /// A text completion prompt: BOS first when the vocab asks for it, as llama-cpp-python
    /// and llama-server do (see [`GgufTokenizer::prompt_bos`]; chat prompts get none).
    fn encode_text_prompt(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut tokens: Vec<u32> = self.tokenizer.prompt_bos().into_iter().collect();
        tokens.extend(self.tokenizer.encode(text)?);
        Ok(tokens)
    }

    /// Queues a prepared prompt on the replica's batching worker in `priority`'s class.
    pub fn submit(
        &self,
        prompt: PreparedPrompt,
        priority: Priority,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>, EngineError> {
        self.generator
            .submit(prompt.tokens, prompt.params, priority)
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The usable context in tokens.
    pub fn context_length(&self) -> usize {
        self.context
    }
}

/// The one `*.gguf` in `dir`.
fn single_gguf(dir: &Path) -> Result<PathBuf, EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EngineError::Io {
        path: dir.into(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(EngineError::Artifact(format!(
            "no .gguf file in {}",
            dir.display()
        ))),
        n => Err(EngineError::Artifact(format!(
            "{n} .gguf files in {}; expected one",
            dir.display()
        ))),
    }
}
