//! Loading a `tokenizer.json` in bounded memory.
//!
//! `tokenizers` reads a file's model through two untagged enums and a `serde_json::Value`, so
//! a large BPE (Gemma's: 256,000 tokens, 580,604 merges, 14 MB of JSON) passes through several
//! generic value trees: loading it peaked at 376 MB and left the process at 323 MB. Here a BPE
//! model's vocabulary and merges stream straight into their final types; the rest of the file
//! (normalizer, pre-tokenizer, decoder, post-processor: small) goes the usual way, and the
//! added tokens are added back in their order. Anything else (another model type, a shape this
//! reader does not know) loads through `tokenizers` itself, as does a result whose added-token
//! ids differ from the file's.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::{AddedToken, ModelWrapper, Tokenizer};

use crate::text::TokenizerError;

/// Reads the `tokenizer.json` at `path`; errors name the file.
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let load_error = |message: String| TokenizerError::Load {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| load_error(e.to_string()))?;
    parse_tokenizer(&text).map_err(load_error)
}

/// Parses `text` (a `tokenizer.json`); `Err` carries `tokenizers`' message.
pub fn parse_tokenizer(text: &str) -> Result<Tokenizer, String> {
    match parse_bpe_streamed(text) {
        Some(tokenizer) => Ok(tokenizer),
        None => text.parse::<Tokenizer>().map_err(|e| e.to_string()),
    }
}

/// The streamed load of a BPE file, or `None` where only `tokenizers` itself will do.
pub fn parse_bpe_streamed(text: &str) -> Option<Tokenizer> {
    let file: TokenizerFile = serde_json::from_str(text).ok()?;
    let model = file.model?;
    if model.kind != "BPE" {
        return None;
    }
    let merges = model.merges.into_iter().map(Into::into).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(model.vocab, merges)
        .byte_fallback(model.byte_fallback.unwrap_or(false))
        .fuse_unk(model.fuse_unk.unwrap_or(false))
        .ignore_merges(model.ignore_merges.unwrap_or(false));
    if let Some(dropout) = model.dropout {
        builder = builder.dropout(dropout);
    }
    if let Some(unk) = model.unk_token {
        builder = builder.unk_token(unk);
    }
    if let Some(prefix) = model.continuing_subword_prefix {
        builder = builder.continuing_subword_prefix(prefix);
    }
    if let Some(suffix) = model.end_of_word_suffix {
        builder = builder.end_of_word_suffix(suffix);
    }
    let bpe = builder.build().ok()?;

    let mut rest = file.rest;
    let added: Vec<AddedEntry> = match rest.remove("added_tokens") {
        Some(value) => serde_json::from_value(value).ok()?,
        None => Vec::new(),
    };
    // An empty model of the same type stands in while the small parts are read.
    rest.insert(
        "model".into(),
        serde_json::json!({ "type": "BPE", "vocab": {}, "merges": [] }),
    );
    rest.insert("added_tokens".into(), serde_json::json!([]));
    let mut tokenizer: Tokenizer = serde_json::from_value(rest.into()).ok()?;
    tokenizer.with_model(ModelWrapper::BPE(bpe));
    tokenizer
        .add_tokens(added.iter().map(AddedEntry::token))
        .ok()?;
    added
        .iter()
        .all(|a| tokenizer.token_to_id(&a.content) == Some(a.id))
        .then_some(tokenizer)
}

/// The file: its model streamed, the rest as values.
struct TokenizerFile {
    model: Option<BpeFile>,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for TokenizerFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FileVisitor;
        impl<'de> Visitor<'de> for FileVisitor {
            type Value = TokenizerFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tokenizer.json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenizerFile, A::Error> {
                let mut file = TokenizerFile {
                    model: None,
                    rest: serde_json::Map::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        file.model = Some(map.next_value()?);
                    } else {
                        file.rest.insert(key, map.next_value()?);
                    }
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(FileVisitor)
    }
}

/// A BPE model's fields, as `tokenizers` writes them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BpeFile {
    #[serde(rename = "type")]
    kind: String,
    vocab: Vocab,
    merges: Vec<Merge>,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    fuse_unk: Option<bool>,
    byte_fallback: Option<bool>,
    ignore_merges: Option<bool>,
}

/// One merge: `["a", "b"]`, or the older `"a b"`.
struct Merge(String, String);

impl From<Merge> for (String, String) {
    fn from(m: Merge) -> Self {
        (m.0, m.1)
    }
}

impl<'de> Deserialize<'de> for Merge {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MergeVisitor;
        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = Merge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a merge: ["a", "b"] or "a b""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Merge, E> {
                let (a, b) = text
                    .split_once(' ')
                    .filter(|(_, b)| !b.contains(' '))
                    .ok_or_else(|| E::custom(format!("merge {text:?} is not two parts")))?;
                Ok(Merge(a.to_string(), b.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Merge, A::Error> {
                let a = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Merge(a, b))
            }
        }
        deserializer.deserialize_any(MergeVisitor)
    }
}

/// An entry of `added_tokens`.
#[derive(Deserialize)]
struct AddedEntry {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    /// Missing: `tokenizers`' default, normalised unless special.
    normalized: Option<bool>,
    #[serde(default)]
    special: bool,
}

impl AddedEntry {
    fn token(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .single_word(self.single_word)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .normalized(self.normalized.unwrap_or(!self.special))
    }
}
